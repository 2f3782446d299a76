"""Cross-validation folds (data/folds.py): the leakage proof of walk-forward and
combinatorial purged cross-validation, against a reference written here sample by sample
and against skfolio's CombinatorialPurgedCV and WalkForward on the same event times."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from skfolio import model_selection as skms

from conftest import shard_data_config
from jaxquant.data import dataset
from jaxquant.data import features as features_lib
from jaxquant.data import folds
from jaxquant.data import shards

_MIN = 60_000_000_000  # One minute in ns.


# ----------------------------------------------------------------------------
# The reference: each rule of the module docstring, one sample at a time
# ----------------------------------------------------------------------------
# A sample is (instrument i, window end t); its footprint is [ts_i[t - T], ts_i[t + h]]
# (timestamps, inclusive) and its time ts_i[t]. Rules checked (folds.py's docstring):
#   group    g with edges[g] <= ts_i[t] < edges[g + 1];
#   test     every candidate of a test group;
#   purge    a non-test candidate of a training group is dropped if its footprint overlaps
#            any test footprint of any instrument (footprints of one test group pooled over
#            instruments form a hull; a footprint clear of every test footprint is also
#            clear of the hulls, since the hull's gaps lie after some test window end);
#   embargo  ... or if it starts within `embargo` bars of its own instrument after the end
#            z1 of a test group's hull: with L the last bar of instrument i at or before z1,
#            dropped when L < t - T <= L + embargo;
#   validate of what is left (the pool), pooled window-end times sorted, b = round(n (1 -
#            val_fraction)): the samples at or after the b-th time validate (none if b = n);
#            the rest train unless their footprint overlaps a validation footprint or they
#            are embargoed after a validation group's hull in the same way.


def _group_of(edges, x):
  for g in range(len(edges) - 1):
    if edges[g] <= x < edges[g + 1]:
      return g
  raise AssertionError(f"{x} is in no group of {edges}")


class _Samples:
  """Every whole window of every instrument, with its group, time and footprint."""

  def __init__(self, stamps, edges, window, horizon):
    self.stamps, self.window = stamps, window
    self.keys = [(i, t) for i, ts in enumerate(stamps) for t in range(window, len(ts) - horizon)]
    self.time = {k: int(stamps[k[0]][k[1]]) for k in self.keys}
    self.foot = {k: (int(stamps[k[0]][k[1] - window]), int(stamps[k[0]][k[1] + horizon]))
                 for k in self.keys}
    self.group = {k: _group_of(edges, self.time[k]) for k in self.keys}
    self.last = {}  # (instrument, z1) → its last bar at or before z1.

  def overlapping(self, keys, others):
    """Which of `keys` has a footprint meeting any footprint of `others` (all pairs)."""
    if not keys or not others:
      return np.zeros(len(keys), bool)
    a = np.array([self.foot[k] for k in keys])
    b = np.array([self.foot[k] for k in others])
    return ((a[:, None, 0] <= b[None, :, 1]) & (b[None, :, 0] <= a[:, None, 1])).any(axis=1)

  def hull_ends(self, keys):
    """Per group of `keys`: the latest end of their footprints."""
    ends = {}
    for k in keys:
      ends[self.group[k]] = max(ends.get(self.group[k], self.foot[k][1]), self.foot[k][1])
    return list(ends.values())

  def embargoed(self, key, hull_ends, embargo):
    i, t = key
    for z1 in hull_ends:
      if (i, z1) not in self.last:  # -1: no bar at or before z1.
        self.last[i, z1] = int(np.count_nonzero(self.stamps[i] <= z1)) - 1
      last = self.last[i, z1]
      if last < t - self.window <= last + embargo:
        return True
    return False


def _reference(samples, fold, val_fraction, embargo):
  """{"train", "val", "test"} → set of (instrument, t), by the rules above."""
  test = [k for k in samples.keys if samples.group[k] in fold["test"]]
  rest = [k for k in samples.keys if samples.group[k] in fold["train"]]
  ends = samples.hull_ends(test)
  pool = [k for k, hit in zip(rest, samples.overlapping(rest, test))
          if not hit and not samples.embargoed(k, ends, embargo)]
  times = sorted(samples.time[k] for k in pool)
  b = int(round(len(times) * (1.0 - val_fraction)))
  val = [k for k in pool if b < len(times) and samples.time[k] >= times[b]]
  early = [k for k in pool if not (b < len(times) and samples.time[k] >= times[b])]
  ends = samples.hull_ends(val)
  train = [k for k, hit in zip(early, samples.overlapping(early, val))
           if not hit and not samples.embargoed(k, ends, embargo)]
  return {"train": set(train), "val": set(val), "test": set(test)}


def _as_keys(per_instrument, split):
  return {(i, int(t)) for i, s in enumerate(per_instrument) for t in s[split]}


# ----------------------------------------------------------------------------
# Random markets and fold settings
# ----------------------------------------------------------------------------


@st.composite
def _markets(draw):
  """1-3 instruments, each with its own start, length and bar spacing (minutes), and an
  occasional long gap: periods that overlap, nest or are disjoint."""
  stamps = []
  for _ in range(draw(st.integers(1, 3))):
    start, n = draw(st.integers(0, 1500)), draw(st.integers(0, 260))
    spacing, seed = draw(st.integers(1, 4)), draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    steps = np.full(n, spacing) + np.where(rng.random(n) < 0.02, rng.integers(10, 300, n), 0)
    stamps.append((start + np.cumsum(steps) - (steps[0] if n else 0)).astype(np.int64) * _MIN)
  return stamps


@st.composite
def _settings(draw):
  scheme = draw(st.sampled_from(folds.SCHEMES))
  n = draw(st.integers(3, 7)) if scheme == "cpcv" else draw(st.integers(1, 6))
  return {"scheme": scheme, "folds": n,
          "test_groups": draw(st.integers(1, n - 1)) if scheme == "cpcv" else 2,
          "train_groups": draw(st.integers(1, 4))}


@settings(max_examples=300, deadline=None)
@given(stamps=_markets(), cv=_settings(), window=st.integers(1, 20),
       horizon=st.integers(1, 10), embargo=st.integers(0, 15),
       val_fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5]))
def test_no_fold_trains_or_validates_on_what_it_tests(stamps, cv, window, horizon, embargo,
                                                      val_fraction):
  plan = folds.plan(**cv)
  groups = plan[0]["groups"]
  pooled = np.sort(np.concatenate(stamps))
  if len(pooled) < groups:
    with pytest.raises(ValueError, match=f"cannot be cut into {groups} groups"):
      folds.group_edges(stamps, groups)
    return
  edges = folds.group_edges(stamps, groups)
  # The edges are the pooled bars' j/G quantiles: fewer than round(n j / G) bars lie
  # before edges[j] and more at or before it (ties share a timestamp).
  assert edges[0] == pooled[0] and edges[-1] == pooled[-1] + 1
  assert (np.diff(edges) >= 0).all()
  for j in range(1, groups):
    b = round(len(pooled) * j / groups)
    assert np.count_nonzero(pooled < edges[j]) <= b < np.count_nonzero(pooled <= edges[j])
  samples = _Samples(stamps, edges, window, horizon)
  candidates = [np.arange(window, len(ts) - horizon, dtype=np.int64) for ts in stamps]
  tested = dict.fromkeys(samples.keys, 0)
  for fold in plan:
    per, periods = folds.fold_ends(stamps, candidates, fold, edges, window, horizon,
                                   val_fraction, embargo)
    got = {s: _as_keys(per, s) for s in ("train", "val", "test")}
    # (e) Disjoint, and all are whole windows.
    assert not (got["train"] & got["val"] or got["train"] & got["test"]
                or got["val"] & got["test"])
    for keys in got.values():
      assert keys <= set(samples.keys)
    test, val, train = (sorted(got[s]) for s in ("test", "val", "train"))
    # (a) No training or validation footprint meets any test footprint, of any instrument.
    assert not samples.overlapping(train + val, test).any()
    # (b) No training footprint meets any validation footprint.
    assert not samples.overlapping(train, val).any()
    # (c) The embargo after each test group's hull (and validation group's, for training).
    test_ends, val_ends = samples.hull_ends(test), samples.hull_ends(val)
    assert not any(samples.embargoed(k, test_ends, embargo) for k in train + val)
    assert not any(samples.embargoed(k, val_ends, embargo) for k in train)
    # (d) Every window ending in a test group is tested.
    assert got["test"] == {k for k in samples.keys if samples.group[k] in fold["test"]}
    # (f) Validation is the latest: every validation time after every training time.
    if train and val:
      assert max(samples.time[k] for k in train) < min(samples.time[k] for k in val)
    # ... and exactly the sets the rules give: nothing dropped that need not be.
    assert got == _reference(samples, fold, val_fraction, embargo)
    for split, keys in got.items():
      for k in keys:
        tested[k] += split == "test"
      # Its periods: one [first, last] window-end time per run of consecutive groups.
      runs = []
      for g in sorted({samples.group[k] for k in keys}):
        if runs and runs[-1][-1] == g - 1:
          runs[-1].append(g)
        else:
          runs.append([g])
      assert periods[split] == [
          [min(samples.time[k] for k in keys if samples.group[k] in r),
           max(samples.time[k] for k in keys if samples.group[k] in r)] for r in runs]
  # (d) The test groups tile the timeline: cpcv tests each window in C(N-1, K-1) folds;
  # walk-forward each window after group 0 once.
  for k, n in tested.items():
    if cv["scheme"] == "cpcv":
      assert n == math.comb(cv["folds"] - 1, cv["test_groups"] - 1)
    else:
      assert n == (samples.group[k] > 0)


# ----------------------------------------------------------------------------
# The same sets as skfolio's, on one instrument with one event per bar
# ----------------------------------------------------------------------------
# Timestamps are bar indices and the events are the whole windows t = T .. n - 1 - h
# (event e is bar T + e). Two footprints [t - T, t + h] and [s - T, s + h] of consecutive
# bars meet exactly when |t - s| <= T + h. A test group is a block of events s0..s1, so a
# training event t before it meets one of its footprints iff s0 - t <= T + h (skfolio
# purges the purged_size events before a test block) and one after it iff t - s1 <= T + h
# (the purged_size events after it). Our embargo drops t whose first bar t - T is one of
# the E bars after the hull's last bar s1 + h: T + h < t - s1 <= T + h + E; skfolio drops
# purged_size + embargo_size events after each test block. So purged_size = T + h and
# embargo_size = E remove the same events, and the training sets are equal.


@settings(max_examples=80, deadline=None)
@given(n_folds=st.integers(3, 7), data=st.data(), window=st.integers(1, 6),
       horizon=st.integers(1, 4), embargo=st.integers(0, 4), extra=st.integers(0, 30))
def test_cpcv_matches_skfolio(n_folds, data, window, horizon, embargo, extra):
  k = data.draw(st.integers(2, n_folds - 1))  # skfolio needs 2 or more test folds.
  block = window + horizon + embargo + 2 + extra % 7  # skfolio: purge + embargo < block - 1.
  n_events = n_folds * block + extra % block  # The last block absorbs the remainder.
  n = n_events + window + horizon
  ts = np.arange(n, dtype=np.int64)
  cands = np.arange(window, n - horizon, dtype=np.int64)
  assert len(cands) == n_events
  cv = skms.CombinatorialPurgedCV(n_folds=n_folds, n_test_folds=k,
                                  purged_size=window + horizon, embargo_size=embargo)
  # skfolio's blocks of n_events // N events as timestamp edges (instead of group_edges).
  edges = np.array([window + g * (n_events // n_folds) for g in range(n_folds)] + [n])
  plan = folds.plan("cpcv", n_folds, test_groups=k)
  splits = list(cv.split(np.zeros((n_events, 1))))
  assert len(plan) == len(splits)
  for i, (fold, (train, tests)) in enumerate(zip(plan, splits)):
    assert fold["test"] == cv.test_set_index[i].tolist()
    (got,), _ = folds.fold_ends([ts], [cands], fold, edges, window, horizon, 0.0, embargo)
    assert len(got["val"]) == 0
    np.testing.assert_array_equal(got["train"] - window, train)
    np.testing.assert_array_equal(got["test"] - window, np.concatenate(tests))
  # Paths: ours are [path][group], skfolio's recombined_paths [group][path].
  paths = folds.cpcv_paths(n_folds, k)
  assert paths == cv.recombined_paths.T.tolist()
  assert len(paths) == cv.n_test_paths
  # get_path_ids[i, j]: the path that takes split i's j-th test group.
  for i, fold in enumerate(plan):
    assert [[p for p in range(len(paths)) if paths[p][g] == i][0] for g in fold["test"]] == (
        cv.get_path_ids()[i].tolist())


# Walk-forward: N + 1 groups of Q events each. skfolio's WalkForward(test_size=Q,
# train_size=S, purged_size=T + h) tests block [S + P + jQ, S + P + (j + 1) Q) and trains
# on the S events before it less the P = T + h it purges (from 0 with expand_train).
# Expanding: S = Q - P, so its split j tests group j + 1 and trains on events
# [0, (j + 1) Q - P): our fold j, whose purge drops the P events before the test block.
# Rolling over r groups: S = r Q - P; skfolio's first test block starts after r groups, so
# its split j is our fold j + r - 1 (our first r - 1 folds train on fewer groups, which
# skfolio leaves out). WalkForward has no embargo; ours cannot bite there either (all
# training precedes the test period), so any embargo gives the same sets.


@settings(max_examples=80, deadline=None)
@given(n_folds=st.integers(1, 6), data=st.data(), window=st.integers(1, 6),
       horizon=st.integers(1, 4), embargo=st.integers(0, 6), rolling=st.booleans())
def test_walk_forward_matches_skfolio(n_folds, data, window, horizon, embargo, rolling):
  purge = window + horizon
  r = data.draw(st.integers(1, n_folds)) if rolling else 1
  block = data.draw(st.integers(purge // r + 1, purge // r + 20))  # r Q - P >= 1.
  n_events = (n_folds + 1) * block
  n = n_events + window + horizon
  ts = np.arange(n, dtype=np.int64)
  cands = np.arange(window, n - horizon, dtype=np.int64)
  edges = np.array([window + g * block for g in range(n_folds + 1)] + [n])
  cv = skms.WalkForward(test_size=block, train_size=r * block - purge, purged_size=purge,
                        expand_train=not rolling)
  splits = list(cv.split(np.zeros((n_events, 1))))
  plan = folds.plan("rolling" if rolling else "expanding", n_folds, train_groups=r)
  assert len(splits) == len(plan) - (r - 1)
  for fold, (train, test) in zip(plan[r - 1:], splits):
    (got,), _ = folds.fold_ends([ts], [cands], fold, edges, window, horizon, 0.0, embargo)
    np.testing.assert_array_equal(got["train"] - window, train)
    np.testing.assert_array_equal(got["test"] - window, test)


# ----------------------------------------------------------------------------
# Bad settings: one message naming the flag or key
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"scheme": "kfold", "folds": 5}, "--scheme='kfold'"),
    ({"scheme": "cpcv", "folds": 2}, "--folds=2"),
    ({"scheme": "expanding", "folds": 0}, "--folds=0"),
    ({"scheme": "rolling", "folds": -1}, "--folds=-1"),
    ({"scheme": "cpcv", "folds": 5, "test_groups": 0}, "--test_groups=0"),
    ({"scheme": "cpcv", "folds": 5, "test_groups": 5}, "--test_groups=5"),
    ({"scheme": "rolling", "folds": 3, "train_groups": 0}, "walkforward.train_groups=0"),
])
def test_plan_refuses_bad_flags(kwargs, match):
  with pytest.raises(ValueError, match=match.replace("-", r"\-")):
    folds.plan(**kwargs)


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '{"groups": 4, "test": [1]}', '{"groups": "four", "test": [1], '
    '"train": [0]}', '{"groups": 4, "test": 1, "train": [0]}',
    '{"groups": 4, "test": [1], "train": [1, 2]}',  # Test and train overlap.
    '{"groups": 4, "test": [4], "train": [0]}', '{"groups": 4, "test": [1], "train": [-1]}',
    '{"groups": 4, "test": [], "train": [0]}', '{"groups": 4, "test": [1], "train": []}',
    '{"groups": 4, "test": ["1"], "train": [0]}', '{"groups": 4, "test": [1.5], "train": [0]}',
])
def test_parse_fold_refuses_malformed_folds(text):
  with pytest.raises(ValueError, match=r"config\.data\.fold=.* is invalid"):
    folds.parse_fold(text)


def test_parse_fold_reads_a_plan_entry_and_the_other_arguments_are_checked():
  fold = folds.plan("cpcv", 6, test_groups=2)[7]
  assert folds.parse_fold(json.dumps(fold)) == fold
  assert folds.parse_fold('{"groups": 5, "test": [3, 1], "train": [4, 0]}') == {
      "groups": 5, "test": [1, 3], "train": [0, 4]}
  assert folds.parse_fold("") is None
  ts, cands = [np.arange(50, dtype=np.int64)], [np.arange(5, 45, dtype=np.int64)]
  edges = folds.group_edges(ts, 4)
  with pytest.raises(ValueError, match="embargo must be >= 0"):
    folds.fold_ends(ts, cands, fold, edges, 5, 4, 0.1, -1)
  with pytest.raises(ValueError, match="val_fraction=1.0"):
    folds.fold_ends(ts, cands, fold, edges, 5, 4, 1.0, 0)


# ----------------------------------------------------------------------------
# One fold through build_dataset: the splits and the normaliser's rows
# ----------------------------------------------------------------------------


def _bars(n, seed):
  rng = np.random.default_rng(seed)
  close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, n)))
  open_ = np.concatenate([[100.0], close[:-1]])
  high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 2e-3, n)))
  low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 2e-3, n)))
  volume = rng.integers(1, 1000, n).astype(np.float64)
  return np.stack([open_, high, low, close, volume, np.full(n, 50.0)], axis=1)


def test_a_fold_of_build_dataset_is_clear_and_normalised_on_its_training_windows(tmp_path):
  T, h, embargo = 8, 4, 3
  # A: minutes 0..599 every minute, B: minutes 300..1098 every other minute.
  markets = {"A": (np.arange(600, dtype=np.int64) * _MIN, _bars(600, 0)),
             "B": (np.arange(300, 1100, 2, dtype=np.int64) * _MIN, _bars(400, 1))}
  for name, (ts, bars) in markets.items():
    shards.write_shard(os.path.join(tmp_path, f"{name}.parquet"), name, ts, bars)
  fold = {"groups": 4, "test": [1], "train": [0, 2, 3]}  # Training on both sides.
  cfg = shard_data_config(window=T, horizon=h, embargo=embargo, val_fraction=0.2,
                          fold=json.dumps(fold))
  ds = dataset.build_dataset(cfg, str(tmp_path), check_labels=False)
  stamps = [markets[name][0] for name in ds.instruments]
  samples = _Samples(stamps, folds.group_edges(stamps, 4), T, h)
  keys = {}
  for split in ("train", "val", "test"):
    s = ds.splits[split]
    bar = [int(np.flatnonzero(stamps[i] == x)[0]) for i, x in zip(s.instrument, s.timestamps)]
    keys[split] = sorted(zip(s.instrument.tolist(), bar))
    assert keys[split], split
  # No rolls here, so the splits are exactly the reference's sets.
  assert {s: set(k) for s, k in keys.items()} == _reference(samples, fold, 0.2, embargo)
  assert not samples.overlapping(keys["train"] + keys["val"], keys["test"]).any()
  assert not samples.overlapping(keys["train"], keys["val"]).any()
  ends = samples.hull_ends(keys["test"])
  assert not any(samples.embargoed(k, ends, embargo) for k in keys["train"] + keys["val"])
  # Training windows on both sides of the test group, and the embargo dropped some.
  rest = [k for k in samples.keys if samples.group[k] != 1]
  clear = [k for k, hit in zip(rest, samples.overlapping(rest, keys["test"])) if not hit]
  assert any(samples.embargoed(k, ends, embargo) for k in clear)
  test_times = [samples.time[k] for k in keys["test"]]
  assert any(samples.time[k] > max(test_times) for k in keys["train"])
  assert any(samples.time[k] < min(test_times) for k in keys["train"])
  # The normaliser: the bars the training windows show (t - T + 1 .. t), pooled.
  rows = []
  for i, name in enumerate(ds.instruments):
    shown = sorted({b for j, t in keys["train"] if j == i for b in range(t - T + 1, t + 1)})
    rows.append(features_lib.bar_features(markets[name][1])[shown])
  rows = np.concatenate(rows)
  np.testing.assert_allclose(ds.normalizer["mean"], rows.mean(axis=0), rtol=1e-10)
  std = rows.std(axis=0)
  std[std == 0] = 1.0  # oi_change is constant.
  np.testing.assert_allclose(ds.normalizer["std"], std, rtol=1e-10)
  assert ds.facts["fold"]["test"] == [1]
