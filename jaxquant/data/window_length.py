"""How long an input window should be, from the autocorrelation of the data.

The original system chose T = 500 with the rule "lags up to 81 still had
|r| > 0.1 in the autocorrelation of the PRICE, so T = 500 covers every lag with
significant correlation". That rule measures the wrong series: a price level is
(close to) a random walk, whose sample autocorrelation stays near 1 for many
lags and falls below 0.1 at a lag set mostly by the sample length n, not by any
memory of the market (simulated Gaussian random walks: median crossing lag
≈ 0.2 n, 10-90 % range 0.12 n - 0.31 n; ~400 lags for n = 2000 bars, the
whole max_lag = 1000 for any year of minute bars). So a "lag 81" says more
about how long the sample was than about the market. `suggest_window` still
reports it (for comparison with the original), but suggests T from the
autocorrelation of log returns, which is what a model can exploit.

Rule for the suggested T (see `suggest_window`):
  L = the last lag of the leading run of significant return autocorrelation
      (|r_k| > 1.96 / sqrt(n) for every k = 1..L);
  T = max(min_window, ceil(safety * L / round_to) * round_to), safety 2, round_to 10.
Only the leading run counts: with a 95 % band, 5 % of the lags of pure noise
lie outside it by chance, so "the last lag anywhere outside the band" would be
~max_lag on white noise.

CLI: python -m jaxquant.data.window_length DIR [--max-lag 1000] [--threshold 0.1]
prints one table per instrument of a shard directory.
"""

import math

from absl import flags
import numpy as np

from jaxquant import cli

# 97.5 % quantile of the standard normal: the two-sided 95 % band of a white-noise ACF.
Z_95 = 1.959963984540054


def autocorrelation(x, max_lag):
  """Sample autocorrelation r_0..r_max_lag of `x`, by FFT.

  The biased estimator (sum over the n - k overlapping pairs divided by n,
  as in statsmodels' acf), so |r_k| <= 1 and the white-noise band is
  ±1.96 / sqrt(n). Zero-padding to >= 2n makes the circular FFT correlation
  equal the linear one.

  Args:
    x: [n] series (NaN-free).
    max_lag: largest lag; clipped to n - 1.

  Returns:
    [min(max_lag, n - 1) + 1] float64, r_0 = 1 (all zeros for a constant series).
  """
  x = np.asarray(x, dtype=np.float64)
  n = x.shape[0]
  if n < 2:
    raise ValueError(f"need at least 2 values for an autocorrelation, got {n}")
  max_lag = min(int(max_lag), n - 1)
  x = x - x.mean()
  size = 1 << int(math.ceil(math.log2(2 * n)))
  f = np.fft.rfft(x, size)
  acov = np.fft.irfft(f * np.conj(f), size)[:max_lag + 1]
  if acov[0] <= 0:
    return np.zeros(max_lag + 1)
  return acov / acov[0]


def _leading_run(acf, bound):
  """Last lag k of the leading run |acf[1..k]| > bound (0 when lag 1 is inside).

  Example: acf = [1, .5, .3, .05, .4], bound .1 → lags 1, 2 exceed, lag 3 does
  not → 2 (lag 4 lies after the run and is not counted).
  """
  inside = np.abs(acf[1:]) <= bound
  return int(np.argmax(inside)) if inside.any() else len(acf) - 1


def _report(acf, threshold, band, min_significant):
  bound = max(threshold, band) if min_significant else threshold
  above = np.flatnonzero(np.abs(acf[1:]) > band) + 1
  return {
      "last_lag_above_threshold": _leading_run(acf, bound),
      "last_significant_lag": _leading_run(acf, band),
      # For the record: lags outside the band anywhere (≈ 5 % by chance on noise).
      "significant_lags": int(above.size),
      "max_lag": len(acf) - 1,
  }


def suggest_window(close, max_lag=1000, threshold=0.1, min_significant=True,
                   safety=2.0, round_to=10, min_window=10):
  """Autocorrelation summary of prices and log returns and a suggested window T.

  Args:
    close: [n] closes of one instrument (> 0).
    max_lag: largest lag examined (clipped to the series length - 1).
    threshold: |r| above which a lag counts for the "threshold" rule (the
      original used 0.1).
    min_significant: the threshold rule also requires the lag to be outside
      the 95 % band, so a short sample (band > threshold) cannot report noise.
    safety, round_to, min_window: T = max(min_window,
      ceil(safety * L / round_to) * round_to) with L the return series'
      last_significant_lag.

  Returns:
    {"n": bars, "band": 1.96 / sqrt(n of returns), "threshold": threshold,
     "price": report, "returns": report, "abs_returns": report,
     "suggested_window": T, "rule": text}
    where each report holds
      last_lag_above_threshold: last lag of the leading run with |r| > threshold,
      last_significant_lag: last lag of the leading run with |r| > band,
      significant_lags: count of lags 1..max_lag outside the band anywhere,
      max_lag.
    "abs_returns" (volatility clustering, which decays slowly) is
    informational; it does not enter the rule.
  """
  close = np.asarray(close, dtype=np.float64)
  if close.ndim != 1 or close.shape[0] < 3:
    raise ValueError(f"close must be 1-D with at least 3 bars, got shape {close.shape}")
  if not (np.isfinite(close).all() and (close > 0).all()):
    raise ValueError("close must be finite and > 0")
  if not max_lag >= 1:
    raise ValueError(f"max_lag must be >= 1, got {max_lag}")
  r = np.diff(np.log(close))
  band = Z_95 / math.sqrt(len(r))
  out = {"n": int(close.shape[0]), "band": band, "threshold": float(threshold)}
  for name, series in (("price", close), ("returns", r), ("abs_returns", np.abs(r))):
    out[name] = _report(autocorrelation(series, max_lag), threshold, band, min_significant)
  lag = out["returns"]["last_significant_lag"]
  out["suggested_window"] = int(max(min_window, math.ceil(safety * lag / round_to) * round_to))
  out["rule"] = (f"T = max({min_window}, ceil({safety:g} x last significant return lag "
                 f"{lag} / {round_to}) x {round_to})")
  return out


def format_table(name, s):
  """Markdown table of one instrument's `suggest_window` result."""
  lines = [f"### {name}: {s['n']:,} bars, band ±{s['band']:.4f}, threshold {s['threshold']:g}",
           "",
           "| series | last lag abs(r) > threshold | last lag outside band | lags outside band |",
           "|---|---:|---:|---:|"]
  for key in ("price", "returns", "abs_returns"):
    rep = s[key]
    lines.append(f"| {key} | {rep['last_lag_above_threshold']} | {rep['last_significant_lag']} "
                 f"| {rep['significant_lags']} / {rep['max_lag']} |")
  lines += ["", f"suggested T = {s['suggested_window']}  ({s['rule']})", ""]
  return "\n".join(lines)


def _define_flags():
  """Defined only when run as a script (no clashes with other modules' flags)."""
  flags.DEFINE_integer("max_lag", 1000, "Largest lag examined.")
  flags.DEFINE_float("threshold", 0.1, "|r| above which a lag counts for the threshold rule.")


def main(argv):
  """Prints one table per instrument of the shard directory argv[1]."""
  from jaxquant.data import shards  # Only the CLI reads shards.

  if len(argv) != 2:
    cli.fail(f"expected one shard directory (*.parquet), got {argv[1:]}", code=2)
  for name, _, bars in shards.load_dir(argv[1]):  # A ShardError exits 1 with its message.
    print(format_table(name, suggest_window(bars[:, 3], flags.FLAGS.max_lag,
                                            flags.FLAGS.threshold)))


if __name__ == "__main__":
  _define_flags()
  cli.run(main, distributed=False, positional=True, flag_error_code=2)
