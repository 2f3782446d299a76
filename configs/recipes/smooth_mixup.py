"""GRU, inverse-frequency weighted CE with label smoothing 0.2 and mixup (alpha 0.2, half the batches).

python -m jaxquant.main --config=configs/recipes/smooth_mixup.py          # full scale
python -m jaxquant.main --config=configs/recipes/smooth_mixup.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import gru


def get_config(arg=None):
  common.parse_arg(arg, __file__, common.QUICK)  # Names this file in the error.
  c = gru.get_config(arg)
  c.name = c.name.replace("gru", "gru-smooth_mixup")  # gru-smooth_mixup[-quick]
  c.loss.name = "ce"
  c.loss.alpha = "inverse_frequency"
  c.loss.label_smoothing = 0.2
  c.train.mixup_alpha = 0.2
  c.train.mixup_prob = 0.5
  return c
