"""Signals → trades: the entries, exits and costs of a one-position-per-instrument book.

Pure numpy. The conventions (docs/evaluation.md, "Backtest"):
- a signal at bar t's close enters at bar t+1's open (fill "next_open") or at bar t's
  close (fill "close");
- the trade exits at bar t+h's close (h = data.horizon: the bar the label reads), or
  for triple-barrier labels at the first bar of t+1 .. t+h touching a barrier, at the
  barrier price; the barriers are the label's (from close_t, to within the label's
  rounding tolerance), and a bar touching both exits at the trade's stop-loss (the
  label's rule: for a short the upper barrier is its stop);
- one position per instrument: signals before the open trade's exit bar are ignored; a
  signal at the exit bar itself may open the next trade;
- costs per side: commission (per contract, or a rate of the price × multiplier) plus
  slippage_ticks × tick_size × multiplier; the fill prices stay the bars' own.
  P&L per contract = side × (exit − entry) × multiplier; a return is P&L / notional,
  notional = entry price × multiplier.
"""

import dataclasses

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FILLS = ("next_open", "close")
COMMISSION_KINDS = ("per_contract", "per_turnover")
EXIT_REASONS = ("time", "take_profit", "stop_loss")  # Codes 0, 1, 2 in `reason`.
SIDES = {1: "long", -1: "short"}

_OPEN, _HIGH, _LOW, _CLOSE = 0, 1, 2, 3  # shards.BAR_COLUMNS
# The touch tolerance of labels.triple_barrier_labels (a bar trading at the barrier
# touches it despite float rounding of the barrier price).
_REL_TOL = 1e-10
_TICK_TOL = 1e-6
_CHUNK_ELEMENTS = 1 << 21  # Booleans per chunk of the barrier scan.


@dataclasses.dataclass(frozen=True)
class ExitRule:
  """How a trade ends: after `horizon` bars, or at the triple barrier (kind "barrier")."""
  horizon: int
  kind: str = "horizon"
  take_profit: float = 0.0
  stop_loss: float = 0.0
  units: str = "return"
  tick_size: float = None


@dataclasses.dataclass(frozen=True)
class Costs:
  """One instrument's contract facts and trading costs (per side)."""
  multiplier: float = 1.0
  commission: float = 0.0
  commission_kind: str = "per_contract"
  slippage_ticks: float = 0.0
  tick_size: float = 1.0

  def per_side(self, price):
    """Currency cost of one side of one contract filled at `price`."""
    price = np.asarray(price, np.float64)
    fee = (np.full(price.shape, self.commission) if self.commission_kind == "per_contract"
           else self.commission * price * self.multiplier)
    return fee + self.slippage_ticks * self.tick_size * self.multiplier

  def scaled(self, factor):
    """The same contract with commission and slippage times `factor`."""
    return dataclasses.replace(self, commission=self.commission * factor,
                               slippage_ticks=self.slippage_ticks * factor)


def exit_rule(data_config, tick_size=None):
  """The ExitRule of a run's labels (config.data; `tick_size`: the instrument's, for
  barrier_units "ticks", default data.tick_size)."""
  if data_config.label_kind != "triple_barrier":
    return ExitRule(int(data_config.horizon))
  return ExitRule(int(data_config.horizon), "barrier", float(data_config.take_profit),
                  float(data_config.stop_loss), data_config.barrier_units,
                  float(tick_size if tick_size is not None else data_config.tick_size))


def _levels(close, rule):
  """(upper, lower) barrier prices from the entry bar's close, as the label sets them."""
  if rule.units == "return":
    return close * (1.0 + rule.take_profit), close * (1.0 - rule.stop_loss)
  if rule.units == "price":
    return close + rule.take_profit, close - rule.stop_loss
  return close + rule.take_profit * rule.tick_size, close - rule.stop_loss * rule.tick_size


def _tolerance(level, rule):
  tol = _REL_TOL * np.abs(level)
  return np.maximum(tol, _TICK_TOL * rule.tick_size) if rule.units == "ticks" else tol


def _first(hit, none):
  """Index of the first True of each row; `none` where a row has none."""
  return np.where(hit.any(axis=1), hit.argmax(axis=1), none)


def exits(bars, t, side, rule):
  """Where the trades of signals at bars `t` end.

  Args:
    bars: [n, >=4] bars of one instrument (open, high, low, close, ...).
    t: [m] signal bars, each with t + horizon < n.
    side: [m] +1 long, -1 short.
    rule: ExitRule.

  Returns:
    (exit_bar [m] int64, exit_price [m] float64, reason [m] int8: EXIT_REASONS codes).
  """
  t = np.asarray(t, np.int64)
  side = np.asarray(side, np.int64)
  h = rule.horizon
  close = bars[:, _CLOSE]
  exit_bar, price = t + h, close[t + h].copy()
  reason = np.zeros(t.size, np.int8)
  if rule.kind != "barrier" or t.size == 0:
    return exit_bar, price, reason
  fut_high = sliding_window_view(bars[1:, _HIGH], h)  # Row t: bars t+1 .. t+h.
  fut_low = sliding_window_view(bars[1:, _LOW], h)
  chunk = max(1, _CHUNK_ELEMENTS // h)
  for a in range(0, t.size, chunk):
    rows, s = t[a:a + chunk], side[a:a + chunk]
    upper, lower = _levels(close[rows], rule)
    k_up = _first(fut_high[rows] >= (upper - _tolerance(upper, rule))[:, None], h)
    k_dn = _first(fut_low[rows] <= (lower + _tolerance(lower, rule))[:, None], h)
    # The stop-loss is the lower barrier of a long, the upper one of a short; it wins ties.
    k_stop, k_take = np.where(s > 0, k_dn, k_up), np.where(s > 0, k_up, k_dn)
    stop = (k_stop <= k_take) & (k_stop < h)
    take = (k_take < k_stop)
    stop_px, take_px = np.where(s > 0, lower, upper), np.where(s > 0, upper, lower)
    sl = slice(a, a + rows.size)
    exit_bar[sl] = np.where(stop, rows + k_stop + 1, np.where(take, rows + k_take + 1,
                                                               exit_bar[sl]))
    price[sl] = np.where(stop, stop_px, np.where(take, take_px, price[sl]))
    reason[sl] = np.where(stop, 2, np.where(take, 1, 0))
  return exit_bar, price, reason


def select(signal_bars, exit_bars):
  """Indices of the signals that trade: the first, then the first at or after its exit
  bar, and so on (one position at a time).

  Args:
    signal_bars: [m] ascending signal bars; exit_bars: [m] each signal's exit bar.
  """
  taken, i, m = [], 0, len(signal_bars)
  while i < m:
    taken.append(i)
    i = max(i + 1, int(np.searchsorted(signal_bars, exit_bars[i], side="left")))
  return np.asarray(taken, np.int64)


_COLUMNS = ("instrument", "side", "signal_bar", "entry_bar", "exit_bar", "entry_time",
            "exit_time", "entry_price", "exit_price", "reason", "gross_pnl", "cost_pnl",
            "net_pnl", "notional", "gross_return", "cost_return", "net_return")


def empty_trades():
  """A trade table with no rows."""
  return {k: np.zeros(0, np.float64 if k.endswith(("price", "pnl", "notional", "return"))
                      else np.int64) for k in _COLUMNS}


def simulate(bars, timestamps, signal_bars, sides, rule, costs, fill="next_open",
             instrument=0, precomputed=None):
  """The trades of one instrument's signals.

  Args:
    bars: [n, >=4] bars; timestamps: [n] int64 ns.
    signal_bars: [m] bars whose close signals (ascending, each with t + horizon < n).
    sides: [m] +1 long / -1 short.
    rule: ExitRule; costs: Costs; fill: "next_open" or "close".
    instrument: the instrument index written in the table.
    precomputed: exits(bars, signal_bars, sides, rule) when already known.

  Returns:
    The trade table: {column: [trades] array} (columns of empty_trades), in time order.
  """
  if fill not in FILLS:
    raise ValueError(f"backtest.fill must be one of {FILLS}, got {fill!r}")
  t = np.asarray(signal_bars, np.int64)
  side = np.asarray(sides, np.int64)
  if t.size == 0:
    return empty_trades()
  exit_bar, exit_price, reason = precomputed or exits(bars, t, side, rule)
  k = select(t, exit_bar)
  t, side, exit_bar, exit_price, reason = t[k], side[k], exit_bar[k], exit_price[k], reason[k]
  entry_bar = t + 1 if fill == "next_open" else t
  entry_price = bars[entry_bar, _OPEN if fill == "next_open" else _CLOSE].astype(np.float64)
  gross = side * (exit_price - entry_price) * costs.multiplier
  cost = costs.per_side(entry_price) + costs.per_side(exit_price)
  notional = entry_price * costs.multiplier
  ts = np.asarray(timestamps, np.int64)
  return {"instrument": np.full(t.size, instrument, np.int64), "side": side, "signal_bar": t,
          "entry_bar": entry_bar, "exit_bar": exit_bar, "entry_time": ts[entry_bar],
          "exit_time": ts[exit_bar], "entry_price": entry_price, "exit_price": exit_price,
          "reason": reason.astype(np.int64), "gross_pnl": gross, "cost_pnl": cost,
          "net_pnl": gross - cost, "notional": notional, "gross_return": gross / notional,
          "cost_return": cost / notional, "net_return": (gross - cost) / notional}


def concat(tables):
  """One trade table of several (e.g. per instrument), ordered by exit time."""
  tables = [x for x in tables if len(x["side"])]
  if not tables:
    return empty_trades()
  out = {k: np.concatenate([x[k] for x in tables]) for k in _COLUMNS}
  order = np.lexsort((out["instrument"], out["exit_time"]))
  return {k: v[order] for k, v in out.items()}


def sides_from_probs(probs, threshold):
  """+1 / -1 / 0 per window from class probabilities [n, K] at `threshold`.

  Two classes: long where the signal class's (the last) probability >= threshold.
  Three: long where p_up >= threshold and p_up >= p_down, short where p_down >=
  threshold and p_down > p_up (down = class 0: the down move, or the stop-loss
  barrier first).
  """
  p = np.asarray(probs, np.float64)
  up = p[:, -1]
  if p.shape[1] < 3:
    return (up >= threshold).astype(np.int64)
  down = p[:, 0]
  return np.where((up >= threshold) & (up >= down), 1,
                  np.where((down >= threshold) & (down > up), -1, 0)).astype(np.int64)
