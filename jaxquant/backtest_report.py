"""What the backtest shows: trades.csv, equity.png, the report.md section, a console line."""

import math

import numpy as np

from jaxquant import io_utils
from jaxquant import plots
from jaxquant import trade_stats
from jaxquant import trades as trades_lib

CONVENTIONS = (
    "one contract per trade, one position per instrument (signals while a trade is open "
    "are ignored); a signal at bar t's close fills at bar t+1's open (backtest.fill="
    "'next_open') or at bar t's close ('close'); exit at bar t+horizon's close, or for "
    "triple-barrier labels at the first barrier touched from bar t+1 on, at the barrier "
    "price (the trade's stop-loss when one bar touches both); costs per side: commission "
    "(per contract or × turnover) + slippage ticks × tick size × multiplier; returns are "
    "P&L / (entry price × multiplier), summed over trades (not compounded); Sharpe and "
    "Sortino from the daily net return (every trading day of the split, trades booked on "
    "their exit day, all instruments summed) × √252; 95% intervals by circular block "
    "bootstrap over days; max drawdown on the trade-by-trade net equity, its days the "
    "longest time under water of the daily equity; Calmar = 252 × mean daily net / max "
    "drawdown; exposure = share of the split's bars in a position; turnover = sides traded "
    "per trading day")

FEW_TRADES, FEW_DAYS = 30, 20  # Below either, a split's risk figures are flagged as noise.

_CSV_COLUMNS = ("split", "instrument", "side", "entry_time", "entry_price", "exit_time",
                "exit_price", "exit_reason", "bars_held", "gross_pnl", "costs", "net_pnl",
                "gross_return", "cost_return", "net_return")


def _iso(ns):
  return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def write_trades_csv(path, tables, names):
  """trades.csv (atomically): one row per trade of each split's table.

  Args:
    tables: {split: trade table}; names: {split: instrument names}.
  """
  lines = [",".join(_CSV_COLUMNS)]
  for split, t in tables.items():
    for j in range(len(t["side"])):
      lines.append(",".join([
          split, str(names[split][int(t["instrument"][j])]), trades_lib.SIDES[int(t["side"][j])],
          _iso(t["entry_time"][j]), f"{t['entry_price'][j]:.10g}", _iso(t["exit_time"][j]),
          f"{t['exit_price'][j]:.10g}", trades_lib.EXIT_REASONS[int(t["reason"][j])],
          str(int(t["exit_bar"][j] - t["signal_bar"][j])), f"{t['gross_pnl'][j]:.10g}",
          f"{t['cost_pnl'][j]:.10g}", f"{t['net_pnl'][j]:.10g}",
          f"{t['gross_return'][j]:.8g}", f"{t['cost_return'][j]:.8g}",
          f"{t['net_return'][j]:.8g}"]))
  io_utils.atomic_write_text(path, "\n".join(lines) + "\n")
  return path


def plot_equity(table, names, path):
  """equity.png: net and gross equity of all instruments (and the net of each), the
  drawdown of the net underneath; cumulative returns on notional, by exit time."""
  fig, ((top,), (bottom,)) = plots.new_figure(1, 2, figsize=(8, 5), sharex=True,
                                              height_ratios=(3, 1))
  when = np.asarray(table["exit_time"], np.int64).astype("datetime64[ns]")
  if when.size:
    net = np.cumsum(table["net_return"]) * 100
    top.plot(when, np.cumsum(table["gross_return"]) * 100, color="0.5", lw=1.2,
             label="gross, all")
    top.plot(when, net, color="C0", lw=1.8, label="net, all")
    for k, i in enumerate(np.unique(table["instrument"])):
      m = table["instrument"] == i
      top.plot(when[m], np.cumsum(table["net_return"][m]) * 100, lw=0.8, alpha=0.8,
               color=f"C{k + 1}", label=f"net, {names[int(i)]}")
    _, dd = trade_stats.drawdown(net / 100)
    bottom.fill_between(when, -dd * 100, 0, color="C3", alpha=0.5, step="post")
    top.legend(fontsize=7, loc="best")
  else:
    top.text(0.5, 0.5, "no trades", ha="center", va="center", transform=top.transAxes)
  top.set_ylabel("cumulative return (%)")
  top.set_title("Test equity (one contract per trade, returns on notional)")
  bottom.set_ylabel("drawdown (%)")
  bottom.set_xlabel("exit time")
  return plots.save_png(fig, path)


def _ok(x):
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
      and math.isfinite(float(x))


def _f(x, spec=".2f"):
  return format(float(x), spec) if _ok(x) else "—"


def _pct(x, spec="+.3f"):
  return f"{100 * float(x):{spec}}%" if _ok(x) else "—"


def _ci(pair, fmt):
  inf = lambda v: fmt(v) if _ok(v) else ("+∞" if v > 0 else "−∞")  # A flat resample's Sharpe.
  return (f"[{inf(pair[0])}, {inf(pair[1])}]" if pair and all(v == v for v in pair)
          else "—")


def console_line(title, b):
  """One line of a split's backtest figures (or why there is none)."""
  if b.get("skipped"):
    return f"   {title}: no backtest ({b['skipped']})"
  return (f"   {title}: {b['trades']:,} trades ({b['long_trades']} long, {b['short_trades']} "
          f"short), win rate {_pct(b['win_rate'], '.1f')}, P/L ratio "
          f"{_f(b['profit_loss_ratio'])}, net expectancy {_pct(b['expectancy'])}, costs "
          f"{_pct(b['costs'], '.2f')} in all, net Sharpe {_f(b['sharpe'])} "
          f"{_ci(b['sharpe_ci'], _f)} (daily, ×√252), DSR {_f(b['dsr'], '.3f')} "
          f"({b['dsr_trials']} trial{'s' if b['dsr_trials'] != 1 else ''})")


_ROWS = (("trades", "trades", lambda b: f"{b['trades']:,} ({b['long_trades']} long / "
          f"{b['short_trades']} short)"),
         ("win_rate", "win rate (net > 0)", lambda b: _pct(b["win_rate"], ".1f")),
         ("profit_loss_ratio", "P/L ratio (mean win / mean loss)",
          lambda b: _f(b["profit_loss_ratio"])),
         ("profit_factor", "profit factor", lambda b: _f(b["profit_factor"])),
         ("expectancy", "net expectancy per trade", lambda b: _pct(b["expectancy"])),
         ("gross_expectancy", "gross expectancy per trade (95% CI)",
          lambda b: f"{_pct(b['gross_expectancy'])} {_ci(b['gross_expectancy_ci'], _pct)}"),
         ("gross_return", "gross return (sum)", lambda b: _pct(b["gross_return"], "+.2f")),
         ("costs", "costs (sum)", lambda b: _pct(b["costs"], ".2f")),
         ("net_return", "net return (sum)", lambda b: _pct(b["net_return"], "+.2f")),
         ("sharpe", "net Sharpe, daily ×√252 (95% CI; days)",
          lambda b: f"{_f(b['sharpe'])} {_ci(b['sharpe_ci'], _f)} ({b['days']} days of "
          f"~{_f(b.get('bars_per_day'), '.0f')} bars)"),
         ("dsr", "Deflated Sharpe Ratio (trials)",
          lambda b: f"{_f(b['dsr'], '.3f')} ({b['dsr_trials']})"),
         ("sortino", "Sortino", lambda b: _f(b["sortino"])),
         ("max_drawdown", "max drawdown (days under water)",
          lambda b: f"{_pct(b['max_drawdown'], '.2f')} ({b['max_drawdown_days']})"),
         ("calmar", "Calmar", lambda b: _f(b["calmar"])),
         ("exposure", "exposure", lambda b: _pct(b["exposure"], ".1f")),
         ("turnover", "turnover (sides / day)", lambda b: _f(b["turnover"], ".1f")))


def markdown(summary, figure_prefix=""):
  """The report.md section of `<split>.backtest` (empty without one)."""
  splits = [s for s in ("val", "test") if (summary.get(s) or {}).get("backtest")]
  if not splits:
    return []
  lines = ["## Backtest after costs", ""]
  bts = {s: summary[s]["backtest"] for s in splits}
  skipped = next((b["skipped"] for b in bts.values() if b.get("skipped")), None)
  if skipped:
    return lines + [f"No backtest: {skipped}.", ""]
  obj = summary.get("threshold_objective") or {}
  lines += [f"Threshold {_f(bts[splits[-1]].get('threshold'), '.4f')} "
            f"(eval.threshold_objective={obj.get('objective', 'f1')!r}, chosen on val"
            + (f"; the checkpoint's F1 threshold is {_f(obj['checkpoint_threshold'], '.4f')}"
               if obj.get("objective", "f1") != "f1" else "") + ").", ""]
  few = [s for s in splits if bts[s]["trades"] < FEW_TRADES or bts[s]["days"] < FEW_DAYS]
  if few:
    lines += [f"> **{' and '.join(few)}: fewer than {FEW_TRADES} trades or {FEW_DAYS} trading "
              "days — the Sharpe, its interval and the DSR say little.**", ""]
  rows = [[label] + [fmt(bts[s]) for s in splits] for key, label, fmt in _ROWS]
  lines += ["| figure | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  test = bts.get("test") or {}
  per = test.get("per_instrument") or {}
  if per:
    lines += ["", "Test, per instrument:", "",
              "| instrument | trades | win rate | P/L ratio | net expectancy | net return |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {p['trades']:,} | {_pct(p['win_rate'], '.1f')} | "
              f"{_f(p['profit_loss_ratio'])} | {_pct(p['expectancy'])} | "
              f"{_pct(p['net_return'], '+.2f')} |" for n, p in per.items()]
  lines += ["", f"Conventions: {CONVENTIONS}. Contract facts and costs from: "
            + "; ".join(f"{n} " + ", ".join(f"{k} {v}" for k, v in f.items())
                        for n, f in (test.get("costs_from") or {}).items()) + ".", ""]
  lines += ["The Deflated Sharpe Ratio (Bailey & López de Prado, 2014) is the probability "
            "that the true Sharpe is above the best of eval.trials no-skill trials' "
            "expected maximum (benchmark Sharpe "
            f"{_f(test.get('dsr_benchmark_sharpe'))} annualised); trades.csv lists every "
            "trade.", ""]
  if summary.get("pictures") is False:  # A population member: drawn on request.
    return lines
  return lines + [f"![Test equity]({figure_prefix}equity.png)", ""]
