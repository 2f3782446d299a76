"""build_dataset: what a window holds, where its label comes from, which bars the
normaliser is fitted on, and the trade return each split carries."""

import os

import numpy as np
import pytest

from conftest import shard_data_config
from jaxquant.data import dataset
from jaxquant.data import features as features_lib
from jaxquant.data import shards

_MIN = 60_000_000_000  # One minute in ns.


def _bars(n, seed, wick=2e-3):
  """Random-walk bars [n, 6] with wicks and varying volume."""
  rng = np.random.default_rng(seed)
  close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, n)))
  open_ = np.concatenate([[100.0], close[:-1]])
  high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, wick, n)))
  low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, wick, n)))
  volume = rng.integers(1, 1000, n).astype(np.float64)
  return np.stack([open_, high, low, close, volume, np.full(n, 50.0)], axis=1)


def _write(directory, markets):
  """markets: {name: (timestamps, bars)} → one shard each."""
  for name, (ts, bars) in markets.items():
    shards.write_shard(os.path.join(directory, f"{name}.parquet"), name, ts, bars)
  return str(directory)




# ----------------------------------------------------------------------------
# What a window holds relative to its label
# ----------------------------------------------------------------------------


def test_window_reads_bars_up_to_t_and_its_label_the_next_h(tmp_path):
  n, T, h = 300, 8, 4
  ts, bars = np.arange(n, dtype=np.int64) * _MIN, _bars(n, 0)
  cfg = shard_data_config(window=T, horizon=h)
  ds = dataset.build_dataset(cfg, _write(tmp_path / "a", {"X": (ts, bars)}))
  s = ds.splits["train"]
  i = len(s) // 2
  t = int(s.ends[i])  # One instrument: row = bar index.
  # Independently: features of bars t-T+1 .. t through the saved normaliser.
  want = features_lib.normalize(features_lib.bar_features(bars), ds.normalizer)[t - T + 1:t + 1]
  np.testing.assert_array_equal(ds.windows("train", np.array([i]))[0], want)
  assert s.timestamps[i] == ts[t]
  r = bars[t + h, 3] / bars[t, 3] - 1
  assert s.fwd_returns[i] == pytest.approx(r) and s.labels[i] == int(r > 0.001)
  assert s.exit_offsets[i] == h
  # Which moved bar changes the window and which the label's return: the window
  # reads bars t-T+1 .. t (and bar t-T as the predecessor of its first bar's change
  # features), the label bar t's close and bar t+h's, nothing after t+h.
  for bar, window_moves, label_moves in [
      (t - T - 1, False, False), (t - T, True, False), (t - T + 1, True, False),
      (t, True, True), (t + 1, False, False), (t + h, False, True), (t + h + 1, False, False)]:
    moved = bars.copy()
    moved[bar, [0, 1, 2, 3]] *= 1.01
    other = dataset.build_dataset(cfg, _write(tmp_path / f"b{bar}", {"X": (ts, moved)}),
                                  normalizer=ds.normalizer)
    o = other.splits["train"]
    assert o.ends[i] == t
    window = other.windows("train", np.array([i]))
    assert np.array_equal(window, ds.windows("train", np.array([i]))) != window_moves, bar
    assert (o.fwd_returns[i] != s.fwd_returns[i]) == label_moves, bar


# ----------------------------------------------------------------------------
# The normaliser: training rows only
# ----------------------------------------------------------------------------


def _normalizer_after(tmp_path, markets, name, bar, tag):
  moved = dict(markets)
  ts, bars = moved[name]
  bars = bars.copy()
  bars[bar, 4] *= 7.0  # Volume: moves log_volume and both volume changes around it.
  bars[bar, [0, 1, 2, 3]] *= 1.02
  moved[name] = (ts, bars)
  return dataset.build_dataset(shard_data_config(), _write(tmp_path / tag, moved)).normalizer


def test_normaliser_statistics_come_from_training_rows_only(tmp_path):
  n = 500
  markets = {"X": (np.arange(n, dtype=np.int64) * _MIN, _bars(n, 1))}
  base = dataset.build_dataset(shard_data_config(), _write(tmp_path / "base", markets))
  # Training rows: bars before the first cut, round(500 * 0.6) = 300.
  f = features_lib.bar_features(markets["X"][1])
  np.testing.assert_allclose(base.normalizer["mean"], f[:300].mean(axis=0), rtol=1e-12)
  std = f[:300].std(axis=0)
  std[std == 0] = 1.0  # oi_change is constant: kept at 0 after centring.
  np.testing.assert_allclose(base.normalizer["std"], std, rtol=1e-12)
  for bar, moves in [(0, True), (150, True), (298, True), (300, False), (301, False),
                     (420, False), (n - 1, False)]:
    norm = _normalizer_after(tmp_path, markets, "X", bar, f"x{bar}")
    assert (norm != base.normalizer) == moves, bar


def test_normaliser_uses_the_calendar_cut_for_every_instrument(tmp_path):
  # A: minutes 0..599, B: minutes 400..999; 1,200 pooled bars, the first cut at
  # pooled bar 720 = minute 400 + 320 / 2 = 560: B trains on minutes 400..559 only.
  markets = {"A": (np.arange(0, 600, dtype=np.int64) * _MIN, _bars(600, 2)),
             "B": (np.arange(400, 1000, dtype=np.int64) * _MIN, _bars(600, 3))}
  base = dataset.build_dataset(shard_data_config(), _write(tmp_path / "base", markets))
  assert base.summary()["cuts"]["val_start"] == "1970-01-01T09:20:00"
  for name, bar, moves in [("A", 559, True), ("A", 560, False), ("B", 159, True),
                           ("B", 160, False), ("B", 300, False)]:
    # B's bar 300 is inside its own first 60 % but after the common cut.
    norm = _normalizer_after(tmp_path, markets, name, bar, f"{name}{bar}")
    assert (norm != base.normalizer) == moves, (name, bar)


# ----------------------------------------------------------------------------
# Triple barrier: the split carries the barrier exit, not the horizon return
# ----------------------------------------------------------------------------


def _barrier_exits(bars, h, tp, sl):
  """(return, offset) of the trade entered at each close: first touch within h bars,
  stop-loss first when one bar touches both, else the close h bars later."""
  close, high, low = bars[:, 3], bars[:, 1], bars[:, 2]
  ret, off = np.full(len(close), np.nan), np.full(len(close), -1)
  for t in range(len(close) - h):
    up, dn = close[t] * (1 + tp), close[t] * (1 - sl)
    ret[t], off[t] = close[t + h] / close[t] - 1, h
    for k in range(1, h + 1):
      if low[t + k] <= dn:
        ret[t], off[t] = -sl, k
        break
      if high[t + k] >= up:
        ret[t], off[t] = tp, k
        break
  return ret, off


def test_triple_barrier_splits_carry_the_exit_return(tmp_path):
  n, h, tp, sl = 600, 6, 0.003, 0.002
  ts, bars = np.arange(n, dtype=np.int64) * _MIN, _bars(n, 4)
  cfg = shard_data_config(horizon=h, label_kind="triple_barrier", take_profit=tp,
                          stop_loss=sl, barrier_binary=False)
  ds = dataset.build_dataset(cfg, _write(tmp_path, {"X": (ts, bars)}))
  ret, off = _barrier_exits(bars, h, tp, sl)
  plain = bars[h:, 3] / bars[:-h, 3] - 1
  for name, s in ds.splits.items():
    t = s.ends  # One instrument: row = bar index.
    np.testing.assert_allclose(s.fwd_returns, ret[t], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s.exit_offsets, off[t])
    # Enough barrier exits that the horizon return would not pass for the exit return.
    assert (s.exit_offsets < h).mean() > 0.3, name
    assert not np.allclose(s.fwd_returns, plain[t]), name
  # Prediction on other data carries the same exits (unknown ones -1 / NaN at the end).
  inf = dataset.build_inference_set(cfg, str(tmp_path), ds.normalizer)
  s = inf.splits["all"]
  np.testing.assert_array_equal(s.exit_offsets, off[s.ends])
  np.testing.assert_allclose(s.fwd_returns, ret[s.ends], rtol=0, atol=1e-12)
