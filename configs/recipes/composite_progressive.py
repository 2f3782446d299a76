"""GRU, composite a·softF1 + (1 − a)·weighted CE, a = 0.3 → 0.5 → 0.7 at 30 % / 80 % of training.

python -m jaxquant.main --config=configs/recipes/composite_progressive.py          # full scale
python -m jaxquant.main --config=configs/recipes/composite_progressive.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import gru


def get_config(arg=None):
  common.parse_arg(arg, __file__, common.QUICK)  # Names this file in the error.
  c = gru.get_config(arg)
  c.name = c.name.replace("gru", "gru-composite_progressive")  # gru-composite_progressive[-quick]
  c.loss.name = "composite"
  c.loss.alpha = "inverse_frequency"  # Weights of the CE part.
  c.loss.composite_schedule = "progressive"
  return c
