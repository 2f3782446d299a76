"""GRU, Dice loss 1 − (2·Σ y·p + 1) / (Σ y² + Σ p² + 1) on the positive class.

python -m jaxquant.main --config=configs/recipes/dice.py          # full scale
python -m jaxquant.main --config=configs/recipes/dice.py:quick    # minutes on a 2-core CPU
"""

from configs import recipes


def get_config(arg=None):
  c = recipes.gru_recipe(arg, __file__)
  c.loss.name = "dice"
  return c
