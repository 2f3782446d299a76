"""Chronological, leakage-free train / validation / test splits.

A sample ending at bar t reads bars [t-T, t] (T bars of features, each change
feature also reading its predecessor) and its label reads bars [t+1, t+h]. Its
"footprint" is therefore [t-T, t+h]. Each split owns a contiguous segment of
bars and keeps only samples whose whole footprint lies inside that segment, so
no window or label of one split touches a bar of another; `embargo` bars are
dropped between segments on top of that. Example with T=3, h=2 and segment
[100, 200): the first window ends at t=103 (reads 100..103), the last at t=197
(its label reads 198, 199).
"""

import numpy as np

SPLITS = ("train", "val", "test")


def segments(num_bars, val_fraction, test_fraction, embargo=0):
  """Splits bar indices [0, num_bars) into three contiguous segments in time order.

  Returns:
    {"train": (start, stop), "val": (start, stop), "test": (start, stop)}, stop exclusive.
  """
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
          and val_fraction + test_fraction < 1):
    raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} "
                     "must be >= 0 and sum to less than 1")
  if embargo < 0:
    raise ValueError(f"embargo must be >= 0, got {embargo}")
  b1 = int(round(num_bars * (1.0 - val_fraction - test_fraction)))
  b2 = int(round(num_bars * (1.0 - test_fraction)))
  return {"train": (0, b1), "val": (min(b1 + embargo, b2), b2),
          "test": (min(b2 + embargo, num_bars), num_bars)}


def window_ends(segment, window, horizon):
  """Bar indices t of the samples whose footprint [t-T, t+h] lies in `segment`."""
  start, stop = segment
  first, last = start + window, stop - 1 - horizon
  if last < first:
    return np.zeros((0,), np.int64)
  return np.arange(first, last + 1, dtype=np.int64)
