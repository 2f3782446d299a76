"""Tests for jaxquant.trading (the threshold sweep with forward returns)."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import signal_data
from jaxquant import trading


def assert_close(a, b, tol=1e-12):
  if isinstance(b, float) and math.isnan(b):
    assert math.isnan(a)
  else:
    assert a == pytest.approx(b, rel=tol, abs=tol)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_trading_sweep_matches_a_loop(seed, ties):
  y, s, r = signal_data(seed, ties=ties)
  rows = trading.trading_sweep(y, s, r)
  thresholds = [row["threshold"] for row in rows]
  assert thresholds == sorted(set(thresholds))
  assert len(rows) >= 19
  for row in rows:
    t = row["threshold"]
    sig = s >= t
    pred = sig.astype(int)
    assert row["signals"] == sig.sum()
    assert_close(row["signal_share"], sig.mean())
    p, rc, f1, _ = skm.precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    assert_close(row["precision"], p)
    assert_close(row["recall"], rc)
    assert_close(row["f1"], f1)
    sub = r[sig]
    if sub.size == 0:
      for k in ("mean_return", "median_return", "profit_loss_ratio", "hit_rate_positive_return"):
        assert math.isnan(row[k])
      continue
    assert_close(row["mean_return"], sub.mean(), 1e-9)
    assert_close(row["expected_return"], sub.mean(), 1e-9)
    assert_close(row["median_return"], float(np.median(sub)))
    assert_close(row["hit_rate_positive_return"], np.mean(sub > 0))
    wins, losses = sub[sub > 0], sub[sub < 0]
    want = wins.mean() / np.abs(losses).mean() if wins.size and losses.size else math.nan
    assert_close(row["profit_loss_ratio"], want, 1e-9)
    assert_close(row["precision_lift"], row["precision"] / y.mean())


def test_trading_sweep_default_includes_signal_share_quantiles():
  y, s, r = signal_data(2, n=5000)
  s = s * 0.3  # A model far below 0.5: the fixed grid alone would signal almost nothing.
  rows = trading.trading_sweep(y, s, r)
  shares = {round(row["signal_share"], 4) for row in rows}
  for want in trading.SIGNAL_SHARES:
    assert want in shares
  assert set(trading.SWEEP_GRID.tolist()) <= {row["threshold"] for row in rows}


def test_trading_sweep_given_thresholds_keep_order_and_empty_signals():
  y, s, r = signal_data(3)
  rows = trading.trading_sweep(y, s, r, thresholds=[0.9, 2.0, 0.1])
  assert [row["threshold"] for row in rows] == [0.9, 2.0, 0.1]
  empty = rows[1]
  assert empty["signals"] == 0 and empty["precision"] == 0.0
  assert math.isnan(empty["mean_return"]) and math.isnan(empty["median_return"])


def test_trading_sweep_validates_returns():
  y, s, r = signal_data(4, n=100)
  with pytest.raises(ValueError, match="shape"):
    trading.trading_sweep(y, s, r[:-1])
  r[3] = np.nan
  with pytest.raises(ValueError, match="nan"):
    trading.trading_sweep(y, s, r)
