"""GRU, Dice loss 1 − (2·Σ y·p + 1) / (Σ y² + Σ p² + 1) on the positive class.

python -m jaxquant.main --config=configs/recipes/dice.py          # full scale
python -m jaxquant.main --config=configs/recipes/dice.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import gru


def get_config(arg=None):
  common.parse_arg(arg, __file__, common.QUICK)  # Names this file in the error.
  c = gru.get_config(arg)
  c.name = c.name.replace("gru", "gru-dice")  # gru-dice[-quick]
  c.loss.name = "dice"
  return c
