"""Contract months of one product -> one continuous, back-adjusted series.

Naming rule: an instrument named `EXCHANGE.productYYMM` or `productYYMM` (letters,
then a 3- or 4-digit contract month: `SHFE.rb2105`, `rb2105`, CZCE's `CZCE.SR105`)
is the contract of `product` (`SHFE.rb`, `rb`, `CZCE.SR`) expiring in that month; a
3-digit month takes the first year >= its first bar's year that ends in that digit.
Ingest groups a product's contracts when it has two or more (`--product=NAME` groups
every input instead, in order of their last bar, then their first) and records the groups in
`manifest.json` ("products"); the contracts stay separate shards, and the config
chooses at load time how they become one series (`data.roll.by`, `data.roll.adjust`).

Roll rule, daily: at the end of each trading day the held contract is compared with
every later contract that traded that day (`by` = "open_interest": the day's last
open interest; "volume": the day's summed volume); when the largest later one
exceeds the held one, the series holds that contract from the next trading day's
first bar. Later contracts only: a roll never goes back. A held contract with no
bar after the day (expired) rolls to the later contract that is largest that day (or
the first later one still trading). Daily, not per bar: exchanges publish open
interest and volume per day, one busy minute of the next contract would otherwise
roll early (and with no rolling back, for good), and the roll lands on a session
open, decided on a finished day (no look-ahead). A trading day starts at
DAY_START_HOUR local time: a bar at 21:00 (a Chinese night session) or 17:00 (CME
Globex) belongs to the next date's day.

Adjustment, backwards (the latest contract keeps its own prices): at a roll the gap
is measured at the old contract's last held bar (time tau) against the new
contract's last close at or before tau. "difference" adds the gap to every earlier
open/high/low/close (price changes inside each contract unchanged; the tick grid
kept); "ratio" multiplies them by close_new / close_old (log returns unchanged);
"none" keeps raw prices, and a window or label whose bars cross a roll is dropped
(`crosses_roll`). Volume and open interest are the held contract's own.
"""

import json
import os
import re

import numpy as np

ROLL_BY = ("open_interest", "volume")
ROLL_ADJUST = ("difference", "ratio", "none")
DAY_START_HOUR = 17

_CONTRACT = re.compile(r"^(?P<product>(?:[A-Za-z][A-Za-z0-9_]*\.)?[A-Za-z]+)(?P<month>\d{3,4})$")
_DAY_NS = 86_400 * 10**9
_VOLUME, _OI, _CLOSE = 4, 5, 3


def parse_contract(name):
  """(product, month digits) of a contract name by the naming rule, else None."""
  m = _CONTRACT.match(name)
  if not m or not 1 <= int(m["month"][-2:]) <= 12:
    return None
  return m["product"], m["month"]


def _expiry(name, first_ts):
  """(year, month) a contract expires in, from its name; None if the name has none."""
  parsed = parse_contract(name)
  if parsed is None:
    return None
  month = parsed[1]
  if len(month) == 4:
    return 2000 + int(month[:2]), int(month[2:])
  first_year = int(str(np.datetime64(int(first_ts), "ns").astype("datetime64[Y]")))
  year = first_year + (int(month[0]) - first_year) % 10  # CZCE: one year digit.
  return year, int(month[1:])


def group_contracts(series, product=None):
  """Which instruments are contracts of one product, in expiry order.

  Args:
    series: [(name, timestamps)] of the ingested instruments (timestamps non-empty).
    product: None groups by the naming rule (products with >= 2 contracts); a name
      makes every instrument a contract of that product.

  Returns:
    {product: [contract names, earliest expiry first]}.
  """
  groups = {}
  if product is not None:
    groups[product] = list(series)
  else:
    for name, ts in series:
      parsed = parse_contract(name)
      if parsed is not None:
        groups.setdefault(parsed[0], []).append((name, ts))
  out = {}
  for prod, members in sorted(groups.items()):
    if len(members) < 2:
      continue
    keys = [_expiry(n, ts[0]) for n, ts in members]
    if all(k is not None for k in keys):
      order = sorted(range(len(members)), key=lambda i: (keys[i], members[i][0]))
    else:  # Names without a month: the one trading last (then listed last) expires last.
      order = sorted(range(len(members)), key=lambda i: (int(members[i][1][-1]),
                                                         int(members[i][1][0]), members[i][0]))
    out[prod] = [members[i][0] for i in order]
  return out


def trading_day(ts):
  """Trading-day key of each bar: its local date, bars from DAY_START_HOUR on counting
  to the next date. int64 days since the epoch."""
  return (np.asarray(ts, np.int64) + (24 - DAY_START_HOUR) * 3_600 * 10**9) // _DAY_NS


def _held_days(contracts, by):
  """The contract held on every trading day: (days [D], held [D] contract index)."""
  per = []
  for _, ts, bars in contracts:
    day = trading_day(ts)
    days, first = np.unique(day, return_index=True)
    last = np.r_[first[1:], len(day)] - 1
    val = bars[last, _OI] if by == "open_interest" else np.add.reduceat(bars[:, _VOLUME], first)
    per.append((days, val))
  all_days = np.unique(np.concatenate([d for d, _ in per]))
  value = np.full((len(contracts), len(all_days)), np.nan)
  for k, (days, val) in enumerate(per):
    value[k, np.searchsorted(all_days, days)] = val
  has = ~np.isnan(value)
  # Trades on a later day: a contract without one has expired.
  later = np.flip(np.logical_or.accumulate(np.flip(has, axis=1), axis=1), axis=1)
  later = np.concatenate([later[:, 1:], np.zeros((len(contracts), 1), bool)], axis=1)
  cur = int(np.argmax(has[:, 0]))  # The earliest contract trading on the first day.
  held = np.empty(len(all_days), np.int64)
  for j in range(len(all_days)):
    held[j] = cur
    cands = [k for k in range(cur + 1, len(contracts)) if has[k, j]]
    best = max(cands, key=lambda k: (value[k, j], -k)) if cands else None
    if best is not None and has[cur, j] and value[best, j] > value[cur, j]:
      cur = best
    elif not later[cur, j]:
      going = [k for k in range(cur + 1, len(contracts)) if later[k, j]]
      if going:
        cur = best if best is not None and later[best, j] else going[0]
  return all_days, held


def continuous(contracts, by="open_interest", adjust="ratio", product="product"):
  """One series from a product's contracts.

  Args:
    contracts: [(name, timestamps [n], bars [n, 6])], earliest expiry first.
    by: "open_interest" or "volume" (ROLL_BY): what the daily roll rule compares.
    adjust: "difference", "ratio" or "none" (ROLL_ADJUST).
    product: name used in messages.

  Returns:
    (timestamps [m], bars [m, 6] adjusted, roll_rows [k] int64 (the first row held
    from the next contract), rolls: one dict per roll with "at", "from", "to",
    "reason" ("switch" or "expiry"), "ref_time", "gap" (new - old close at
    ref_time), "ratio" (new / old), "overlap" (both traded at or before ref_time)).

  Raises:
    ValueError: unknown `by`/`adjust`, or difference adjustment making a price <= 0.
  """
  if by not in ROLL_BY:
    raise ValueError(f"config.data.roll.by={by!r}: use one of {ROLL_BY}")
  if adjust not in ROLL_ADJUST:
    raise ValueError(f"config.data.roll.adjust={adjust!r}: use one of {ROLL_ADJUST}")
  all_days, held = _held_days(contracts, by)
  ts_parts, bar_parts, src_parts = [], [], []
  for k, (_, ts, bars) in enumerate(contracts):
    keep = np.isin(trading_day(ts), all_days[held == k])
    ts_parts.append(ts[keep])
    bar_parts.append(bars[keep])
    src_parts.append(np.full(int(keep.sum()), k, np.int64))
  ts, bars, src = (np.concatenate(p) for p in (ts_parts, bar_parts, src_parts))
  order = np.argsort(ts, kind="stable")  # Days are disjoint: this only interleaves them.
  ts, bars, src = ts[order], bars[order].copy(), src[order]
  roll_rows = np.flatnonzero(src[1:] != src[:-1]).astype(np.int64) + 1
  rolls, gaps, ratios = [], [], []
  for r in roll_rows:
    old, new = int(src[r - 1]), int(src[r])
    tau = int(ts[r - 1])
    _, new_ts, new_bars = contracts[new]
    j = int(np.searchsorted(new_ts, tau, side="right")) - 1
    overlap = j >= 0
    new_close = float(new_bars[j, _CLOSE] if overlap else bars[r, _CLOSE])
    old_close = float(bars[r - 1, _CLOSE])
    old_ts = contracts[old][1]
    gaps.append(new_close - old_close)
    ratios.append(new_close / old_close)
    rolls.append({"at": _iso(ts[r]), "from": contracts[old][0], "to": contracts[new][0],
                  "reason": "switch" if old_ts[-1] > tau else "expiry",
                  "ref_time": _iso(tau if overlap else ts[r]), "gap": gaps[-1],
                  "ratio": ratios[-1], "overlap": bool(overlap)})
  prices = bars[:, :4]
  if adjust == "difference":
    shift = np.zeros(len(ts))
    for r, g in zip(roll_rows, gaps):
      shift[:r] += g
    prices += shift[:, None]
    bad = np.flatnonzero((prices <= 0).any(axis=1))
    if bad.size:
      raise ValueError(f"{product}: difference back-adjustment makes prices <= 0 up to "
                       f"{_iso(ts[bad[-1]])} (gaps add up to {shift[bad[-1]]:g}); use "
                       "config.data.roll.adjust='ratio'")
  elif adjust == "ratio":
    scale = np.ones(len(ts))
    for r, f in zip(roll_rows, ratios):
      scale[:r] *= f
    prices *= scale[:, None]
  return ts, bars, roll_rows, rolls


def _iso(ns):
  return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def crosses_roll(ends, roll_rows, window, horizon):
  """True for the samples whose footprint [t - window, t + horizon] holds a roll row r
  and the row before it (its bars come from two contracts).

  Args:
    ends: [n] int rows t of the windows' last bars (in the series' own rows).
    roll_rows: sorted int rows r, the first row of each new contract.
    window, horizon: T and h of the samples.

  Returns:
    [n] bool.
  """
  ends = np.asarray(ends, np.int64)
  roll_rows = np.asarray(roll_rows, np.int64)
  if not roll_rows.size:
    return np.zeros(ends.shape, bool)
  # The first roll after t - T; it crosses when it is at or before t + h.
  i = np.searchsorted(roll_rows, ends - window, side="right")
  hit = i < roll_rows.size
  out = np.zeros(ends.shape, bool)
  out[hit] = roll_rows[i[hit]] <= ends[hit] + horizon
  return out


def read_products(data_dir):
  """The product groups ingest recorded in data_dir's manifest.json ({} if none)."""
  try:
    with open(os.path.join(data_dir, "manifest.json")) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return {}
  products = manifest.get("products") or {}
  return {p: list(e["contracts"]) for p, e in products.items()}


def manifest_products(loaded, groups):
  """The manifest's "products": per product its contracts and the rolls of both rules
  (ratio and gap at each roll; the config picks the rule and the adjustment at load).

  Args:
    loaded: {name: (timestamps, bars)} of the ingested instruments.
    groups: {product: [contracts]} (group_contracts).
  """
  out = {}
  for prod, names in groups.items():
    contracts = [(n, *loaded[n]) for n in names]
    out[prod] = {"contracts": list(names),
                 "rolls": {by: continuous(contracts, by, "none", prod)[3] for by in ROLL_BY}}
  return out


def ingest_products(series, product=None, roll=True):
  """The manifest's "products" of an ingest.

  Args:
    series: [(instrument, timestamps, bars)], an instrument's parts in time order.
    product: every instrument is a contract month of this product; None: the naming rule.
    roll: group by the naming rule (False, without `product`: no products).

  Raises:
    ValueError: `product` with fewer than two instruments.
  """
  loaded = {}
  for name, ts, bars in series:
    ts0, bars0 = loaded.get(name, (ts[:0], bars[:0]))
    loaded[name] = (np.concatenate([ts0, ts]), np.concatenate([bars0, bars]))
  if product is not None and len(loaded) < 2:
    raise ValueError(f"--product={product!r} needs two or more contract months "
                     f"(instruments with rows), got {len(loaded)}")
  if not roll and product is None:
    return {}
  groups = group_contracts([(n, loaded[n][0]) for n in sorted(loaded)], product)
  return manifest_products(loaded, groups)


def join_products(loaded, products, by, adjust, facts):
  """Yields the series of `loaded` with each product's contracts replaced by its
  continuous series (at the place of its last contract; the others pass through
  one at a time, as loaded).

  Args:
    loaded: iterable of (name, timestamps, bars) (shards.load_dir).
    products: {product: [contracts]} (read_products); contracts missing from
      `loaded` are skipped (a product left with one contract is that contract).
    by, adjust: config.data.roll.by / .adjust.
    facts: dict that receives {product: {"by", "adjust", "contracts", "rolls",
      "roll_rows"}} for each product joined.
  """
  member = {c: p for p, cs in products.items() for c in cs}
  pending = {p: {} for p in products}
  names = set()

  def join(prod):
    got = pending.pop(prod)
    have = [n for n in products[prod] if n in got and len(got[n][0])]
    if len(have) < 2:
      return [(n, *got[n]) for n in sorted(got)]
    if prod in names:
      raise ValueError(f"product {prod!r} (contracts {', '.join(have)}) has the name of "
                       "another instrument in the data; rename one and ingest again")
    ts, bars, rows, rolls = continuous([(n, *got[n]) for n in have], by, adjust, prod)
    facts[prod] = {"by": by, "adjust": adjust, "contracts": have, "rolls": rolls,
                   "roll_rows": rows}
    return [(prod, ts, bars)] + [(n, *got[n]) for n in sorted(got) if n not in have]

  for name, ts, bars in loaded:
    names.add(name)
    prod = member.get(name)
    if prod is None:
      yield name, ts, bars
      continue
    pending[prod][name] = (ts, bars)
    if set(pending[prod]) >= set(products[prod]):
      yield from join(prod)
  for prod in sorted(p for p in pending if pending[p]):  # Contracts missing from the data.
    yield from join(prod)


def crossing_rows(facts):
  """Splits a data summary's facts (dataset._load_series) into the roll rows whose
  crossing windows are dropped and JSON-ready facts.

  Returns:
    ({product: roll rows} of the products with adjust "none", the facts with
    "roll_rows" taken out and a "windows_dropped" {} for keep_clear to count in).
  """
  crossing, clean = {}, dict(facts)
  clean["rolls"] = {}
  for prod, r in (facts.get("rolls") or {}).items():
    clean["rolls"][prod] = {k: v for k, v in r.items() if k != "roll_rows"}
    if r["adjust"] == "none":
      crossing[prod] = r["roll_rows"]
      clean["rolls"][prod]["windows_dropped"] = {}
  if not clean["rolls"]:
    del clean["rolls"]
  return crossing, clean


def keep_clear(t, name, crossing, facts, split, window, horizon):
  """The window ends `t` of instrument `name` whose bars cross no roll of `crossing`
  (crossing_rows); the dropped ones are counted in facts' windows_dropped[split]."""
  if name not in crossing:
    return t
  bad = crosses_roll(t, crossing[name], window, horizon)
  dropped = facts["rolls"][name]["windows_dropped"]
  dropped[split] = dropped.get(split, 0) + int(bad.sum())
  return t[~bad]


def describe_products(products, shown=3):
  """Summary lines of the manifest's "products" (manifest_products) for ingest's output."""
  lines = []
  for prod, p in products.items():
    lines.append(f"{prod}: contract months {', '.join(p['contracts'])} -> one series at load "
                 "(config.data.roll.by / .adjust)")
    for by, rolls in p["rolls"].items():
      text = "; ".join(f"{r['at']} {r['from']} -> {r['to']} (gap {r['gap']:+g})"
                       for r in rolls[:shown])
      more = f"; {len(rolls) - shown} more in the manifest" if len(rolls) > shown else ""
      lines.append(f"    rolls by {by}: {text or 'none'}{more}")
  return lines
