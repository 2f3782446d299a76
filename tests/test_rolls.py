"""Contract months -> one continuous series: the naming rule, the daily roll rule on a
market whose roll days and gaps are known by construction, the back-adjustments, and
that with adjust "none" no window or label spans a roll (counted against a plain loop)."""

import datetime
import json
import os

import numpy as np
import pytest

from jaxquant import config_defaults
from jaxquant.data import dataset
from jaxquant.data import ingest
from jaxquant.data import instruments
from jaxquant.data import rolls

_NIGHT, _DAY = 5, 10  # Bars per trading day: 21:00-21:04 the evening before, 09:00-09:09.
_PER_DAY = _NIGHT + _DAY
_FIRST = datetime.date(2021, 3, 1)
# Gaps by construction: every contract is base + one common walk W, so at any shared
# minute B - A = 400 and C - B = 250.
_BASE = {"SHFE.rb2105": 4000, "SHFE.rb2110": 4400, "SHFE.rb2201": 4650}
_DAYS = {"SHFE.rb2105": range(0, 7), "SHFE.rb2110": range(0, 9), "SHFE.rb2201": range(2, 9)}
# End-of-day open interest: B passes A at the end of day 3 (A's bounce on day 4 must not
# roll back), C passes B at the end of day 7. On day 2 one B bar shows OI 1500 (> A),
# but B ends the day below A: the daily rule ignores it.
_OI = {"SHFE.rb2105": [1000, 1000, 1000, 900, 1200, 800, 700],
       "SHFE.rb2110": [500, 600, 800, 1000, 900, 1100, 1300, 1400, 1500],
       "SHFE.rb2201": [None, None, 100, 200, 400, 800, 1200, 1600, 2000]}
# Volume per bar: B's day passes A's on day 2, C's passes B's on day 5; one busy B
# minute on day 1 (700 > 100) leaves B's day below A's.
_VOL = {"SHFE.rb2105": [100] * 7,
        "SHFE.rb2110": [10, 50, 120, 150, 150, 150, 150, 150, 150],
        "SHFE.rb2201": [None, None, 5, 10, 50, 200, 300, 300, 300]}
# Hand-worked: the first trading day held from each new contract.
_ROLL_DAYS = {"open_interest": (4, 8), "volume": (3, 6)}


def _slot_times(day):
  """The bar times of trading day `day` (its night bars fall on the evening before)."""
  date = _FIRST + datetime.timedelta(days=day)
  eve = datetime.datetime.combine(date - datetime.timedelta(days=1), datetime.time(21, 0))
  morning = datetime.datetime.combine(date, datetime.time(9, 0))
  return ([eve + datetime.timedelta(minutes=k) for k in range(_NIGHT)]
          + [morning + datetime.timedelta(minutes=k) for k in range(_DAY)])


def _ns(t):
  return int(np.datetime64(t, "ns").astype(np.int64))


def _walk(seed=0):
  rng = np.random.default_rng(seed)
  return np.cumsum(rng.integers(-3, 4, 9 * _PER_DAY)).astype(np.float64)


def _contract(name, walk):
  """(timestamps, bars) of one contract: integer prices base + W."""
  ts, rows = [], []
  for d in _DAYS[name]:
    for k, t in enumerate(_slot_times(d)):
      close = _BASE[name] + walk[d * _PER_DAY + k]
      oi = _OI[name][d] if not (name == "SHFE.rb2110" and d == 2 and k == 7) else 1500
      vol = _VOL[name][d] if not (name == "SHFE.rb2110" and d == 1 and k == 3) else 700
      open_ = rows[-1][3] if rows else close
      rows.append([open_, max(open_, close) + 1, min(open_, close) - 1, close, vol, oi])
      ts.append(_ns(t))
  return np.array(ts, np.int64), np.array(rows, np.float64)


def _market(seed=0):
  walk = _walk(seed)
  return [(n, *_contract(n, walk)) for n in _BASE], walk


def _first_row_of_day(ts, day):
  return int(np.searchsorted(ts, _ns(_slot_times(day)[0])))


def _reference_rolls(contracts, by):
  """A plain loop: each trading day (by datetime arithmetic), the day's last OI / summed
  volume per contract; roll to the largest later contract when it beats the held one."""
  def tday(ns):
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=ns // 1000)
    return (t.date() + datetime.timedelta(days=1)) if t.hour >= 17 else t.date()

  values = []
  for _, ts, bars in contracts:
    v = {}
    for t, b in zip(ts, bars):
      d = tday(int(t))
      v[d] = b[5] if by == "open_interest" else v.get(d, 0.0) + b[4]
    values.append(v)
  days = sorted(set().union(*values))
  held, cur = [], 0
  for d in days:
    held.append(cur)
    later = [k for k in range(cur + 1, len(contracts)) if d in values[k]]
    if later and d in values[cur]:
      best = max(later, key=lambda k: values[k][d])
      if values[best][d] > values[cur][d]:
        cur = best
  return [i + 1 for i, (a, b) in enumerate(zip(held, held[1:])) if a != b]


def test_naming_rule_and_grouping():
  assert rolls.parse_contract("SHFE.rb2105") == ("SHFE.rb", "2105")
  assert rolls.parse_contract("rb2105") == ("rb", "2105")
  assert rolls.parse_contract("CZCE.SR105") == ("CZCE.SR", "105")
  for name in ("KQ.m@SHFE.rb", "SYN.rb", "sp500", "EURUSD", "rb2113", "es_1min_2013"):
    assert rolls.parse_contract(name) is None, name
  ts = lambda year: np.array([_ns(datetime.datetime(year, 6, 1))])  # noqa: E731
  got = rolls.group_contracts([("CZCE.SR001", ts(2019)), ("CZCE.SR105", ts(2020)),
                               ("CZCE.SR909", ts(2019)), ("SHFE.rb2110", ts(2021)),
                               ("SHFE.rb2105", ts(2020)), ("SHFE.cu2105", ts(2020)),
                               ("EURUSD", ts(2020))])
  # CZCE's one year digit: the first year >= the first bar's ending in it. cu alone: no roll.
  assert got == {"CZCE.SR": ["CZCE.SR909", "CZCE.SR001", "CZCE.SR105"],
                 "SHFE.rb": ["SHFE.rb2105", "SHFE.rb2110"]}
  # An explicit product: ordered by the last bar.
  assert rolls.group_contracts([("may", ts(2021)), ("jan", ts(2020))], "X") == \
      {"X": ["jan", "may"]}


def test_trading_day_starts_at_17h():
  def key(*args):
    return int(rolls.trading_day(np.array([_ns(datetime.datetime(*args))]))[0])
  assert key(2021, 3, 1, 21, 0) == key(2021, 3, 2, 9, 0) == key(2021, 3, 2, 16, 59)
  assert key(2021, 3, 2, 17, 0) == key(2021, 3, 3, 9, 0) != key(2021, 3, 2, 9, 0)


@pytest.mark.parametrize("by", rolls.ROLL_BY)
def test_roll_lands_on_the_known_bar(by):
  contracts, _ = _market()
  ts, bars, rows, info = rolls.continuous(contracts, by, "none")
  want = [_first_row_of_day(ts, d) for d in _ROLL_DAYS[by]]
  assert list(rows) == want
  # The same days from an independent loop (trading days by datetime, not by ns arithmetic).
  ref = _reference_rolls(contracts, by)
  assert [int(ts[r]) for r in rows] == [_ns(_slot_times(d)[0]) for d in ref]
  assert [(r["from"], r["to"]) for r in info] == [("SHFE.rb2105", "SHFE.rb2110"),
                                                   ("SHFE.rb2110", "SHFE.rb2201")]
  assert [r["gap"] for r in info] == [400.0, 250.0]
  assert all(r["overlap"] and r["reason"] == "switch" for r in info)
  # Unadjusted: each row is its contract's own bar.
  for (name, cts, cbars), a, b in zip(contracts, [0, *rows], [*rows, len(ts)]):
    i = np.searchsorted(cts, ts[a:b])
    np.testing.assert_array_equal(cts[i], ts[a:b])
    np.testing.assert_array_equal(cbars[i], bars[a:b])


def _own(contracts, k, ts):
  """Closes of contract k at the times ts."""
  cts, cbars = contracts[k][1], contracts[k][2]
  return cbars[np.searchsorted(cts, ts), 3]


def test_difference_adjustment_is_the_latest_contract_back_in_time():
  contracts, walk = _market(1)
  ts, bars, rows, _ = rolls.continuous(contracts, "open_interest", "difference")
  # Known answer: back-adjusting by the gaps (400, 250) turns every bar into C's price line.
  slot = np.concatenate([[d * _PER_DAY + k for k in range(_PER_DAY)] for d in range(9)])
  np.testing.assert_array_equal(bars[:, 3], _BASE["SHFE.rb2201"] + walk[slot])
  raw = rolls.continuous(contracts, "open_interest", "none")[1]
  for a, b in zip([0, *rows], [*rows, len(ts)]):  # Price changes inside a contract: unchanged.
    np.testing.assert_array_equal(np.diff(bars[a:b, :4], axis=0), np.diff(raw[a:b, :4], axis=0))
  for r, new in zip(rows, (1, 2)):  # No jump: the step at a roll is the new contract's own.
    assert bars[r, 3] - bars[r - 1, 3] == _own(contracts, new, ts[r:r + 1])[0] \
        - _own(contracts, new, ts[r - 1:r])[0]
  np.testing.assert_array_equal(bars[rows[-1]:], raw[rows[-1]:])  # The latest: as traded.


def test_ratio_adjustment_keeps_log_returns():
  contracts, _ = _market(2)
  ts, bars, rows, info = rolls.continuous(contracts, "volume", "ratio")
  raw = rolls.continuous(contracts, "volume", "none")[1]
  logs, raw_logs = np.log(bars[:, :4]), np.log(raw[:, :4])
  for a, b in zip([0, *rows], [*rows, len(ts)]):
    np.testing.assert_allclose(np.diff(logs[a:b], axis=0), np.diff(raw_logs[a:b], axis=0),
                               rtol=0, atol=1e-12)
  for r, new in zip(rows, (1, 2)):
    own = np.log(_own(contracts, new, ts[r:r + 1])[0] / _own(contracts, new, ts[r - 1:r])[0])
    assert abs((logs[r, 3] - logs[r - 1, 3]) - own) < 1e-12
  # The factors: new / old close at the old contract's last bar, multiplied back in time.
  f = [_own(contracts, k + 1, ts[r - 1:r])[0] / _own(contracts, k, ts[r - 1:r])[0]
       for k, r in enumerate(rows)]
  assert [i["ratio"] for i in info] == f
  np.testing.assert_allclose(bars[:rows[0], 3], raw[:rows[0], 3] * f[0] * f[1], rtol=1e-14)
  np.testing.assert_allclose(bars[rows[0]:rows[1], 3], raw[rows[0]:rows[1], 3] * f[1],
                             rtol=1e-14)


def _flat(days, closes, ois):
  """A contract with one close and one open interest per trading day."""
  ts = np.array([_ns(t) for d in days for t in _slot_times(d)], np.int64)
  per = lambda v: np.repeat(np.asarray(v, np.float64), _PER_DAY)  # noqa: E731
  c = per(closes)
  return ts, np.stack([c, c + 1, c - 1, c, np.full(len(c), 10.0), per(ois)], axis=1)


def test_difference_adjustment_refuses_prices_at_or_below_zero():
  # A rallies from 100 to 1000, then rolls into B at 50: back-adjusting by the gap
  # -950 puts A's first day at 100 - 950 < 0.
  low = [("X2105", *_flat([0, 1, 2], [100, 1000, 1000], [1000, 1000, 10])),
         ("X2110", *_flat([0, 1, 2], [50, 50, 50], [1, 2000, 2000]))]
  ts, bars, rows, info = rolls.continuous(low, "open_interest", "ratio")
  assert list(rows) == [_first_row_of_day(ts, 2)] and info[0]["gap"] == -950
  with pytest.raises(ValueError, match=r"SHFE.rb: difference back-adjustment makes prices "
                                       r"<= 0 .*roll.adjust='ratio'"):
    rolls.continuous(low, "open_interest", "difference", "SHFE.rb")


def test_an_expired_contract_rolls_to_the_next_one_trading():
  # A's open interest stays above B's, but A stops after day 1.
  got = [("X2105", *_flat([0, 1], [100, 101], [1000, 1000])),
         ("X2110", *_flat([0, 1, 2, 3], [90, 91, 92, 93], [10, 10, 10, 10]))]
  ts, _, rows, info = rolls.continuous(got, "open_interest", "difference")
  assert list(rows) == [_first_row_of_day(ts, 2)]
  assert info[0]["reason"] == "expiry" and info[0]["gap"] == -10


def _write_csvs(folder, contracts):
  folder.mkdir()
  for name, ts, bars in contracts:
    lines = ["datetime,open,high,low,close,volume,open_interest"]
    for t, b in zip(ts, bars):
      stamp = str(np.datetime64(int(t), "ns").astype("datetime64[s]")).replace("T", " ")
      lines.append(stamp + "," + ",".join(f"{x:g}" for x in b))
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
  return str(folder)


def _config(adjust, by="open_interest"):
  c = config_defaults.get_config().data
  c.source, c.window, c.horizon, c.label_threshold = "shards", 6, 3, 0.0
  c.val_fraction, c.test_fraction = 0.2, 0.2
  c.roll.by, c.roll.adjust = by, adjust
  return c


def test_ingest_records_the_products_and_none_drops_every_crossing_window(tmp_path):
  contracts, _ = _market(3)
  out = str(tmp_path / "out")
  summary = ingest.ingest(_write_csvs(tmp_path / "csv", contracts), out, max_gap=0)
  with open(os.path.join(out, "manifest.json")) as f:
    product = json.load(f)["products"]["SHFE.rb"]
  assert product["contracts"] == list(_BASE)
  for by, days in _ROLL_DAYS.items():
    got = product["rolls"][by]
    assert [r["at"] for r in got] == [_slot_times(d)[0].isoformat() for d in days]
    assert [r["gap"] for r in got] == [400.0, 250.0]
  assert "SHFE.rb: contract months" in ingest.format_summary(summary)
  # One table row for the series the config trains on: the product, with rb's facts.
  assert list(instruments.load_table(out)) == ["SHFE.rb"]
  assert instruments.load_table(out)["SHFE.rb"]["tick_size"] == 1.0

  T, h = 6, 3
  none = dataset.build_dataset(_config("none"), out, check_labels=False)
  ratio = dataset.build_dataset(_config("ratio"), out, check_labels=False)
  facts = none.summary()["rolls"]["SHFE.rb"]
  assert none.instruments == ratio.instruments == ["SHFE.rb"]
  ts, _, rows, _ = rolls.continuous(contracts, "open_interest", "none")
  for split in ("train", "val", "test"):
    kept, every = none.splits[split], ratio.splits[split]
    # A plain loop: a window ending at t reads bars t-T .. t+h; it crosses a roll r when
    # both r-1 and r are among them.
    crossing = [t for t in every.ends
                if any(t - T <= r - 1 and r <= t + h for r in rows)]
    assert sorted(set(every.ends) - set(kept.ends)) == sorted(crossing)
    assert facts["windows_dropped"][split] == len(crossing)
    # The 10 % gap never reaches a kept label: intra-contract moves are < 1 %.
    assert np.abs(kept.fwd_returns[np.isfinite(kept.fwd_returns)]).max() < 0.02
  assert sum(facts["windows_dropped"].values()) > 0
  line = dataset.describe_data(none, out)
  assert "SHFE.rb: 3 contracts, 2 rolls by open_interest, adjust none" in line
  assert "windows crossing a roll dropped" in line
  # Ratio-adjusted windows do cross rolls, and their returns stay small too.
  assert np.abs(ratio.splits["train"].fwd_returns).max() < 0.02


def test_noroll_keeps_the_contracts_apart(tmp_path):
  contracts, _ = _market(4)
  out = str(tmp_path / "out")
  ingest.ingest(_write_csvs(tmp_path / "csv", contracts), out, max_gap=0, roll=False)
  ds = dataset.build_dataset(_config("ratio"), out, check_labels=False)
  assert ds.instruments == list(_BASE) and "rolls" not in ds.summary()


def test_product_flag_groups_any_names_and_the_config_is_checked(tmp_path):
  contracts, _ = _market(5)
  renamed = [(alias, ts, b) for alias, (_, ts, b) in zip(("may", "oct", "jan"), contracts)]
  out = str(tmp_path / "out")
  ingest.ingest(_write_csvs(tmp_path / "csv", renamed), out, max_gap=0, product="RB")
  assert rolls.read_products(out) == {"RB": ["may", "oct", "jan"]}  # By last bar.
  assert dataset.build_dataset(_config("ratio"), out, check_labels=False).instruments == ["RB"]
  with pytest.raises(ValueError, match=r"--product='RB' needs two or more contract months"):
    ingest.ingest(os.path.join(tmp_path / "csv", "may.csv"), str(tmp_path / "o2"), max_gap=0,
                  product="RB")
  from jaxquant import config_check
  from jaxquant import config_defaults as defaults
  for key, value in (("data.roll.adjust", "backwards"), ("data.roll.by", "price"),
                     ("data.normalization", "per_window")):
    c = defaults.get_config()
    config_check.set_value(c, key, value)
    with pytest.raises(config_check.ConfigError, match=rf"^config.{key}='{value}' is invalid"):
      config_check.validate(c)
