"""jaxquant.trades against an independent backtester, backtesting.py (kernc), with matched
conventions: the same trade list (entry / exit bars and prices) and the same net P&L to
1e-9 relative, for long-only and long/short, fixed-horizon and barrier exits, with and
without costs.

How backtesting.py is made to follow our conventions (its own defaults differ):
- fill "close": `trade_on_close=True`, market orders (filled at the signal bar's close);
- fill "next_open" (fixed horizon): `trade_on_close=True` with the entry as a stop order
  at an unreachable-in-the-wrong-direction level (a buy stop at 1e-9, a sell stop at
  1e12): it triggers at once and fills at the next bar's open, while the time-limit exit
  (`position.close()` at bar t+h) fills at that bar's close;
- barriers: the order's `sl` / `tp` at the label's barrier prices (from close_t);
  backtesting.py checks them from the entry bar's successor on, SL first when one bar
  touches both (our stop-loss-first rule, for shorts the upper barrier); the time limit
  cancels them and closes at bar t+h's close;
- costs: its `commission` callable charged on entry and exit, returning our per-side
  commission plus slippage ticks × tick size for the units traded; size = multiplier units
  (one contract), cash far above any need.
Not expressible in backtesting.py: barrier exits with fill "next_open" (a stop-order entry
defers a same-bar SL/TP to the next bar), so barriers are checked with fill "close".
The synthetic market opens every bar at the previous close, so no bar gaps through a
barrier (backtesting.py would fill a gap at the open, the label at the barrier).
"""

import warnings

import numpy as np
import pytest

from jaxquant import trades as T
from jaxquant.data import synth

backtesting = pytest.importorskip("backtesting")
pd = pytest.importorskip("pandas")


def _market(seed, days=2):
  (_, ts, bars), = synth.generate_market(instruments=1, days=days, signal=1.0, seed=seed)
  return ts, bars


def _signals(n, h, seed, both_sides, p=0.08):
  rng = np.random.default_rng(seed)
  t = np.nonzero(rng.random(n) < p)[0]
  t = t[t + h < n - 2]  # Every trade closes before the data ends (backtesting.py drops open ones).
  side = rng.choice([-1, 1], t.size) if both_sides else np.ones(t.size, np.int64)
  return t, side


def _reference(ts, bars, t, side, rule, costs, fill):
  """backtesting.py's trades: (entry bar, exit bar, entry price, exit price, size, PnL)."""
  n = len(ts)
  df = pd.DataFrame({"Open": bars[:, 0], "High": bars[:, 1], "Low": bars[:, 2],
                     "Close": bars[:, 3]}, index=pd.to_datetime(ts))
  sig = np.zeros(n, np.int64)
  sig[t] = side
  h, units = rule.horizon, int(costs.multiplier)

  def commission(size, price):  # Per side, for |size| units = |size| / multiplier contracts.
    contracts = abs(size) / costs.multiplier
    return float(costs.per_side(price)) * contracts

  class Signals(backtesting.Strategy):
    def init(self):
      self.open_t = None

    def next(self):
      i = len(self.data) - 1
      if self.open_t is not None and not self.trades and i > self.open_t + (fill != "close"):
        self.open_t = None  # Closed by a barrier (at this bar or before).
      if self.open_t is not None and i == self.open_t + h:
        for trade in self.trades:
          trade.sl, trade.tp = None, None
        self.position.close()
        self.open_t = None
      if self.open_t is None and sig[i]:
        kw = {}
        if rule.kind == "barrier":
          up, dn = bars[i, 3] * (1 + rule.take_profit), bars[i, 3] * (1 - rule.stop_loss)
          kw = {"sl": dn, "tp": up} if sig[i] > 0 else {"sl": up, "tp": dn}
        if fill == "next_open":
          kw["stop"] = 1e-9 if sig[i] > 0 else 1e12
        (self.buy if sig[i] > 0 else self.sell)(size=units, **kw)
        self.open_t = i

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    bt = backtesting.Backtest(df, Signals, cash=1e12, commission=commission,
                              trade_on_close=True, finalize_trades=False)
    stats = bt.run()
  tr = stats._trades
  return (tr["EntryBar"].to_numpy(), tr["ExitBar"].to_numpy(), tr["EntryPrice"].to_numpy(),
          tr["ExitPrice"].to_numpy(), np.sign(tr["Size"].to_numpy()), tr["PnL"].to_numpy())


CASES = [
    # (fill, exit kind, both sides, with costs)
    ("next_open", "horizon", False, False),
    ("next_open", "horizon", True, True),
    ("close", "horizon", False, True),
    ("close", "horizon", True, False),
    ("close", "barrier", False, False),
    ("close", "barrier", False, True),
    ("close", "barrier", True, True),
]


@pytest.mark.parametrize("fill,kind,both,costly", CASES)
def test_trades_match_backtesting_py(fill, kind, both, costly):
  seed = CASES.index((fill, kind, both, costly))
  ts, bars = _market(seed)
  rule = (T.ExitRule(15, "barrier", 0.003, 0.002, "return") if kind == "barrier"
          else T.ExitRule(15))
  costs = (T.Costs(multiplier=10.0, commission=2.5 if both else 0.0002,
                   commission_kind="per_contract" if both else "per_turnover",
                   slippage_ticks=1.0, tick_size=1.0) if costly
           else T.Costs(multiplier=10.0))
  t, side = _signals(len(ts), rule.horizon, seed, both)
  ours = T.simulate(bars, ts, t, side, rule, costs, fill)
  eb, xb, ep, xp, sd, pnl = _reference(ts, bars, t, side, rule, costs, fill)
  assert len(ours["side"]) == len(eb) > 20
  np.testing.assert_array_equal(ours["entry_bar"], eb)
  np.testing.assert_array_equal(ours["exit_bar"], xb)
  np.testing.assert_array_equal(ours["side"], sd)
  np.testing.assert_allclose(ours["entry_price"], ep, rtol=1e-12)
  np.testing.assert_allclose(ours["exit_price"], xp, rtol=1e-12)
  np.testing.assert_allclose(ours["net_pnl"], pnl, rtol=1e-9, atol=1e-9 * np.abs(pnl).max())
  if kind == "barrier":  # The case exercises every exit reason.
    assert set(ours["reason"].tolist()) == {0, 1, 2}
  if both:
    assert set(ours["side"].tolist()) == {-1, 1}
