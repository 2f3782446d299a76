"""GRU, soft-F1 loss (1 − F1 computed from probabilities over the batch).

python -m jaxquant.main --config=configs/recipes/soft_f1.py          # full scale
python -m jaxquant.main --config=configs/recipes/soft_f1.py:quick    # minutes on a 2-core CPU
"""

from configs import recipes


def get_config(arg=None):
  c = recipes.gru_recipe(arg, __file__)
  c.loss.name = "soft_f1"
  return c
