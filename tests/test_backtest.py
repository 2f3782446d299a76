"""The backtest: exits against the labels' own rule, every figure against a plain loop on a
hand-made trade list, the Deflated Sharpe Ratio against skfolio's, the threshold objectives
against brute force, and the honesty cases on the synthetic market (an oracle that reads
the labels and a coin flip stand in for models: the cases are about the backtest, not a
model). The trade lists themselves are checked against backtesting.py in
test_backtest_crosscheck.py."""

import math
import statistics

import numpy as np
import pytest

from jaxquant import backtest
from jaxquant import backtest_report
from jaxquant import config_check
from jaxquant import config_defaults
from jaxquant import trade_stats as S
from jaxquant import trades as T
from jaxquant import verdict
from jaxquant.data import labels as labels_lib
from jaxquant.data import rolls
from jaxquant.data import synth

DAY = 86_400 * 10**9


@pytest.fixture(scope="module")
def market():
  return synth.generate_market(instruments=3, days=40, signal=1.0, seed=3)


@pytest.mark.parametrize("units,tp,sl", [("return", 0.003, 0.002), ("ticks", 9, 6)])
def test_long_barrier_exits_are_the_labels_exits(market, units, tp, sl):
  _, ts, bars = market[0]
  h, tick = 15, 0.5
  lab, ret, off = labels_lib.triple_barrier_labels(bars[:, 3], bars[:, 1], bars[:, 2], h, tp,
                                                   sl, units=units, tick_size=tick, binary=False)
  t = np.arange(len(ts) - h - 1)
  rule = T.ExitRule(h, "barrier", tp, sl, units, tick)
  exit_bar, price, reason = T.exits(bars, t, np.ones(t.size), rule)
  np.testing.assert_array_equal(exit_bar - t, off[t])
  np.testing.assert_allclose(price / bars[t, 3] - 1, ret[t], rtol=1e-9, atol=1e-15)
  # Label classes 0 stop / 1 time / 2 take ↔ reasons stop_loss / time / take_profit.
  np.testing.assert_array_equal(reason, np.array([2, 0, 1])[lab[t]])
  assert set(reason.tolist()) == {0, 1, 2}


def test_a_bar_touching_both_barriers_exits_at_the_trade_stop():
  # Entry close 100, barriers 101 / 99; bar 2 touches both.
  bars = np.array([[100, 100, 100, 100], [100, 100.5, 99.5, 100], [100, 101.2, 98.7, 100],
                   [100, 102, 100, 101], [101, 101, 101, 101]], np.float64)
  rule = T.ExitRule(3, "barrier", 0.01, 0.01)
  exit_bar, price, reason = T.exits(bars, np.array([0, 0]), np.array([1, -1]), rule)
  np.testing.assert_array_equal(exit_bar, [2, 2])
  np.testing.assert_allclose(price, [99, 101])  # The long's stop is below, the short's above.
  np.testing.assert_array_equal(reason, [2, 2])


def test_one_position_at_a_time_and_fills():
  n = 40
  close = 100 + np.arange(n, dtype=np.float64)
  bars = np.stack([close - 0.5, close + 1, close - 1, close], axis=1)  # open = close - 0.5
  ts = np.arange(n, dtype=np.int64) * 60 * 10**9
  t = np.array([2, 3, 6, 7, 12, 20])
  costs = T.Costs(multiplier=10, commission=1.0, slippage_ticks=2, tick_size=0.25)
  out = T.simulate(bars, ts, t, np.ones(t.size), T.ExitRule(5), costs, "next_open")
  # 2 → exit 7; the next at or after bar 7 is 7 → exit 12; then 12 → 17; then 20.
  np.testing.assert_array_equal(out["signal_bar"], [2, 7, 12, 20])
  np.testing.assert_array_equal(out["entry_bar"], [3, 8, 13, 21])
  np.testing.assert_allclose(out["entry_price"], close[[3, 8, 13, 21]] - 0.5)
  np.testing.assert_allclose(out["exit_price"], close[[7, 12, 17, 25]])
  np.testing.assert_allclose(out["gross_pnl"], (4.5) * 10)  # 4 bars up + the half open gap.
  np.testing.assert_allclose(out["cost_pnl"], 2 * (1.0 + 2 * 0.25 * 10))
  close_fill = T.simulate(bars, ts, t, np.ones(t.size), T.ExitRule(5), costs, "close")
  np.testing.assert_allclose(close_fill["entry_price"], close[[2, 7, 12, 20]])
  turnover = T.Costs(multiplier=10, commission=1e-4, commission_kind="per_turnover")
  c = T.simulate(bars, ts, t, np.ones(t.size), T.ExitRule(5), turnover, "close")
  np.testing.assert_allclose(c["cost_pnl"], 1e-4 * 10 * (c["entry_price"] + c["exit_price"]))


def _hand_made():
  """Seven trades of two instruments over five trading days (exits at 10:00 local)."""
  day0 = 19_000 * DAY + 10 * 3_600 * 10**9
  exit_day = np.array([0, 0, 1, 3, 3, 4, 4])
  net = np.array([0.010, -0.004, 0.006, -0.012, 0.003, -0.002, 0.008])
  cost = np.full(7, 0.001)
  t = {"instrument": np.array([0, 1, 0, 1, 0, 1, 0]), "side": np.array([1, -1, 1, 1, -1, 1, 1]),
       "signal_bar": np.array([0, 3, 40, 100, 110, 200, 210]),
       "exit_time": day0 + exit_day * DAY, "reason": np.array([0, 1, 2, 0, 0, 1, 2]),
       "net_return": net, "cost_return": cost, "gross_return": net + cost}
  t["entry_bar"] = t["signal_bar"] + 1
  t["exit_bar"] = t["signal_bar"] + np.array([15, 15, 7, 15, 15, 3, 9])
  t["entry_time"] = t["exit_time"] - 900 * 10**9
  t["gross_pnl"], t["cost_pnl"], t["net_pnl"] = t["gross_return"] * 1e4, cost * 1e4, net * 1e4
  days = rolls.trading_day(day0 + np.arange(6) * DAY)  # A sixth day without trades.
  return t, days


def test_every_figure_against_a_plain_loop():
  t, days = _hand_made()
  f = S.figures(t, days, windows=1000, names=["A", "B"], n_boot=300, seed=1, trials=1)
  net = list(t["net_return"])
  wins, losses = [x for x in net if x > 0], [-x for x in net if x < 0]
  assert f["trades"] == 7 and f["long_trades"] == 5 and f["short_trades"] == 2
  assert f["exit_reasons"] == {"time": 3, "take_profit": 2, "stop_loss": 2}
  assert f["win_rate"] == pytest.approx(len(wins) / 7)
  assert f["profit_loss_ratio"] == pytest.approx((sum(wins) / len(wins)) / (sum(losses) / len(losses)))
  assert f["profit_factor"] == pytest.approx(sum(wins) / sum(losses))
  assert f["expectancy"] == pytest.approx(sum(net) / 7)
  assert f["gross_return"] == pytest.approx(sum(net) + 0.007)
  assert f["costs"] == pytest.approx(0.007) and f["net_return"] == pytest.approx(sum(net))
  daily = [0.0] * 6
  for x, d in zip(net, [0, 0, 1, 3, 3, 4, 4]):
    daily[d] += x
  mean = sum(daily) / 6
  assert f["days"] == 6
  assert f["sharpe"] == pytest.approx(mean / statistics.stdev(daily) * math.sqrt(252))
  down = math.sqrt(sum(min(x, 0) ** 2 for x in daily) / 6)
  assert f["sortino"] == pytest.approx(mean / down * math.sqrt(252))
  eq, peak, mdd = 0.0, 0.0, 0.0
  for x in net:  # Trade by trade, in exit order.
    eq += x
    peak = max(peak, eq)
    mdd = max(mdd, peak - eq)
  assert f["max_drawdown"] == pytest.approx(mdd)
  eq, peak, run, longest = 0.0, 0.0, 0, 0
  for x in daily:
    eq += x
    peak = max(peak, eq)
    run = run + 1 if eq < peak else 0
    longest = max(longest, run)
  assert f["max_drawdown_days"] == longest
  assert f["calmar"] == pytest.approx(252 * mean / mdd)
  assert f["exposure"] == pytest.approx((15 + 15 + 7 + 15 + 15 + 3 + 9) / 1000)
  assert f["turnover"] == pytest.approx(14 / 6)
  a = f["per_instrument"]["A"]
  mine = [x for x, i in zip(net, t["instrument"]) if i == 0]
  assert a["trades"] == 4 and a["net_return"] == pytest.approx(sum(mine))
  assert a["win_rate"] == pytest.approx(sum(x > 0 for x in mine) / 4)
  lo, hi = f["sharpe_ci"]
  assert lo <= f["sharpe"] <= hi
  lo, hi = f["gross_expectancy_ci"]
  assert lo <= f["gross_expectancy"] <= hi
  assert f["gross_expectancy"] == pytest.approx(sum(net) / 7 + 0.001)
  for key in ("trades", "win_rate", "profit_loss_ratio", "profit_factor", "expectancy",
              "gross_return", "costs", "net_return", "sharpe", "sharpe_ci", "sortino",
              "max_drawdown", "max_drawdown_days", "calmar", "exposure", "turnover",
              "per_instrument"):
    assert key in f


@pytest.mark.parametrize("trials", [1, 7, 40])
def test_deflated_sharpe_matches_skfolio(trials):
  measures = pytest.importorskip("skfolio.measures")
  rng = np.random.default_rng(trials)
  r = rng.standard_t(4, 300) * 0.01 + 0.002 + 0.004 * (rng.random(300) < 0.05)
  dsr, sr0 = S.deflated_sharpe(r, trials)
  sigma = 1 / math.sqrt(len(r) - 1)  # Our no-skill trials' dispersion, given to skfolio.
  bench = measures.expected_max_sharpe_ratio(n_trials=trials, trial_sharpe_ratio_std=sigma)
  ref = measures.probabilistic_sharpe_ratio(r, benchmark_sharpe_ratio=bench)
  assert dsr == pytest.approx(ref, rel=1e-9)
  assert sr0 == pytest.approx(bench * math.sqrt(252), rel=1e-12, abs=1e-15)
  trial_srs = rng.normal(0.05, 0.03, trials) if trials > 1 else np.array([0.1])
  dsr2, _ = S.deflated_sharpe(r, len(trial_srs), trial_srs)
  assert dsr2 == pytest.approx(measures.deflated_sharpe_ratio(r, trial_srs), rel=1e-9)


def _brute_precision(y, s, min_signals):
  best = None
  for v in sorted(set(s.tolist())):
    k = int((s >= v).sum())
    if k < min_signals:
      continue
    p = y[s >= v].mean()
    if best is None or p >= best[0]:
      best = (p, v)
  return best[1]


def test_threshold_objectives_against_brute_force():
  rng = np.random.default_rng(0)
  y = (rng.random(400) < 0.2).astype(int)
  s = np.round(1 / (1 + np.exp(-(rng.normal(size=400) + 1.2 * y))), 2)  # Ties.
  probs = np.stack([1 - s, s], axis=1)
  for m in (1, 10, 50):
    t = verdict.choose_threshold(y, probs, 0.0, "precision", m)
    assert t == _brute_precision(y, s, m)
  seen = []

  def net_total(ts):  # Known best: the candidate nearest 0.617 (no tie on a 0.01 grid).
    seen.extend(ts)
    return [-abs(x - 0.617) for x in ts]
  t = verdict.choose_threshold(y, probs, 0.0, "net_return", 20, net_total)
  assert t == min(seen, key=lambda x: abs(x - 0.617))
  assert all((s >= x).sum() >= 20 for x in seen)
  assert verdict.choose_threshold(y, probs, 0.001, "f1") == verdict.choose_threshold(y, probs, 0.001)


def _book(market, signal_fn, h=15, costs=None, n_boot=300):
  """Trades and figures of every window of a market (one 'split'), sides from signal_fn."""
  tables, days, windows = [], [], 0
  costs = costs or T.Costs()
  for i, (_, ts, bars) in enumerate(market):
    fwd = labels_lib.forward_return(bars[:, 3], h)
    t = np.arange(len(ts) - h - 1)
    side = signal_fn(fwd[t], i)
    k = np.nonzero(side)[0]
    tables.append(T.simulate(bars, ts, t[k], side[k], T.ExitRule(h), costs, "next_open", i))
    days.append(rolls.trading_day(ts[t]))
    windows += t.size
  table = T.concat(tables)
  f = S.figures(table, np.unique(np.concatenate(days)), windows, [m[0] for m in market],
                n_boot=n_boot, seed=0)
  return table, f


def test_no_signal_market_coin_flip_net_sharpe_interval_does_not_lie_above_zero():
  null = synth.generate_market(instruments=3, days=40, signal=0.0, seed=5)
  rng = np.random.default_rng(1)
  costs = T.Costs(multiplier=10, commission=1e-4, commission_kind="per_turnover",
                  slippage_ticks=1, tick_size=1.0)
  flips = [rng.choice([-1, 0, 0, 0, 1], len(m[1])) for m in null]
  fn = lambda fwd, i: flips[i][:fwd.size]
  _, f = _book(null, fn, costs=costs)
  assert f["trades"] > 500
  assert f["sharpe_ci"][0] <= 0  # After costs: contains 0 or lies below.
  _, free = _book(null, fn)
  assert free["sharpe_ci"][0] <= 0 <= free["sharpe_ci"][1]  # Before costs: contains 0.


def test_planted_signal_oracle_zero_costs_gross_expectancy_interval_above_zero(market):
  # The oracle reads the label (forward return > 0.1 %): its signals must make money gross.
  _, f = _book(market, lambda fwd, i: (fwd > 0.001).astype(np.int64))
  assert f["costs"] == 0 and f["gross_expectancy"] > 0
  assert f["gross_expectancy_ci"][0] > 0


def test_doubling_costs_lowers_net_by_exactly_the_added_cost(market):
  costs = T.Costs(multiplier=10, commission=2.0, slippage_ticks=1, tick_size=1.0)
  rng = np.random.default_rng(2)
  sides = [rng.choice([-1, 0, 1], 2000, p=[0.05, 0.9, 0.05]) for _ in market]
  fn = lambda fwd, i: sides[i][:fwd.size]
  a, fa = _book(market, fn, costs=costs, n_boot=0)
  b, fb = _book(market, fn, costs=costs.scaled(2.0), n_boot=0)
  np.testing.assert_array_equal(a["entry_bar"], b["entry_bar"])  # The same trades.
  np.testing.assert_allclose(b["net_pnl"], a["net_pnl"] - a["cost_pnl"], rtol=0, atol=1e-9)
  np.testing.assert_allclose(b["net_return"], a["net_return"] - a["cost_return"], atol=1e-15)
  assert fb["net_return"] == pytest.approx(fa["net_return"] - fa["costs"], abs=1e-12)
  assert fb["expectancy"] == pytest.approx(fa["expectancy"] - fa["costs"] / fa["trades"])


def test_contract_facts_come_from_instruments_csv_else_the_config(tmp_path):
  from jaxquant.data import instruments
  (tmp_path / "instruments.csv").write_text(
      ",".join(instruments.COLUMNS) + "\n"
      "A,0.5,20,3.5,,CNY,exchange\nB,,,,0.0002,,\nC,0.2,,,,,\n")
  table = instruments.load_table(str(tmp_path))
  bt = config_defaults.get_config().backtest
  bt.tick_size, bt.multiplier, bt.commission, bt.commission_kind = 1.0, 7.0, 1.5, "per_contract"
  a, fa = backtest.instrument_costs(table, "A", bt)
  assert (a.tick_size, a.multiplier, a.commission, a.commission_kind) == (0.5, 20, 3.5,
                                                                          "per_contract")
  assert set(fa.values()) == {"instruments.csv"}
  b, fb = backtest.instrument_costs(table, "B", bt)
  assert (b.tick_size, b.multiplier, b.commission, b.commission_kind) == (1.0, 7.0, 0.0002,
                                                                          "per_turnover")
  assert fb == {"tick_size": "config.backtest", "multiplier": "config.backtest",
                "commission": "instruments.csv"}
  d, fd = backtest.instrument_costs(table, "D", bt)  # Not in the table: the config's.
  assert (d.tick_size, d.multiplier, d.commission) == (1.0, 7.0, 1.5)
  assert d.slippage_ticks == bt.slippage_ticks


def test_samples_source_is_skipped_with_its_reason():
  config = config_defaults.get_config()
  config.data.source = "samples"
  bt = backtest.Backtests(config, {}, {}, "unused")
  result = {}
  bt.add(result, "test", 0.5)
  assert "samples carry no bars" in result["backtest"]["skipped"]
  md = "\n".join(backtest_report.markdown({"test": result}))
  assert "No backtest" in md and "samples" in md


@pytest.mark.parametrize("key,value,says", [
    ("backtest.fill", "open", "next_open"), ("backtest.commission", -1.0, ">= 0"),
    ("backtest.multiplier", 0.0, "> 0"), ("eval.threshold_objective", "sharpe", "net_return"),
    ("eval.trials", 0, ">= 1"), ("eval.min_signals", 0, ">= 1")])
def test_config_check_names_the_backtest_key(key, value, says):
  config = config_defaults.get_config()
  section, leaf = key.split(".")
  config[section][leaf] = value
  with pytest.raises(config_check.ConfigError, match=key.replace(".", r"\.")) as e:
    config_check.validate(config)
  assert says in str(e.value)
