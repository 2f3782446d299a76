"""GRU on the original system's settings (2×128, T=500, batch 32, AdamW 2e-4, focal loss).

python -m jaxquant.main --config=configs/gru.py          # full scale
python -m jaxquant.main --config=configs/gru.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import default


def get_config(arg=None):
  variants = common.parse_arg(arg, __file__, common.QUICK)
  c = default.get_config()
  c.name = "gru"
  c.model.name = "gru"
  if common.QUICK in variants:
    common.apply_quick(c)
    c.model.hidden = 64
    c.model.num_layers = 1
  return c
