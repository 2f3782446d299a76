"""The series of a shard directory, and their features one series at a time.

build_dataset needs every series' features twice (the training rows' moments,
then the normalised rows), but never two series' at once. Holding a float64
copy of all of them would cost twice the float32 matrix it produces, so each
pass reads the shards again instead (shards.load_dir is lazy, contracts are
joined by rolls.join_products exactly as in the first read) and computes one
series' features at a time, a column at a time where it can.
benchmarks/loader.py measures the peak memory.
"""

import numpy as np
import pyarrow as pa

from jaxquant import host_memory
from jaxquant.data import features as features_lib
from jaxquant.data import rolls as rolls_lib
from jaxquant.data import shards


def series_bars(data_config, data_dir, roll_facts):
  """(name, timestamps, bars) of each series, one at a time, sorted as load_dir sorts.

  Args:
    data_config: config.data (its roll settings).
    data_dir: shard directory.
    roll_facts: dict that receives each joined product's facts (rolls.join_products).
  """
  roll = data_config.get("roll") or {}
  products = rolls_lib.read_products(data_dir)
  if not products:  # Nothing to join: straight from the shards, so no layer keeps a series.
    return shards.load_dir(data_dir)
  return rolls_lib.join_products(
      shards.load_dir(data_dir), products,
      roll.get("by", "open_interest"), roll.get("adjust", "ratio"), roll_facts)


def instrument_features(data_config, name, ts, bars):
  """config.data.features of one series' bars (features.compute_features), float64.

  Raises:
    ValueError: a feature's bad value, naming the instrument.
  """
  try:
    return features_lib.compute_features(bars, ts, data_config.get("features", "default"))
  except ValueError as e:
    raise ValueError(f"instrument {name}: {e}") from None


def return_freed_memory():
  """Hands freed memory back to the OS: Arrow's pool's, and the free pages inside
  glibc's heap (malloc_trim; elsewhere nothing). A dropped series leaves holes in the
  heap that free() keeps resident and the next series does not fill."""
  pa.default_memory_pool().release_unused()
  host_memory.trim_heap()


def reread(data_config, data_dir, names, lengths):
  """series_bars again, one series at a time, checked against the first read.

  Args:
    names, lengths: each series' name and bar count, as the first read gave them.

  Raises:
    ValueError: the directory changed between the reads.
  """
  seen, series = 0, series_bars(data_config, data_dir, {})
  while True:
    # The consumer and every layer below hold nothing of the last series now
    # (shards.load_dir keeps no reference): its memory goes before the next is read.
    return_freed_memory()
    name, ts, bars = next(series, (None, None, None))
    if name is None or seen >= len(names) or (name, len(ts)) != (names[seen], lengths[seen]):
      break
    seen += 1
    yield name, ts, bars
    ts = bars = None
  if seen != len(names):
    raise ValueError(f"{data_dir} changed while it was being read (series "
                     f"{names[min(seen, len(names) - 1)]!r}): run again")


def _columns(data_config, name, ts, bars):
  """The feature columns of one series, each computed once the previous one is dropped
  (features.feature_columns' own generator would hold it while computing the next)."""
  for item in features_lib.resolve_features(data_config.get("features", "default")):
    try:
      (col,) = features_lib.feature_columns(bars, ts, [item])
    except ValueError as e:
      raise ValueError(f"instrument {name}: {e}") from None
    yield col
    col = None


def series_moments(data_config, name, ts, bars, train):
  """features.train_moments of one series' training rows, a column at a time.

  Args:
    data_config: config.data (its features).
    name, ts, bars: the series (series_bars).
    train: [(start, stop), ...] runs of its training rows (one for the usual split;
      several for a cross-validation fold).

  Returns:
    (rows, mean [F], sum of squared deviations [F]) for features.pooled_normalizer.
  """
  n, mean, m2 = sum(b - a for a, b in train), [], []
  for col in _columns(data_config, name, ts, bars):
    x = np.concatenate([col[a:b] for a, b in train] + [col[:0]])
    mean.append(x.mean() if n else 0.0)
    m2.append(np.square(x - mean[-1]).sum() if n else 0.0)
    col = x = None
  return n, np.array(mean), np.array(m2)


def empty_matrix(data_config, rows, normalizer, facts):
  """An empty matrix for SeriesFeatures.normalized, allocated before the passes.

  Args:
    data_config: config.data (its features).
    rows: the total bar count.
    normalizer: the saved normaliser, or None (fitted on this data).
    facts: the data's facts ("normalization" decides when normalizer is None).

  Returns:
    [rows, F] float32 (untouched pages: no memory yet), or None for per-instrument
    normalisation, which makes its own.
  """
  kind = facts["normalization"] if normalizer is None else normalizer.get("kind", "pooled")
  if kind == "per_instrument":
    return None
  width = len(features_lib.feature_names(data_config.get("features", "default")))
  return np.empty((rows, width), np.float32)


class SeriesFeatures:
  """The features of the series `names` of data_dir, computed anew at each iteration,
  one series at a time (a list of [n_i, F] arrays to the code that iterates it)."""

  def __init__(self, data_config, data_dir, names, lengths):
    self.data_config, self.data_dir = data_config, data_dir
    self.names, self.lengths = list(names), list(lengths)

  def __len__(self):
    return len(self.names)

  def __iter__(self):
    for name, ts, bars in reread(self.data_config, self.data_dir, self.names, self.lengths):
      feats = instrument_features(self.data_config, name, ts, bars)
      ts = bars = None
      yield feats
      feats = None

  def normalized(self, normalizer, rows, out=None):
    """features.normalize of all series' features, a column of a series at a time
    (the same float32 values; no float64 matrix of even one series).

    Args:
      normalizer: a pooled normaliser (features.fit_normalizer's form).
      rows: the total bar count.
      out: empty_matrix's array to fill, or None.

    Returns:
      [rows, F] float32.
    """
    mean = np.asarray(normalizer["mean"], np.float64)
    std = np.asarray(normalizer["std"], np.float64)
    width = len(features_lib.feature_names(self.data_config.get("features", "default")))
    if width != len(mean):
      raise ValueError(f"normaliser has {len(mean)} features, data has {width}")
    if out is None or out.shape != (rows, width):
      out = np.empty((rows, width), np.float32)
    row = 0
    for name, ts, bars in reread(self.data_config, self.data_dir, self.names, self.lengths):
      j = -1  # (No enumerate: its cached tuple would keep the previous column alive.)
      for col in _columns(self.data_config, name, ts, bars):
        j += 1
        x = col - mean[j]
        col = None
        x /= std[j]
        out[row:row + len(x), j] = x  # The cast astype(float32) makes.
        x = None
      row += len(ts)
      ts = bars = None  # Before the next series is read.
    return out
