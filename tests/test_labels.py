"""Label kinds against plain-python references, config errors, and split leakage."""

import decimal
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxquant.data import labels, splits


def _walk(n, seed, step=2e-3, wick=1.5e-3):
  """Random-walk bars [n, 6] (open, high, low, close, volume, oi) with wicks."""
  rng = np.random.default_rng(seed)
  close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, step, n)))
  open_ = np.concatenate([[100.0], close[:-1]])
  high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, wick, n)))
  low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, wick, n)))
  return np.stack([open_, high, low, close, np.ones(n), np.ones(n)], axis=1)


def _reference_barrier(close, high, low, horizon, tp, sl, units, tick, binary):
  """Bar-by-bar walk, the obvious way."""
  n = len(close)
  lab, ret, off = [], [], []
  for t in range(n):
    if t + horizon >= n:
      lab.append(-1); ret.append(math.nan); off.append(-1)
      continue
    c = close[t]
    if units == "return":
      up, dn = c * (1 + tp), c * (1 - sl)
    elif units == "price":
      up, dn = c + tp, c - sl
    else:
      up, dn = c + tp * tick, c - sl * tick
    for k in range(1, horizon + 1):
      if low[t + k] <= dn:  # Checked first: a double touch is a stop-loss.
        lab.append(0); ret.append(dn / c - 1); off.append(k)
        break
      if high[t + k] >= up:
        lab.append(1 if binary else 2); ret.append(up / c - 1); off.append(k)
        break
    else:
      lab.append(0 if binary else 1); ret.append(close[t + horizon] / c - 1)
      off.append(horizon)
  return np.array(lab), np.array(ret), np.array(off)


def test_three_class_matches_a_loop():
  rng = np.random.default_rng(0)
  r = rng.normal(0, 0.01, 500)
  r[::37] = np.nan
  r[5], r[6], r[7] = 0.004, -0.004, 0.0  # Exactly at ±threshold: flat.
  want = [-1 if math.isnan(x) else 0 if x < -0.004 else 2 if x > 0.004 else 1 for x in r]
  got = labels.three_class_labels(r, 0.004)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="threshold"):
    labels.three_class_labels(r, -0.1)


@pytest.mark.parametrize("units,tp,sl,tick", [
    ("return", 0.006, 0.004, None),
    ("price", 0.5, 0.7, None),
    ("ticks", 3, 2, 0.2),
])
@pytest.mark.parametrize("binary", [True, False])
def test_triple_barrier_matches_a_loop(units, tp, sl, tick, binary):
  seen = set()
  for seed, horizon in [(0, 1), (1, 7), (2, 30)]:
    b = _walk(1500, seed, wick=4e-3)  # Wide wicks: some bars touch both barriers.
    close, high, low = b[:, 3], b[:, 1], b[:, 2]
    want = _reference_barrier(close, high, low, horizon, tp, sl, units, tick, binary)
    got = labels.triple_barrier_labels(close, high, low, horizon, tp, sl, units=units,
                                       tick_size=tick, binary=binary)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[2], want[2])
    seen |= set(np.unique(got[0]).tolist())
  # Every outcome occurred, so the comparison exercised all branches.
  assert seen == ({-1, 0, 1} if binary else {-1, 0, 1, 2})


def test_triple_barrier_chunking_does_not_change_results(monkeypatch):
  b = _walk(3000, 5)
  args = (b[:, 3], b[:, 1], b[:, 2], 20, 0.005, 0.005)
  whole = labels.triple_barrier_labels(*args, binary=False)
  monkeypatch.setattr(labels, "_CHUNK_ELEMENTS", 20 * 7)  # 7 rows per chunk.
  for a, c in zip(whole, labels.triple_barrier_labels(*args, binary=False)):
    np.testing.assert_array_equal(a, c)


def test_same_bar_double_touch_is_a_stop_loss():
  # Entry 100, barriers 101 / 99; bar t+2 spans 98.7 .. 101.2 (both touched).
  close = np.array([100.0, 100.0, 100.0, 100.5, 100.0])
  high = np.array([100.0, 100.5, 101.2, 102.0, 100.0])
  low = np.array([100.0, 99.5, 98.7, 100.0, 100.0])
  lab, ret, off = labels.triple_barrier_labels(close, high, low, 3, 0.01, 0.01, binary=False)
  assert lab[0] == 0 and off[0] == 2 and ret[0] == pytest.approx(-0.01)
  # Touching exactly at the barrier counts as a touch.
  lab, ret, off = labels.triple_barrier_labels(
      close, np.array([100, 101.0, 100, 100, 100]), np.full(5, 99.5), 3, 1.0, 1.0,
      units="price")
  assert lab[0] == 1 and off[0] == 1 and ret[0] == pytest.approx(0.01)


def test_time_limit_exits_at_the_horizon_close():
  close = np.array([100.0, 100.2, 99.9, 100.3, 100.1, 100.0])
  high, low = close + 0.1, close - 0.1
  lab, ret, off = labels.triple_barrier_labels(close, high, low, 3, 0.01, 0.01, binary=False)
  np.testing.assert_array_equal(lab, [1, 1, 1, -1, -1, -1])
  np.testing.assert_array_equal(off, [3, 3, 3, -1, -1, -1])
  np.testing.assert_allclose(ret[:3], close[3:6] / close[:3] - 1)
  assert np.isnan(ret[3:]).all()
  lab, _, _ = labels.triple_barrier_labels(close, high, low, 3, 0.01, 0.01)  # binary
  np.testing.assert_array_equal(lab, [0, 0, 0, -1, -1, -1])
  # Shorter than the horizon: nothing is labelled.
  lab, ret, off = labels.triple_barrier_labels(close[:3], high[:3], low[:3], 3, 0.01, 0.01)
  assert (lab == -1).all() and np.isnan(ret).all() and (off == -1).all()


def test_exit_returns_sit_on_the_barriers():
  b = _walk(2000, 9)
  lab, ret, off = labels.triple_barrier_labels(b[:, 3], b[:, 1], b[:, 2], 15, 0.004, 0.003,
                                               binary=False)
  np.testing.assert_allclose(ret[lab == 2], 0.004, atol=1e-12)
  np.testing.assert_allclose(ret[lab == 0], -0.003, atol=1e-12)
  t = np.flatnonzero(lab == 1)
  np.testing.assert_allclose(ret[t], b[t + 15, 3] / b[t, 3] - 1)
  assert ((off[lab >= 0] >= 1) & (off[lab >= 0] <= 15)).all()


# ----------------------------------------------------------------------------
# make_labels
# ----------------------------------------------------------------------------


def test_make_labels_dispatch():
  b = _walk(800, 3)
  fwd = labels.forward_return(b[:, 3], 10)
  out = labels.make_labels({"kind": "binary", "horizon": 10, "threshold": 0.002}, b)
  assert out["num_classes"] == 2
  np.testing.assert_array_equal(out["fwd_return"], fwd)
  np.testing.assert_array_equal(out["labels"][:-10], fwd[:-10] > 0.002)
  assert (out["labels"][-10:] == -1).all()
  # Today's config.data (no kind, label_threshold) still works.
  legacy = labels.make_labels({"horizon": 10, "label_threshold": 0.002}, b)
  np.testing.assert_array_equal(legacy["labels"], out["labels"])

  out = labels.make_labels({"kind": "three_class", "horizon": 10, "threshold": 0.002}, b)
  assert out["num_classes"] == 3
  np.testing.assert_array_equal(out["labels"], labels.three_class_labels(fwd, 0.002))

  cfg = {"kind": "triple_barrier", "horizon": 10, "take_profit": 4, "stop_loss": 3,
         "barrier_units": "ticks", "tick_size": 0.1, "barrier_binary": False}
  out = labels.make_labels(cfg, b)
  ref = labels.triple_barrier_labels(b[:, 3], b[:, 1], b[:, 2], 10, 4, 3, units="ticks",
                                     tick_size=0.1, binary=False)
  assert out["num_classes"] == 3
  np.testing.assert_array_equal(out["labels"], ref[0])
  np.testing.assert_array_equal(out["fwd_return"], fwd)  # Regression target stays plain.
  np.testing.assert_array_equal(out["exit_offset"], ref[2])


def test_make_labels_accepts_a_config_dict():
  ml_collections = pytest.importorskip("ml_collections")
  c = ml_collections.ConfigDict({"kind": "triple_barrier", "horizon": 5, "take_profit": 0.01,
                                 "stop_loss": 0.01})
  out = labels.make_labels(c, _walk(100, 0))
  assert out["num_classes"] == 2 and set(np.unique(out["labels"])) <= {-1, 0, 1}


@pytest.mark.parametrize("cfg,key", [
    ({"kind": "regression", "horizon": 5}, "config.data.kind"),
    ({"kind": "binary", "horizon": 0, "threshold": 0.0}, "config.data.horizon"),
    ({"kind": "binary", "horizon": 2.5, "threshold": 0.0}, "config.data.horizon"),
    ({"kind": "binary", "threshold": 0.0}, "config.data.horizon"),
    ({"kind": "binary", "horizon": 5, "threshold": float("nan")}, "config.data.threshold"),
    ({"kind": "binary", "horizon": 5}, "config.data.threshold"),
    ({"kind": "three_class", "horizon": 5, "threshold": -0.01}, "config.data.threshold"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 0, "stop_loss": 0.01},
     "config.data.take_profit"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 0.01}, "config.data.stop_loss"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 0.01, "stop_loss": 1.5},
     "config.data.stop_loss"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 0.01, "stop_loss": 0.01,
      "barrier_units": "pips"}, "config.data.barrier_units"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 2, "stop_loss": 2,
      "barrier_units": "ticks"}, "config.data.tick_size"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 2, "stop_loss": 2,
      "barrier_units": "ticks", "tick_size": -1.0}, "config.data.tick_size"),
    ({"kind": "triple_barrier", "horizon": 5, "take_profit": 0.01, "stop_loss": 0.01,
      "barrier_binary": "yes"}, "config.data.barrier_binary"),
])
def test_make_labels_errors_name_the_key(cfg, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    labels.make_labels(cfg, _walk(50, 0))


def test_make_labels_prefix():
  with pytest.raises(ValueError, match=r"config\.data\.label\.kind"):
    labels.make_labels({"kind": "x", "horizon": 3}, _walk(20, 0), prefix="config.data.label")


# ----------------------------------------------------------------------------
# Leakage: footprints across splits, for every label kind's horizon
# ----------------------------------------------------------------------------


def _check_disjoint(n, window, horizon, val, test, embargo):
  segs = splits.segments(n, val, test, embargo)
  ends = {s: splits.window_ends(segs[s], window, horizon) for s in splits.SPLITS}
  train = ends["train"]
  for other in ("val", "test"):
    o = ends[other]
    if len(train) and len(o):
      # Footprints [t - T, t + h]: intervals are disjoint iff one ends before the other starts.
      # Train precedes both, so the latest train footprint must end before the earliest other.
      assert train.max() + horizon < o.min() - window
      assert (o.min() - window) - (train.max() + horizon) > embargo
  return segs, ends


@settings(max_examples=150, deadline=None)
@given(n=st.integers(50, 2000), window=st.integers(1, 120), horizon=st.integers(1, 60),
       val=st.floats(0.05, 0.4), test=st.floats(0.05, 0.4), embargo=st.integers(0, 30))
def test_binary_footprints_never_overlap(n, window, horizon, val, test, embargo):
  _check_disjoint(n, window, horizon, val, test, embargo)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(50, 1500), window=st.integers(1, 120), horizon=st.integers(1, 60),
       val=st.floats(0.05, 0.4), test=st.floats(0.05, 0.4), embargo=st.integers(0, 30),
       seed=st.integers(0, 2**16))
def test_triple_barrier_labels_read_only_their_footprint(n, window, horizon, val, test,
                                                         embargo, seed):
  segs, ends = _check_disjoint(n, window, horizon, val, test, embargo)
  b = _walk(n, seed)
  cfg = {"kind": "triple_barrier", "horizon": horizon, "take_profit": 0.004,
         "stop_loss": 0.004, "barrier_binary": False}
  full = labels.make_labels(cfg, b)
  for split in splits.SPLITS:
    t = ends[split]
    if not len(t):
      continue
    # Every sample of a split has a label, i.e. its whole horizon is inside the data...
    assert (full["labels"][t] >= 0).all()
    # ...and inside its segment: scrambling every bar after the segment (the later
    # splits) changes none of its labels, exits or forward returns.
    stop = segs[split][1]
    scrambled = b.copy()
    scrambled[stop:] = _walk(n, seed + 1)[stop:] * 1.7
    other = labels.make_labels(cfg, scrambled)
    for key in ("labels", "exit_return", "exit_offset", "fwd_return"):
      np.testing.assert_array_equal(other[key][t], full[key][t])


# ----------------------------------------------------------------------------
# Prices on a tick grid: a bar that trades at the barrier touches it
# ----------------------------------------------------------------------------


def _on_grid(ticks, tick):
  """Prices of integer tick counts as a CSV reader sees them (the double nearest the
  decimal k * tick), not as k * tick computed in floating point."""
  step = decimal.Decimal(repr(tick))
  return np.array([float(decimal.Decimal(int(k)) * step) for k in ticks])


def _grid_bars(seed, tick, n, dists, coarse):
  """Integer-tick closes (multiples of `coarse`) and highs / lows that land exactly on
  the barriers of the previous bar's close a third of the time.

  Returns:
    (close, high, low) in ticks (int64) and as prices on the grid.
  """
  rng = np.random.default_rng(seed)
  # ~1.1 in price (22000 ticks of 0.00005), at least 50 steps of `coarse` from zero.
  base = max(int(round(1.1 / tick / coarse)), 50)
  c = coarse * (base + np.cumsum(rng.choice([-1, 0, 1], n, p=[0.15, 0.7, 0.15])))
  up, dn = dists(np.concatenate([c[:1], c[:-1]]))  # Distances of the previous close.
  exact = rng.random((2, n)) < 1 / 3
  hi = c + np.where(exact[0], up, rng.integers(0, up + 1))
  lo = c - np.where(exact[1], dn, rng.integers(0, dn + 1))
  return (c, hi, lo), tuple(_on_grid(x, tick) for x in (c, hi, lo))


def _reference_ticks(c, hi, lo, horizon, dists):
  """First touch in whole ticks (integers: no rounding at all), stop-loss first."""
  n = len(c)
  lab, off, exit_ticks = np.full(n, -1), np.full(n, -1), np.zeros(n, np.int64)
  exact, ups, dns = 0, *dists(c)
  for t in range(n - horizon):
    up, dn = int(ups[t]), int(dns[t])
    lab[t], off[t], exit_ticks[t] = 1, horizon, c[t + horizon]
    for k in range(1, horizon + 1):
      if lo[t + k] <= c[t] - dn:
        lab[t], off[t], exit_ticks[t] = 0, k, c[t] - dn
        exact += lo[t + k] == c[t] - dn
        break
      if hi[t + k] >= c[t] + up:
        lab[t], off[t], exit_ticks[t] = 2, k, c[t] + up
        exact += hi[t + k] == c[t] + up
        break
  return lab, off, exit_ticks, exact


@pytest.mark.parametrize("tick", [0.2, 0.01, 0.00005, 1, 5])
@pytest.mark.parametrize("units", ["ticks", "price", "return"])
def test_exact_touches_on_a_tick_grid_count(tick, units):
  horizon, n = 8, 1500
  if units == "return":
    # 1 % / 2 % of a close that is a multiple of 100 ticks is a whole number of ticks.
    tp, sl, coarse = 0.01, 0.02, 100
    dists = lambda c: (c // 100, c // 50)
  else:
    coarse = 1
    dists = lambda c: (np.full_like(c, 3), np.full_like(c, 2))
    tp, sl = (3, 2) if units == "ticks" else (float(_on_grid([3], tick)[0]),
                                              float(_on_grid([2], tick)[0]))
  ticks, (close, high, low) = _grid_bars(7, tick, n, dists, coarse)
  want_lab, want_off, exit_ticks, exact = _reference_ticks(*ticks, horizon, dists)
  assert exact > 100  # Many exact touches, so a missed one cannot hide.
  lab, ret, off = labels.triple_barrier_labels(
      close, high, low, horizon, tp, sl, units=units,
      tick_size=tick if units == "ticks" else None, binary=False)
  np.testing.assert_array_equal(lab, want_lab)
  np.testing.assert_array_equal(off, want_off)
  known = want_lab >= 0
  np.testing.assert_allclose(ret[known], exit_ticks[known] / ticks[0][known] - 1,
                             rtol=0, atol=1e-12)
