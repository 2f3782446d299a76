"""data/features.py: the registry, causality of every feature, each new feature against
a plain loop, presets, user functions, errors, and the streaming normaliser."""

import datetime
import math
import os
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxquant import config_check
from jaxquant import config_defaults
from jaxquant.data import features as features_lib

_MIN = 60_000_000_000


def _market(n, seed, gaps=True):
  """Random valid bars [n, 6] and increasing minute timestamps (with some long gaps)."""
  rng = np.random.default_rng(seed)
  close = 100 * np.exp(np.cumsum(rng.normal(0, 2e-3, n)))
  open_ = close * np.exp(rng.normal(0, 1e-3, n))
  high = np.maximum(open_, close) * (1 + rng.random(n) * 1e-3)
  low = np.minimum(open_, close) * (1 - rng.random(n) * 1e-3)
  volume = rng.integers(0, 50, n).astype(float)
  volume[rng.random(n) < 0.2] = 7.0  # Runs of equal volume: the z-score's constant case.
  oi = rng.integers(0, 3000, n).astype(float)
  step = np.where(rng.random(n) < 0.1, rng.integers(31, 300, n), 1) if gaps else np.ones(n)
  ts = (np.datetime64("2024-01-02T09:00", "ns").astype(np.int64)
        + np.cumsum(step).astype(np.int64) * _MIN)
  return np.stack([open_, high, low, close, volume, oi], axis=1), ts


def _every_feature():
  """Each registered feature with its default parameter and with small ones."""
  out = []
  for name, f in sorted(features_lib._REGISTRY.items()):
    if f.default is None:
      out.append(name)
    else:
      out += [f"{name}:{p}" for p in sorted({f.minimum, f.minimum + 1, 3, f.default})]
  return ",".join(out)


# ----------------------------------------------------------------------------
# Causality: a feature at bar t reads only bars <= t
# ----------------------------------------------------------------------------


def _moved_before(spec, n, t, seed, other):
  """The features of `spec` whose value at some bar <= t changes when bars t+1.. change."""
  bars, ts = _market(n, seed)
  later_bars, later_ts = _market(n, other)
  moved, moved_ts = bars.copy(), ts.copy()
  # Later bars: other prices (scaled to continue from bar t), volumes, open interest,
  # and other times (still after bar t's).
  moved[t + 1:] = later_bars[t + 1:] * np.array([bars[t, 3] / later_bars[t, 3]] * 4 + [1, 1])
  moved_ts[t + 1:] = ts[t] + np.cumsum(np.diff(later_ts)[t:])
  a = features_lib.compute_features(bars, ts, spec)
  b = features_lib.compute_features(moved, moved_ts, spec)
  return [name for j, name in enumerate(features_lib.feature_names(spec))
          if not np.array_equal(a[:t + 1, j], b[:t + 1, j])]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 70), cut=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       other=st.integers(0, 2**31 - 1))
def test_no_feature_reads_a_later_bar(n, cut, seed, other):
  t = min(int(cut * (n - 1)), n - 2)  # Bars 0..t stay, t+1..n-1 change.
  assert _moved_before(_every_feature(), n, t, seed, other) == [], t


def test_the_causality_check_catches_a_feature_that_looks_ahead():
  # A centred moving average reads bar t+1: the same comparison names it.
  features_lib.register_feature(
      "peek_test", lambda b, _ts: np.convolve(b[:, 3], np.ones(3) / 3, mode="same"))
  try:
    assert _moved_before("log_return,peek_test", 50, 29, 0, 1) == ["peek_test"]
  finally:
    del features_lib._REGISTRY["peek_test"]


# ----------------------------------------------------------------------------
# Each feature against an independent computation
# ----------------------------------------------------------------------------


def test_default_is_todays_six_in_order():
  bars, ts = _market(200, 1)
  o, h, l, c, v, oi = bars.T
  want = np.zeros((200, 6))
  for t in range(200):
    prev = t - 1 if t else t  # Row 0: no predecessor, change features 0.
    want[t] = [math.log(c[t] / c[prev]), math.log(h[t] / l[t]), math.log(c[t] / o[t]),
               math.log(1 + v[t]), math.log(1 + v[t]) - math.log(1 + v[prev]),
               math.log(oi[t] + 1) - math.log(oi[prev] + 1)]
  got = features_lib.compute_features(bars, ts, "default")
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  assert features_lib.feature_names("default") == features_lib.FEATURE_NAMES == (
      "log_return", "log_range", "log_body", "log_volume", "volume_change", "oi_change")
  assert np.array_equal(got, features_lib.bar_features(bars))  # Runs saved before: same.


def _sessions(ts, gap):
  """Index of each bar's session's first bar, by walking the bars."""
  first, out = 0, []
  for t in range(len(ts)):
    if t and ts[t] - ts[t - 1] > gap * _MIN:
      first = t
    out.append(first)
  return out


def test_new_features_match_plain_loops():
  n = 400
  bars, ts = _market(n, 2)
  c, v, oi = bars[:, 3], bars[:, 4], bars[:, 5]
  spec = ("realized_vol:7,volume_zscore:5,time_of_day,session_elapsed:30,"
          "session_open_distance:60,oi_level")
  got = features_lib.compute_features(bars, ts, spec)
  rets = [0.0] + [math.log(c[t] / c[t - 1]) for t in range(1, n)]
  s30, s60 = _sessions(ts, 30), _sessions(ts, 60)
  for t in range(n):
    past = rets[max(0, t - 6):t + 1]
    assert got[t, 0] == pytest.approx(math.sqrt(sum(r * r for r in past) / len(past)),
                                      rel=1e-9, abs=1e-15)
    lv = np.log1p(v[max(0, t - 4):t + 1])
    z = (lv[-1] - lv.mean()) / lv.std() if lv.var() > 1e-8 else 0.0
    assert got[t, 1] == pytest.approx(z, rel=1e-6, abs=1e-6), t
    when = datetime.datetime.fromtimestamp(int(ts[t]) // 10**9, datetime.timezone.utc)
    minutes = when.hour * 60 + when.minute
    assert got[t, 2] == pytest.approx(minutes / 1440, abs=1e-12)
    assert got[t, 3] == pytest.approx((ts[t] - ts[s30[t]]) / _MIN)
    assert got[t, 4] == pytest.approx(math.log(c[t] / bars[s60[t], 0]), rel=1e-12)
    assert got[t, 5] == pytest.approx(math.log(1 + oi[t]), rel=1e-12)
  assert len(set(s30)) > len(set(s60)) > 3  # The gaps opened sessions of both kinds.


def test_session_rule_a_gap_longer_than_g_minutes_opens_a_session():
  ts = np.array([0, 1, 2, 32, 33, 64, 65], np.int64) * _MIN  # Gaps of 30 and 31 minutes.
  assert features_lib.session_open_rows(ts, 30).tolist() == [0, 0, 0, 0, 0, 5, 5]
  assert features_lib.session_open_rows(ts, 29).tolist() == [0, 0, 0, 3, 3, 5, 5]


def test_original_preset_has_ten_channels():
  names = features_lib.feature_names("original")
  assert len(names) == 10 and names[:6] == features_lib.FEATURE_NAMES
  bars, ts = _market(100, 3)
  got = features_lib.compute_features(bars, ts, "original")
  want = features_lib.compute_features(bars, ts, ",".join(names))
  assert got.shape == (100, 10) and np.array_equal(got, want)


# ----------------------------------------------------------------------------
# User features, errors
# ----------------------------------------------------------------------------


def test_a_registered_function_and_a_dotted_path(tmp_path, monkeypatch):
  bars, ts = _market(60, 4)
  features_lib.register_feature("spread_test", lambda b, _ts, k: b[:, 1] - b[:, 2] * k,
                                default=2)
  try:
    got = features_lib.compute_features(bars, ts, "default,spread_test:3")
    assert features_lib.feature_names("default,spread_test") == (
        features_lib.FEATURE_NAMES + ("spread_test:2",))
  finally:
    del features_lib._REGISTRY["spread_test"]
  np.testing.assert_array_equal(got[:, 6], bars[:, 1] - bars[:, 2] * 3)
  (tmp_path / "userfeat_e.py").write_text(
      "def vol_x(bars, ts, k=1):\n  return bars[:, 4] * k\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  got = features_lib.compute_features(bars, ts, "userfeat_e.vol_x:4,userfeat_e.vol_x")
  np.testing.assert_array_equal(got, np.stack([bars[:, 4] * 4, bars[:, 4]], axis=1))
  with pytest.raises(ValueError, match="is built in"):
    features_lib.register_feature("log_return", lambda b, t: b[:, 0])


@pytest.mark.parametrize("spec, message", [
    ("volatility", "unknown feature 'volatility'"),
    ("realized_vol:1", "in 'realized_vol:1' the parameter must be an integer >= 2"),
    ("realized_vol:ten", "the parameter must be an integer"),
    ("log_return:3", "feature 'log_return' takes no parameter"),
    ("default,log_range", "'log_range' is named twice"),
    ("default,,oi_level", "an empty name between commas"),
    ("no_such_module_e.f", "cannot import 'no_such_module_e'"),
    ("math.no_such_function", "module 'math' has no 'no_such_function'"),
])
def test_bad_names_are_one_line_naming_the_key(spec, message):
  with pytest.raises(ValueError, match=message) as e:
    features_lib.resolve_features(spec)
  assert str(e.value).startswith(f"config.data.features={spec!r}: ")
  assert "\n" not in str(e.value)
  config = config_defaults.get_config()
  # config_check stops the run before any data is read.
  with pytest.raises(config_check.ConfigError, match="config.data.features"):
    config_check.with_overrides(config, [f"--config.data.features={spec}"])


def test_a_feature_giving_a_bad_value_is_named():
  bars, ts = _market(20, 5)
  bars[7, 1] = -1.0  # log(high / low) of a negative high.
  with pytest.raises(ValueError, match="'log_range' is not finite at bar 7"):
    with np.errstate(invalid="ignore"):
      features_lib.compute_features(bars, ts, "default")
  features_lib.register_feature("short_test", lambda b, t: b[1:, 0])
  try:
    with pytest.raises(ValueError, match="'short_test' returned shape"):
      features_lib.compute_features(bars, ts, "short_test")
  finally:
    del features_lib._REGISTRY["short_test"]


def test_the_config_fingerprint_covers_data_features(tmp_path):
  from jaxquant import resume
  config = config_defaults.get_config()
  ds = types.SimpleNamespace(splits={})
  before = resume.run_fingerprint(config, ds, str(tmp_path))
  config.data.features = "original"
  after = resume.run_fingerprint(config, ds, str(tmp_path))
  assert resume.fingerprint_diff(before, after) == ["data.features: 'default' -> 'original'"]


# ----------------------------------------------------------------------------
# The normaliser, one instrument at a time
# ----------------------------------------------------------------------------


def test_pooled_normaliser_matches_the_pooled_arrays():
  rng = np.random.default_rng(6)
  parts = [rng.normal(3, 2, (n, 4)) * [1, 10, 0.1, 0] for n in (500, 1, 0, 2000)]
  pooled = np.concatenate(parts)
  got = features_lib.pooled_normalizer([features_lib.train_moments(p) for p in parts],
                                       names=list("abcd"))
  np.testing.assert_allclose(got["mean"], pooled.mean(axis=0), rtol=1e-12, atol=1e-15)
  want_std = pooled.std(axis=0)
  want_std[3] = 1.0  # A constant column keeps std 1 (stays 0 after centring).
  np.testing.assert_allclose(got["std"], want_std, rtol=1e-12)
  assert got["feature_names"] == list("abcd")
  one = features_lib.pooled_normalizer([features_lib.train_moments(parts[0])])
  assert one == features_lib.fit_normalizer(parts[0], np.arange(500))  # Bitwise.
  with pytest.raises(ValueError, match="no bars"):
    features_lib.pooled_normalizer([features_lib.train_moments(parts[2])])


def test_dataset_names_its_features_and_matches_a_pooled_reference(tmp_path):
  from jaxquant.data import dataset
  from jaxquant.data import shards
  market = {}
  for k, (name, n) in enumerate([("A", 3000), ("B", 2200)]):
    bars, ts = _market(n, 7 + k, gaps=False)
    bars[:, 4] = np.random.default_rng(k).integers(1, 50, n)
    market[name] = (bars, ts + k * 500 * _MIN)  # B starts later: the cuts fall apart.
    shards.write_shard(os.path.join(tmp_path, f"{name}{shards.SHARD_SUFFIX}"), name,
                       market[name][1], bars)
  cfg = config_defaults.get_config().data
  cfg.source, cfg.dir, cfg.window, cfg.horizon = "shards", str(tmp_path), 20, 5
  cfg.label_threshold, cfg.features = 0.001, "original,time_of_day"
  ds = dataset.build_dataset(cfg, str(tmp_path))
  names = list(features_lib.feature_names("original,time_of_day"))
  assert ds.summary()["feature_names"] == names == ds.normalizer["feature_names"]
  assert ds.num_features == 11
  # Independently: every instrument's features in one array, statistics of the bars
  # before the first cut, numpy's pooled mean and std.
  every = [features_lib.compute_features(b, t, cfg.features) for b, t in market.values()]
  train = np.concatenate([f[t < ds.cuts["val_start"]] for f, (_, t) in zip(every, market.values())])
  std = train.std(axis=0)
  np.testing.assert_allclose(ds.normalizer["mean"], train.mean(axis=0), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(ds.normalizer["std"], np.where(std > 1e-12, std, 1), rtol=1e-12)
  want = (np.concatenate(every) - train.mean(axis=0)) / np.where(std > 1e-12, std, 1)
  np.testing.assert_allclose(ds.features, want, rtol=1e-5, atol=1e-6)
  # Through the saved normaliser, each value is the float32 of the float64 formula.
  assert np.array_equal(ds.features, features_lib.normalize(np.concatenate(every),
                                                            ds.normalizer))
  cfg.features = "default"
  with pytest.raises(ValueError, match="the normaliser was fitted on features"):
    dataset.build_dataset(cfg, str(tmp_path), normalizer=ds.normalizer)
