"""GRU, soft-F1 loss (1 − F1 computed from probabilities over the batch).

python -m jaxquant.main --config=configs/recipes/soft_f1.py          # full scale
python -m jaxquant.main --config=configs/recipes/soft_f1.py:quick    # minutes on a 2-core CPU
"""

from configs import gru


def get_config(arg=None):
  c = gru.get_config(arg)
  c.name = "gru-soft_f1" + ("-quick" if arg == "quick" else "")
  c.loss.name = "soft_f1"
  return c
