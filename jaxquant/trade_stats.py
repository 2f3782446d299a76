"""The figures of a trade table: win rate, P/L ratio, Sharpe with its interval, drawdown, DSR.

Pure numpy (and the standard library's normal distribution). Conventions, stated
beside every figure in report.md: trade returns are net returns on notional (one
contract per trade, P&L / (entry price × multiplier)) and add up, not compound;
a trade is booked on the trading day it exits; the daily series holds every
trading day of the split (0 on days without an exit), all instruments summed;
Sharpe = mean / std (ddof 1) of that daily series × √252, its interval a circular
block bootstrap over days.
"""

import math
import statistics

import numpy as np

from jaxquant.data import rolls

TRADING_DAYS = 252  # Annualisation: √252 for Sharpe and Sortino, × 252 for Calmar's return.
LEVEL = 0.95
_NORMAL = statistics.NormalDist()


def _ratio(a, b):
  return float(a) / float(b) if b else math.nan


def _win_loss(x):
  """(win rate, P/L ratio = mean win / mean |loss|, profit factor = sum wins / sum |losses|)."""
  wins, losses = x[x > 0], -x[x < 0]
  pl = (wins.mean() / losses.mean()) if wins.size and losses.size else math.nan
  pf = _ratio(wins.sum(), losses.sum()) if losses.size else math.nan
  return _ratio((x > 0).sum(), x.size), float(pl), pf


def sharpe(daily):
  """Annualised Sharpe ratio of a daily series: mean / std (ddof 1) × √252 (nan if flat)."""
  daily = np.asarray(daily, np.float64)
  if daily.size < 2:
    return math.nan
  sd = daily.std(ddof=1)
  return float(daily.mean() / sd * math.sqrt(TRADING_DAYS)) if sd > 0 else math.nan


def sortino(daily):
  """mean / downside deviation (root mean square of min(r, 0)) × √252."""
  daily = np.asarray(daily, np.float64)
  down = math.sqrt(float(np.mean(np.minimum(daily, 0.0) ** 2))) if daily.size else 0.0
  return float(daily.mean() / down * math.sqrt(TRADING_DAYS)) if down > 0 else math.nan


def drawdown(equity):
  """(max drawdown, drawdown series) of a cumulative series starting from 0."""
  eq = np.concatenate([[0.0], np.asarray(equity, np.float64)])
  dd = np.maximum.accumulate(eq) - eq
  return float(dd.max()), dd[1:]


def longest_underwater(equity):
  """The longest run of consecutive points below the running peak (start 0 included)."""
  _, dd = drawdown(equity)
  best = run = 0
  for under in dd > 0:
    run = run + 1 if under else 0
    best = max(best, run)
  return int(best)


def deflated_sharpe(daily, trials, trial_sharpes=None):
  """Deflated Sharpe Ratio (Bailey & López de Prado, 2014) of a daily series.

  DSR = Φ((SR − SR0) √(T − 1) / √(1 − γ3 SR + (γ4 − 1) / 4 · SR²)), all per day (not
  annualised): SR the series' Sharpe (std ddof 1), γ3 / γ4 its skewness and (non-excess)
  kurtosis, T its length, and SR0 the expected maximum Sharpe of N = `trials` trials,
  σ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e))), γ Euler's constant. σ is the std of the
  trials' Sharpes when given, else that of N no-skill trials of this length, 1/√(T − 1).
  N = 1 gives SR0 = 0 (the Probabilistic Sharpe Ratio).

  Returns:
    (DSR, SR0 annualised); nan where T < 3, the series is flat or the variance term <= 0.
  """
  r = np.asarray(daily, np.float64)
  n = r.size
  if n < 3 or not r.std() > 0:
    return math.nan, math.nan
  sr = r.mean() / r.std(ddof=1)
  dev = r - r.mean()
  m2 = np.mean(dev ** 2)
  skew, kurt = np.mean(dev ** 3) / m2 ** 1.5, np.mean(dev ** 4) / m2 ** 2
  if trial_sharpes is not None and len(trial_sharpes) > 1:
    sigma = float(np.std(np.asarray(trial_sharpes, np.float64), ddof=1))
  else:
    sigma = 1.0 / math.sqrt(n - 1)
  trials = float(trials)
  sr0 = 0.0 if trials <= 1 or sigma == 0 else sigma * (
      (1 - np.euler_gamma) * _NORMAL.inv_cdf(1 - 1 / trials)
      + np.euler_gamma * _NORMAL.inv_cdf(1 - 1 / (trials * math.e)))
  var = 1 - skew * sr + (kurt - 1) / 4 * sr ** 2
  if not var > 0:
    return math.nan, sr0 * math.sqrt(TRADING_DAYS)
  return float(_NORMAL.cdf((sr - sr0) * math.sqrt(n - 1) / math.sqrt(var))), \
      float(sr0 * math.sqrt(TRADING_DAYS))


def _resamples(n, n_boot, seed):
  """Circular block bootstrap indices over n days (block ≈ n^(1/3))."""
  rng = np.random.default_rng(seed)
  block = max(1, min(n, round(n ** (1 / 3))))
  offsets = np.arange(block)
  for _ in range(n_boot):
    starts = rng.integers(0, n, size=-(-n // block))
    yield ((starts[:, None] + offsets[None, :]).ravel()[:n]) % n


def _interval(values, level=LEVEL):
  v = np.asarray([x for x in values if not np.isnan(x)])
  if v.size == 0:
    return [math.nan, math.nan]
  # Order statistics (no interpolation): a resample's Sharpe may be ±inf.
  q = np.quantile(v, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
  return [float(q[0]), float(q[1])]


def daily_table(trades, days):
  """Per trading day (`days`, ascending keys of rolls.trading_day): net and gross return
  sums and trade counts of the trades exiting that day. Exit days missing from `days`
  are added."""
  d = rolls.trading_day(trades["exit_time"])
  days = np.union1d(np.asarray(days, np.int64), d)
  i = np.searchsorted(days, d)
  out = {"days": days}
  for key, col in (("net", "net_return"), ("gross", "gross_return")):
    out[key] = np.bincount(i, weights=trades[col], minlength=days.size)
  out["count"] = np.bincount(i, minlength=days.size).astype(np.float64)
  return out


def figures(trades, days, windows, names, n_boot=500, seed=0, trials=1):
  """Every figure of report.json's `<split>.backtest` from a trade table.

  Args:
    trades: trades.simulate / trades.concat table.
    days: trading-day keys (rolls.trading_day) of the split's windows.
    windows: the split's window count (the bars a position could be held on).
    names: instrument names, indexed by trades["instrument"].
    n_boot: bootstrap resamples over days (0: no intervals); seed: their seed.
    trials: N of the Deflated Sharpe Ratio (eval.trials).

  Returns:
    A JSON-ready dict (returns are fractions of notional summed over trades).
  """
  net, gross, cost = trades["net_return"], trades["gross_return"], trades["cost_return"]
  n = int(net.size)
  daily = daily_table(trades, days)
  nd = int(daily["days"].size)
  win, pl, pf = _win_loss(net)
  max_dd, _ = drawdown(np.cumsum(net))
  sr = sharpe(daily["net"])
  ann = float(daily["net"].mean() * TRADING_DAYS) if nd else math.nan
  dsr, sr0 = deflated_sharpe(daily["net"], trials)
  out = {
      "trades": n, "long_trades": int((trades["side"] > 0).sum()),
      "short_trades": int((trades["side"] < 0).sum()),
      "exit_reasons": {r: int((trades["reason"] == k).sum()) for k, r in
                       enumerate(("time", "take_profit", "stop_loss"))},
      "win_rate": win, "profit_loss_ratio": pl, "profit_factor": pf,
      "expectancy": float(net.mean()) if n else math.nan,
      "gross_expectancy": float(gross.mean()) if n else math.nan,
      "gross_return": float(gross.sum()), "costs": float(cost.sum()),
      "net_return": float(net.sum()), "gross_pnl": float(trades["gross_pnl"].sum()),
      "costs_pnl": float(trades["cost_pnl"].sum()), "net_pnl": float(trades["net_pnl"].sum()),
      "sharpe": sr, "sortino": sortino(daily["net"]), "max_drawdown": max_dd,
      "max_drawdown_days": longest_underwater(np.cumsum(daily["net"])),
      "calmar": ann / max_dd if max_dd > 0 else math.nan,
      "annual_return": ann, "days": nd,
      "exposure": _ratio((trades["exit_bar"] - trades["signal_bar"]).sum(), windows),
      "turnover": _ratio(2 * n, nd),
      "dsr": dsr, "dsr_trials": int(trials), "dsr_benchmark_sharpe": sr0,
  }
  out["sharpe_ci"], out["gross_expectancy_ci"] = _bootstrap(daily, n_boot, seed)
  out["per_instrument"] = {}
  for i in np.unique(trades["instrument"]):
    m = trades["instrument"] == i
    w, p, f = _win_loss(net[m])
    out["per_instrument"][str(names[int(i)])] = {
        "trades": int(m.sum()), "win_rate": w, "profit_loss_ratio": p, "profit_factor": f,
        "expectancy": float(net[m].mean()), "gross_return": float(gross[m].sum()),
        "costs": float(cost[m].sum()), "net_return": float(net[m].sum()),
        "net_pnl": float(trades["net_pnl"][m].sum())}
  return out


def _bootstrap(daily, n_boot, seed):
  """95 % intervals of the Sharpe and the gross expectancy, resampling blocks of days."""
  nd = daily["days"].size
  if n_boot <= 0 or nd < 2:
    return [math.nan, math.nan], [math.nan, math.nan]
  srs, exps = [], []
  for idx in _resamples(nd, n_boot, seed):
    r = daily["net"][idx]
    sr = sharpe(r)
    if not np.isfinite(sr):  # A flat resample (e.g. only days without trades) is kept:
      m = r.mean()           # dropping it would drop exactly the no-edge draws.
      sr = 0.0 if m == 0 else math.copysign(math.inf, m)
    srs.append(sr)
    c = daily["count"][idx].sum()
    exps.append(daily["gross"][idx].sum() / c if c else math.nan)
  return _interval(srs), _interval(exps)
