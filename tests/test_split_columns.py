"""The split columns at their narrow dtypes hold the values computed another way; the
load path holds one series at a time (issue 19 item 7: the 20M-bar memory goal)."""

import os
import weakref

import numpy as np
import pytest

from conftest import shard_data_config
from jaxquant.data import dataset
from jaxquant.data import feature_pass
from jaxquant.data import loader
from jaxquant.data import shards
from jaxquant.data import split_columns

_MIN = 60_000_000_000


def _bars(n, seed):
  rng = np.random.default_rng(seed)
  close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, n)))
  open_ = np.concatenate([[100.0], close[:-1]])
  high = np.maximum(open_, close) * 1.001
  low = np.minimum(open_, close) * 0.999
  return np.stack([open_, high, low, close, rng.integers(1, 1000, n).astype(np.float64),
                   np.full(n, 50.0)], axis=1)


def _market(directory, n=400, names=("A", "B", "C")):
  for k, name in enumerate(names):
    ts = (np.arange(n, dtype=np.int64) + 7 * k) * _MIN
    shards.write_shard(os.path.join(directory, f"{name}.parquet"), name, ts, _bars(n, k))
  return str(directory)




@pytest.mark.parametrize("kind", ["binary", "three_class", "triple_barrier"])
def test_columns_are_narrow_and_hold_the_values_of_the_bars(tmp_path, kind):
  d = _market(tmp_path)
  cfg = shard_data_config(label_kind=kind, take_profit=0.004, stop_loss=0.004)
  ds = dataset.build_dataset(cfg, d)
  loaded = {name: (ts, bars) for name, ts, bars in shards.load_dir(d)}
  starts = np.cumsum([0] + [len(loaded[n][0]) for n in ds.instruments])
  for s in ds.splits.values():
    assert (s.labels.dtype, s.instrument.dtype, s.exit_offsets.dtype, s.ends.dtype) == (
        np.int8, np.int8, np.int8, np.int32)
    for i, name in enumerate(ds.instruments):
      ts, bars = loaded[name]
      t = s.ends[s.instrument == i].astype(np.int64) - starts[i]  # Bar index in the series.
      np.testing.assert_array_equal(s.timestamps[s.instrument == i], ts[t])
      close = bars[:, 3]
      fwd = close[t + 4] / close[t] - 1.0  # The 4-bar forward return, computed here.
      if kind == "binary":
        np.testing.assert_array_equal(s.fwd_returns[s.instrument == i], fwd)
        np.testing.assert_array_equal(s.labels[s.instrument == i], (fwd > 0.001).astype(int))
        np.testing.assert_array_equal(s.exit_offsets[s.instrument == i], 4)
      elif kind == "three_class":
        want = np.where(fwd > 0.001, 2, np.where(fwd < -0.001, 0, 1))
        np.testing.assert_array_equal(s.labels[s.instrument == i], want)
      else:  # The exit return lies at a barrier or is the time-limit return.
        r, off = s.fwd_returns[s.instrument == i], s.exit_offsets[s.instrument == i]
        assert ((off >= 1) & (off <= 4)).all()
        timed = np.isclose(r, fwd, rtol=0, atol=1e-15)
        np.testing.assert_allclose(np.abs(r[~timed]), 0.004, rtol=1e-9)


def test_batches_carry_int32_labels_equal_to_the_split(tmp_path):
  ds = dataset.build_dataset(shard_data_config(), _market(tmp_path))
  train = ds.splits["train"]
  plan = np.arange(2 * 16).reshape(2, 16)
  for batch, idx in zip(loader.train_batches(ds, plan), plan):
    assert batch["y"].dtype == np.int32
    np.testing.assert_array_equal(batch["y"], train.labels[idx])
  for batch in loader.eval_batches(ds, "val", 16):
    assert batch["y"].dtype == np.int32


def test_column_dtypes_by_range():
  d = split_columns.column_dtypes(10, 127, 127)
  assert (d["instrument"], d["exit_offsets"], d["ends"]) == (np.int8, np.int8, np.int32)
  d = split_columns.column_dtypes(2**31, 128, 128)
  assert (d["instrument"], d["exit_offsets"], d["ends"]) == (np.int16, np.int16, np.int64)
  assert split_columns.column_dtypes(10, 2, 40_000)["exit_offsets"] == np.int32
  # Every value the range allows survives the cast.
  for k, top in (("instrument", 32_766), ("exit_offsets", 40_000)):
    dt = split_columns.column_dtypes(10, 32_767, 40_000)[k]
    np.testing.assert_array_equal(np.arange(-1, top + 1).astype(dt), np.arange(-1, top + 1))
  with pytest.raises(ValueError, match="32,768 instruments: at most 32,767"):
    split_columns.column_dtypes(10, 32_768, 15)


def test_the_load_path_holds_one_series_at_a_time(tmp_path, monkeypatch):
  """Each series' bars are gone (every layer dropped them) before the next are read:
  in shards.load_dir, feature_pass.reread and each pass of build_dataset."""
  d = _market(tmp_path, names=("A", "B", "C", "D"))
  read, read_all = [], shards.ShardReader.read_all

  def checked_read_all(self):
    alive = [name for name, ref in read if ref() is not None]
    assert not alive, f"{alive} still in memory while {self.instrument} is read"
    ts, bars = read_all(self)
    read.append((self.instrument, weakref.ref(bars)))
    return ts, bars

  def consume(series):
    read.clear()
    for name, ts, bars in series:
      del ts, bars
    return [name for name, _ in read]

  names, lengths = map(list, zip(*[(n, len(t)) for n, t, _ in shards.load_dir(d)]))
  monkeypatch.setattr(shards.ShardReader, "read_all", checked_read_all)
  assert consume(shards.load_dir(d)) == names == ["A", "B", "C", "D"]
  assert consume(feature_pass.reread(shard_data_config(), d, names, lengths)) == names
  read.clear()
  ds = dataset.build_dataset(shard_data_config(), d)
  assert [name for name, _ in read] == names * 3  # Three passes.
  read.clear()
  dataset.build_inference_set(shard_data_config(), d, ds.normalizer)
  assert [name for name, _ in read] == names * 2
