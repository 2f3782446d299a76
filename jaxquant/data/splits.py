"""Chronological, leakage-free train / validation / test splits.

A sample ending at bar t reads bars [t-T, t] (T bars of features, each change
feature also reading its predecessor) and its label reads bars [t+1, t+h]. Its
"footprint" is therefore [t-T, t+h]. Each split owns a contiguous segment of
bars and keeps only samples whose whole footprint lies inside that segment, so
no window or label of one split touches a bar of another; `embargo` bars are
dropped between segments on top of that. Example with T=3, h=2 and segment
[100, 200): the first window ends at t=103 (reads 100..103), the last at t=197
(its label reads 198, 199).

Several instruments are cut at the same two timestamps (`calendar_segments`),
not each at its own share of bars: otherwise, with instruments covering
different periods, one instrument's training windows would fall inside
another's test period.
"""

import numpy as np

SPLITS = ("train", "val", "test")


def _check_fractions(val_fraction, test_fraction):
  if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
          and val_fraction + test_fraction < 1):
    raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} "
                     "must be >= 0 and sum to less than 1")


def segments(num_bars, val_fraction, test_fraction, embargo=0):
  """Splits bar indices [0, num_bars) into three contiguous segments in time order.

  Args:
    num_bars: bars of one instrument.
    val_fraction, test_fraction: shares of the bars (the rest, first in time, trains).
    embargo: bars dropped after each cut (>= 0).

  Returns:
    {"train": (start, stop), "val": (start, stop), "test": (start, stop)}, stop exclusive.
  """
  _check_fractions(val_fraction, test_fraction)
  if embargo < 0:
    raise ValueError(f"embargo must be >= 0, got {embargo}")
  b1 = int(round(num_bars * (1.0 - val_fraction - test_fraction)))
  b2 = int(round(num_bars * (1.0 - test_fraction)))
  return {"train": (0, b1), "val": (min(b1 + embargo, b2), b2),
          "test": (min(b2 + embargo, num_bars), num_bars)}


def cut_times(timestamps, val_fraction, test_fraction):
  """The two calendar cuts shared by every instrument.

  Rule: pool the bar timestamps of all instruments and sort them (N bars in all);
  b1 = round(N * (1 - val - test)), b2 = round(N * (1 - test)) as in `segments`;
  the validation period starts at the timestamp of pooled bar b1 and the test
  period at that of pooled bar b2. A bar with ts < val_start trains, one with
  val_start <= ts < test_start validates, the rest tests. With one instrument
  this gives exactly the bar indices of `segments`. Example: instrument A with
  bars at minutes 0..5, B at minutes 4..9, val = test = 0.25: N = 12, b1 = 6,
  b2 = 9, pooled minutes 0 1 2 3 4 4 5 5 6 7 8 9 → val_start = 5, test_start = 7.

  Args:
    timestamps: one increasing int64 [n_i] array of bar timestamps per instrument.
    val_fraction, test_fraction: shares of the pooled bars, as in `segments`.

  Returns:
    (val_start, test_start) int64 ns; a cut past the last bar is the last
    timestamp + 1 (no bar falls after it).
  """
  _check_fractions(val_fraction, test_fraction)
  pooled = np.sort(np.concatenate([np.asarray(t, np.int64) for t in timestamps]
                                  + [np.zeros((0,), np.int64)]))
  n = len(pooled)
  b1 = int(round(n * (1.0 - val_fraction - test_fraction)))
  b2 = int(round(n * (1.0 - test_fraction)))
  past_end = int(pooled[-1]) + 1 if n else 0
  return tuple(int(pooled[b]) if b < n else past_end for b in (b1, b2))


def calendar_segments(timestamps, val_fraction, test_fraction, embargo=0):
  """Per-instrument segments cut at common timestamps (see `cut_times`).

  Each instrument's bars are cut where the calendar cuts fall in them, so no
  training bar of any instrument is as late as a validation or test bar of
  another; `embargo` bars of that instrument are then dropped after each cut
  (as in `segments`). An instrument without bars in a period gets an empty
  segment there. `window_ends` then keeps each footprint inside its segment.

  Args:
    timestamps: one increasing int64 [n_i] array of bar timestamps per instrument.
    val_fraction, test_fraction: shares of the pooled bars.
    embargo: bars dropped after each cut, per instrument (>= 0).

  Returns:
    (segs, cuts): segs is a list with one {"train", "val", "test"} → (start, stop)
    dict of bar indices per instrument (stop exclusive); cuts is
    {"val_start": ns, "test_start": ns}.
  """
  if embargo < 0:
    raise ValueError(f"embargo must be >= 0, got {embargo}")
  val_start, test_start = cut_times(timestamps, val_fraction, test_fraction)
  segs = []
  for ts in timestamps:
    n = len(ts)
    # searchsorted "left": the first bar at or after the cut opens the later period.
    b1, b2 = np.searchsorted(np.asarray(ts, np.int64), [val_start, test_start])
    b1, b2 = int(b1), int(b2)
    segs.append({"train": (0, b1), "val": (min(b1 + embargo, b2), b2),
                 "test": (min(b2 + embargo, n), n)})
  return segs, {"val_start": val_start, "test_start": test_start}


def window_ends(segment, window, horizon):
  """Bar indices t of the samples whose footprint [t-T, t+h] lies in `segment`."""
  start, stop = segment
  first, last = start + window, stop - 1 - horizon
  if last < first:
    return np.zeros((0,), np.int64)
  return np.arange(first, last + 1, dtype=np.int64)
