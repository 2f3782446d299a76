"""The per-window columns of a split (dataset.Split), filled one series at a time.

At 20M windows these columns weigh as much as the feature matrix, so each integer
column is as narrow as its values provably allow (column_dtypes): the values are
those of the series' arrays, only the dtype differs. Batches and reports cast
labels to int32 where a fixed dtype matters (data/loader.py, evaluate.py).
benchmarks/loader.py measures the memory.
"""

import numpy as np

COLUMNS = ("ends", "labels", "fwd_returns", "instrument", "timestamps", "exit_offsets")


def column_dtypes(rows, instruments, horizon):
  """The dtype of each Split column: the narrowest that provably holds its values.

  Args:
    rows: bars in Dataset.features (ends < rows).
    instruments: how many series (instrument < instruments).
    horizon: config.data.horizon (exit offsets lie in -1 .. horizon).

  Returns:
    {column: dtype}: labels int8 (classes -1 .. 2), instrument int8 / int16 by the
    count, ends int32 below 2**31 bars, exit_offsets int8 / int16 / int32 by horizon;
    returns float64, timestamps int64 ns.

  Raises:
    ValueError: more instruments than int16 holds.
  """
  if instruments > np.iinfo(np.int16).max:
    raise ValueError(f"{instruments:,} instruments: at most {np.iinfo(np.int16).max:,} "
                     "can be trained on together; split the data directory")
  off = next(d for d in (np.int8, np.int16, np.int32) if horizon <= np.iinfo(d).max)
  inst = np.int8 if instruments <= np.iinfo(np.int8).max else np.int16
  return {"ends": np.int32 if rows < 2**31 else np.int64, "labels": np.int8,
          "fwd_returns": np.float64, "instrument": inst, "timestamps": np.int64,
          "exit_offsets": off}


def empty_columns(size, dtypes):
  """{column: [size] array of column_dtypes' dtype}, unfilled (no memory until written)."""
  return {k: np.empty(size, dtypes[k]) for k in COLUMNS}


def fill_series(cols, row, offset, t, labels, ret, off, ts, inst_id):
  """Writes the windows ending at bars `t` of one series into cols[row:].

  Args:
    cols: empty_columns' arrays.
    row: the first free row of cols.
    offset: the series' first row in Dataset.features.
    t: [k] window ends, bar indices of the series.
    labels, ret, off, ts: the series' per-bar labels, trade returns, exit offsets and
      timestamps.
    inst_id: the series' index in Dataset.instruments.

  Returns:
    The next free row.
  """
  at = slice(row, row + len(t))
  cols["ends"][at] = t  # Each integer column cast in place: its values fit (column_dtypes).
  cols["ends"][at] += offset
  cols["labels"][at] = labels[t]
  # mode="clip" (t is in range): mode="raise" would gather into a temporary first.
  np.take(ret, t, out=cols["fwd_returns"][at], mode="clip")
  cols["instrument"][at] = inst_id
  np.take(ts, t, out=cols["timestamps"][at], mode="clip")
  cols["exit_offsets"][at] = off[t]
  return at.stop
