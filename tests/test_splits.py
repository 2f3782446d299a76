"""Chronological splits: no window or label of one split touches a bar of another."""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxquant import config_defaults
from jaxquant.data import dataset
from jaxquant.data import shards
from jaxquant.data import splits


def _footprints(ends, window, horizon):
  return [(t - window, t + horizon) for t in ends]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 3000), window=st.integers(1, 200), horizon=st.integers(1, 100),
       val=st.floats(0.01, 0.45), test=st.floats(0.01, 0.45), embargo=st.integers(0, 50))
def test_no_overlap_between_splits(n, window, horizon, val, test, embargo):
  segs = splits.segments(n, val, test, embargo)
  spans = {}
  for name in splits.SPLITS:
    ends = splits.window_ends(segs[name], window, horizon)
    fp = _footprints(ends, window, horizon)
    # Every bar a sample reads (features from t-window, label up to t+horizon) is in [0, n).
    assert all(0 <= a and b < n for a, b in fp)
    if len(fp):
      spans[name] = (min(a for a, _ in fp), max(b for _, b in fp))
  names = [s for s in splits.SPLITS if s in spans]
  for earlier, later in zip(names, names[1:]):
    # Chronological, and the footprints never meet; the embargo adds a gap on top.
    assert spans[earlier][1] < spans[later][0]
    assert spans[later][0] - spans[earlier][1] >= embargo + 1
    # Window ends are at least T + h apart across a boundary.
    last_end = spans[earlier][1] - horizon
    first_end = spans[later][0] + window
    assert first_end - last_end >= window + horizon


def test_window_ends_cover_the_segment_exactly():
  ends = splits.window_ends((100, 200), window=3, horizon=2)
  assert ends[0] == 103 and ends[-1] == 197
  assert np.all(np.diff(ends) == 1)
  assert len(splits.window_ends((0, 5), window=3, horizon=2)) == 0


# ----------------------------------------------------------------------------
# Several instruments: one calendar, cut at common timestamps
# ----------------------------------------------------------------------------

_MIN = 60_000_000_000  # One minute in ns.


def _timestamps(start, n, seed):
  """n increasing minute timestamps from minute `start`, with random gaps of 1-3 minutes."""
  gaps = np.random.default_rng(seed).integers(1, 4, n)
  return (start + np.cumsum(gaps) - gaps[0]).astype(np.int64) * _MIN if n else (
      np.zeros((0,), np.int64))


# Per instrument (first minute, bars, gap seed): periods that overlap, nest or are disjoint.
_INSTRUMENTS = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 600),
                                  st.integers(0, 2**16)), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), val=st.floats(0.0, 0.45), test=st.floats(0.0, 0.45),
       embargo=st.integers(0, 50))
def test_one_instrument_keeps_its_share_of_bars(n, val, test, embargo):
  segs, _ = splits.calendar_segments([_timestamps(7, n, n)], val, test, embargo)
  assert segs == [splits.segments(n, val, test, embargo)]


@settings(max_examples=300, deadline=None)
@given(insts=_INSTRUMENTS, window=st.integers(1, 60), horizon=st.integers(1, 30),
       val=st.floats(0.01, 0.45), test=st.floats(0.01, 0.45), embargo=st.integers(0, 40))
def test_calendar_splits_never_meet_across_instruments(insts, window, horizon, val, test,
                                                       embargo):
  stamps = [_timestamps(*inst) for inst in insts]
  segs, cuts = splits.calendar_segments(stamps, val, test, embargo)
  assert cuts["val_start"] <= cuts["test_start"]
  # Footprints [t - T, t + h] as (first, last) timestamps, per split over all instruments.
  spans = {s: [] for s in splits.SPLITS}
  for ts, seg in zip(stamps, segs):
    ends = {s: splits.window_ends(seg[s], window, horizon) for s in splits.SPLITS}
    for s, t in ends.items():
      assert ((t - window >= 0) & (t + horizon < len(ts))).all()
      spans[s] += list(zip(ts[t - window], ts[t + horizon]))
    # The embargo, in this instrument's bars, between its footprints of adjacent splits.
    for earlier, later in zip(splits.SPLITS, splits.SPLITS[1:]):
      if len(ends[earlier]) and len(ends[later]):
        gap = (ends[later].min() - window) - (ends[earlier].max() + horizon)
        assert gap > embargo
  # In timestamps: every training footprint ends before any validation or test
  # footprint starts (whichever instruments), and validation before test.
  for earlier, later in [("train", "val"), ("train", "test"), ("val", "test")]:
    if spans[earlier] and spans[later]:
      assert max(b for _, b in spans[earlier]) < min(a for a, _ in spans[later])
  for a, b in spans["train"]:
    assert b < cuts["val_start"]
  for a, b in spans["val"]:
    assert cuts["val_start"] <= a and b < cuts["test_start"]
  for a, b in spans["test"]:
    assert cuts["test_start"] <= a


def test_the_cuts_are_quantiles_of_the_pooled_bars():
  # A: minutes 0..5, B: minutes 4..9 → pooled 0 1 2 3 4 4 5 5 6 7 8 9; 12 bars,
  # val = test = 0.25 → cuts at pooled bars 6 and 9: minutes 5 and 7.
  a, b = np.arange(0, 6) * _MIN, np.arange(4, 10) * _MIN
  segs, cuts = splits.calendar_segments([a, b], 0.25, 0.25, embargo=1)
  assert cuts == {"val_start": 5 * _MIN, "test_start": 7 * _MIN}
  assert segs[0] == {"train": (0, 5), "val": (6, 6), "test": (6, 6)}  # A ends at minute 5.
  assert segs[1] == {"train": (0, 1), "val": (2, 3), "test": (4, 6)}
  # Disjoint periods: the early instrument trains, the late one is tested.
  segs, cuts = splits.calendar_segments([a, a + 100 * _MIN], 0.0, 0.5)
  assert segs[0]["test"] == (6, 6) and segs[1]["train"] == (0, 0)
  assert cuts["test_start"] == 100 * _MIN


def _data_config(window, horizon, val, test, embargo):
  c = config_defaults.get_config().data
  c.source, c.window, c.horizon, c.label_threshold = "shards", window, horizon, 0.0
  c.val_fraction, c.test_fraction, c.embargo = val, test, embargo
  return c


def _write_market(directory, stamps, seed=0):
  rng = np.random.default_rng(seed)
  for i, ts in enumerate(stamps):
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, len(ts))))
    bars = np.stack([close, close * 1.001, close * 0.999, close, np.ones_like(close),
                     np.ones_like(close)], axis=1)
    shards.write_shard(os.path.join(directory, f"I{i}.parquet"), f"I{i}", ts, bars)


@settings(max_examples=30, deadline=None)
@given(insts=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 400),
                                st.integers(0, 2**16)), min_size=1, max_size=4),
       window=st.integers(1, 20), horizon=st.integers(1, 10),
       val=st.floats(0.05, 0.4), test=st.floats(0.05, 0.4), embargo=st.integers(0, 10))
def test_dataset_splits_follow_one_calendar(insts, window, horizon, val, test, embargo):
  stamps = [_timestamps(*inst) for inst in insts]
  cfg = _data_config(window, horizon, val, test, embargo)
  segs, _ = splits.calendar_segments(stamps, val, test, embargo)
  windows = {s: sum(len(splits.window_ends(g[s], window, horizon)) for g in segs)
             for s in splits.SPLITS}
  with tempfile.TemporaryDirectory() as d:
    _write_market(d, stamps)
    if min(windows.values()) == 0:
      # Only a split empty in every instrument is an error, and it says which.
      empty = [s for s in splits.SPLITS if windows[s] == 0][0]
      with pytest.raises(ValueError, match=f"no {empty} windows"):
        dataset.build_dataset(cfg, d, check_labels=False)
      return
    ds = dataset.build_dataset(cfg, d, check_labels=False)
  summary = ds.summary()
  sp = summary["splits"]
  assert {s: sp[s]["windows"] for s in splits.SPLITS} == windows
  assert sp["train"]["end"] < sp["val"]["start"] <= sp["val"]["end"] < sp["test"]["start"]
  cuts = summary["cuts"]
  assert sp["train"]["end"] < cuts["val_start"] <= sp["val"]["start"]
  assert sp["val"]["end"] < cuts["test_start"] <= sp["test"]["start"]
  # In bars: the last training label ends before the first val / test window starts.
  t_train = ds.splits["train"].timestamps.max() + horizon * _MIN
  for s in ("val", "test"):
    assert t_train < ds.splits[s].timestamps.min() - window * _MIN


def test_disjoint_instruments_do_not_train_in_each_others_test_period(tmp_path):
  # The case: A covers an early period, B a later one. Cut by each one's own
  # share of bars, A's training windows fell inside B's test period.
  a = np.arange(0, 1000, dtype=np.int64) * _MIN
  b = np.arange(600, 1600, dtype=np.int64) * _MIN
  _write_market(tmp_path, [a, b])
  ds = dataset.build_dataset(_data_config(10, 5, 0.2, 0.2, 0), str(tmp_path), check_labels=False)
  train, test = ds.splits["train"], ds.splits["test"]
  assert train.timestamps.max() < test.timestamps.min()
  # 2,000 pooled bars: minutes 0..599 once, 600..999 twice, 1000..1599 once; bars
  # 1,200 and 1,600 of them are minutes 900 and 1200.
  cuts = ds.summary()["cuts"]
  assert cuts == {"val_start": "1970-01-01T15:00:00", "test_start": "1970-01-01T20:00:00"}
  # A has no bars in the test period, so all test windows are B's.
  assert set(test.instrument.tolist()) == {1}
  # A window longer than any instrument's share of the validation period (A: minutes
  # 900..999, B: 900..1199) is one clear error naming the period.
  with pytest.raises(ValueError, match=r"no val windows: .*1970-01-01T15:00:00 to "
                     r"1970-01-01T20:00:00.* more than 300 there"):
    dataset.build_dataset(_data_config(400, 5, 0.2, 0.2, 0), str(tmp_path))
