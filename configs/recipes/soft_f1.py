"""GRU, soft-F1 loss (1 − F1 computed from probabilities over the batch).

python -m jaxquant.main --config=configs/recipes/soft_f1.py          # full scale
python -m jaxquant.main --config=configs/recipes/soft_f1.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import gru


def get_config(arg=None):
  common.parse_arg(arg, __file__, common.QUICK)  # Names this file in the error.
  c = gru.get_config(arg)
  c.name = c.name.replace("gru", "gru-soft_f1")  # gru-soft_f1[-quick]
  c.loss.name = "soft_f1"
  return c
