"""Window-length suggestion from autocorrelations."""

import math
import subprocess
import sys

import numpy as np
import pytest

from jaxquant.data import synth, window_length


def _ar1_prices(n, phi, seed):
  """Prices whose log returns are a stationary AR(1) with coefficient phi."""
  rng = np.random.default_rng(seed)
  e = rng.standard_normal(n) * 1e-3
  r = np.empty(n)
  r[0] = e[0] / math.sqrt(1 - phi**2)
  for i in range(1, n):  # 1e5 steps: ~30 ms.
    r[i] = phi * r[i - 1] + e[i]
  return 100.0 * np.exp(np.cumsum(r))


def test_autocorrelation_matches_the_direct_sum():
  x = np.random.default_rng(0).standard_normal(300)
  acf = window_length.autocorrelation(x, 20)
  d = x - x.mean()
  direct = [np.dot(d[:len(d) - k], d[k:]) / np.dot(d, d) for k in range(21)]
  np.testing.assert_allclose(acf, direct, atol=1e-12)
  assert len(window_length.autocorrelation(x, 10_000)) == 300  # Clipped to n - 1.
  np.testing.assert_array_equal(window_length.autocorrelation(np.ones(10), 3), 0.0)


@pytest.mark.parametrize("phi", [0.5, 0.7])
def test_ar1_last_significant_lag_is_where_phi_k_meets_the_band(phi):
  n = 100_000
  expected = math.log(1.96 / math.sqrt(n)) / math.log(phi)  # phi^k = 1.96/sqrt(n): 7.3, 14.3.
  got = [window_length.suggest_window(_ar1_prices(n, phi, s), max_lag=300)
         ["returns"]["last_significant_lag"] for s in range(3)]
  # The sample ACF wanders by ~band around phi^k, so the crossing is near, not exact.
  assert abs(np.median(got) - expected) <= 0.35 * expected + 1, (got, expected)
  assert all(abs(g - expected) <= 0.7 * expected + 2 for g in got), (got, expected)


def test_suggested_window_follows_the_rule():
  s = window_length.suggest_window(_ar1_prices(100_000, 0.7, 0), max_lag=300)
  lag = s["returns"]["last_significant_lag"]
  assert s["suggested_window"] == max(10, math.ceil(2 * lag / 10) * 10)
  assert s["band"] == pytest.approx(1.96 / math.sqrt(100_000 - 1), rel=1e-3)
  # The threshold rule (0.1) stops earlier than the band rule: phi^k > 0.1 → k <= 6.
  assert s["returns"]["last_lag_above_threshold"] == 6


def test_white_noise_has_no_memory_but_its_price_does():
  rng = np.random.default_rng(1)
  close = 100.0 * np.exp(np.cumsum(rng.standard_normal(50_000) * 1e-3))
  s = window_length.suggest_window(close, max_lag=500)
  assert s["returns"]["last_significant_lag"] <= 2
  assert s["returns"]["last_lag_above_threshold"] == 0
  assert s["suggested_window"] <= 10
  # ~5 % of noise lags fall outside the 95 % band anywhere; only the leading run counts.
  assert 0 < s["returns"]["significant_lags"] < 0.1 * 500
  # The random-walk price "remembers" every examined lag: the original's rule says
  # more about the sample length than about the market.
  assert s["price"]["last_lag_above_threshold"] == 500


def test_min_significant_guards_short_samples():
  """On 59 returns the 95 % band is 0.25 > threshold 0.1: noise alone passes the bare
  threshold rule at lag 1 often (|r_1| > 0.1: P ~ 0.45), but with min_significant a
  short noise sample reports no lag, except the ~5 % of samples outside the band."""
  n_samples, strict_zero, loose_zero = 200, 0, 0
  for seed in range(n_samples):
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.standard_normal(60) * 1e-3))
    strict = window_length.suggest_window(close, max_lag=30)
    loose = window_length.suggest_window(close, max_lag=30, min_significant=False)
    assert strict["band"] > strict["threshold"]
    strict_zero += strict["returns"]["last_lag_above_threshold"] == 0
    loose_zero += loose["returns"]["last_lag_above_threshold"] == 0
  # Expected shares ~0.95 and ~0.56 (binomial SD over 200 samples <= 0.035): the bounds
  # sit > 3 SD from both, so ignoring the band (strict == loose) fails the first.
  assert strict_zero / n_samples >= 0.9, (strict_zero, loose_zero)
  assert loose_zero / n_samples <= 0.75, (strict_zero, loose_zero)


def test_bad_input():
  with pytest.raises(ValueError, match="> 0"):
    window_length.suggest_window(np.array([1.0, -1.0, 2.0, 3.0]))
  with pytest.raises(ValueError, match="at least 3"):
    window_length.suggest_window(np.array([1.0, 2.0]))


def test_cli_on_a_synthetic_market(tmp_path):
  synth.write_market(tmp_path, instruments=1, days=3, progress=False)
  out = subprocess.run([sys.executable, "-m", "jaxquant.data.window_length", str(tmp_path),
                        "--max-lag", "200"], capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert "### SYN." in out.stdout and "1,080 bars" in out.stdout
  for row in ("| price |", "| returns |", "| abs_returns |", "suggested T ="):
    assert row in out.stdout
  bad = subprocess.run([sys.executable, "-m", "jaxquant.data.window_length",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
  assert bad.returncode == 1 and "error" in bad.stderr and "Traceback" not in bad.stderr
