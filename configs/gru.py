"""GRU on the original system's settings (2×128, T=500, batch 32, AdamW 2e-4, focal loss).

python -m jaxquant.main --config=configs/gru.py          # full scale
python -m jaxquant.main --config=configs/gru.py:quick    # minutes on a 2-core CPU
"""

from configs import default


def get_config(arg=None):
  c = default.get_config()
  c.name = "gru"
  c.model.name = "gru"
  if arg == "quick":
    c.name = "gru-quick"
    c.data.window = 64
    c.model.hidden = 64
    c.model.num_layers = 1
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.lr = 2e-3
    c.train.patience = 4
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/gru.py (known: quick)")
  return c
