"""GRU on real EUR/USD hourly bars (2017), as an example of data you ingest yourself.

python -m jaxquant.data.ingest --out=data/eurusd ../shared/data/real/eurusd_1h_2017.csv
python -m jaxquant.main --config=configs/eurusd.py

Hourly bars: a 12-hour horizon and a 0.4 % threshold (the run's report.md gives the
share of positives in each split); a window of 48 hours. No open interest in this file
(its feature is 0).
"""

from configs import common
from configs import gru


def get_config(arg=None):
  common.parse_arg(arg, __file__)  # No variants.
  c = gru.get_config(common.QUICK)
  c.name = "eurusd"
  c.data.source = "shards"
  c.data.dir = "data/eurusd"
  c.data.window = 48
  c.data.horizon = 12
  c.data.label_threshold = 0.004
  c.train.batch_size = 64
  c.train.epochs = 15
  c.train.patience = 6
  return c
