"""LSTM on the original system's settings (2×128, T=500, batch 32, AdamW 2e-4, focal loss).

python -m jaxquant.main --config=configs/lstm.py          # full scale
python -m jaxquant.main --config=configs/lstm.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import gru


def get_config(arg=None):
  common.parse_arg(arg, __file__, common.QUICK)  # Names this file in the error.
  c = gru.get_config(arg)  # The same sizes, quick or not.
  c.name = c.name.replace("gru", "lstm")  # lstm[-quick]
  c.model.name = "lstm"
  # "fused": jaxquant/models/lstm.py (hand-written backward); "scan": flax's
  # OptimizedLSTMCell + autodiff; "auto": fused for batches <= 32 (faster there
  # on a CPU, slower at larger batches; see docs/performance.md).
  c.model.lstm_impl = "auto"
  return c
