"""LSTM on the original system's settings (2×128, T=500, batch 32, AdamW 2e-4, focal loss).

python -m jaxquant.main --config=configs/lstm.py          # full scale
python -m jaxquant.main --config=configs/lstm.py:quick    # minutes on a 2-core CPU
"""

from configs import gru


def get_config(arg=None):
  c = gru.get_config(arg)
  c.name = c.name.replace("gru", "lstm")
  c.model.name = "lstm"
  # "fused": jaxquant/models/lstm.py (hand-written backward); "scan": flax's
  # OptimizedLSTMCell + autodiff; "auto": fused for batches <= 32 (faster there
  # on a CPU, slower at larger batches; see docs/performance.md).
  c.model.lstm_impl = "auto"
  return c
