"""GRU, Dice loss 1 − (2·Σ y·p + 1) / (Σ y² + Σ p² + 1) on the positive class.

python -m jaxquant.main --config=configs/recipes/dice.py          # full scale
python -m jaxquant.main --config=configs/recipes/dice.py:quick    # minutes on a 2-core CPU
"""

from configs import gru


def get_config(arg=None):
  c = gru.get_config(arg)
  c.name = "gru-dice" + ("-quick" if arg == "quick" else "")
  c.loss.name = "dice"
  return c
