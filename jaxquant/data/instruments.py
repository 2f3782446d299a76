"""Instrument facts (`instruments.csv` in the data folder) and per-instrument statistics.

The table has one row per instrument of the data folder, written by ingest (and by
the synthetic market) and meant to be edited: tick size (price units), contract
multiplier (currency per price unit per contract), commission per contract or as a
fraction of turnover (both per side), currency (ISO code), and where the figures
come from. A blank cell is unknown (None when read). Defaults exist for common
Chinese and CME index futures, each row naming the exchange specification it comes
from (DEFAULTS); commissions are left blank everywhere: exchange fees change by
notice, differ for closing today's positions, and brokers add their own.
An instrument without a default gets an empty row for the user to fill.

Tick-unit barriers read `tick_size` per instrument (`tick_size`); the backtest reads
the multiplier and commissions. `data.normalization="per_instrument"` fits the
feature statistics of each instrument on its own training rows
(`fit_per_instrument`) and applies them by instrument name.
"""

import csv
import io
import math
import os
import re

import numpy as np

from jaxquant import io_utils
from jaxquant.data import bar_checks
from jaxquant.data import features as features_lib

TABLE_FILE = "instruments.csv"
COLUMNS = ("instrument", "tick_size", "multiplier", "commission_per_contract",
           "commission_rate", "currency", "source")
NORMALIZATIONS = ("pooled", "per_instrument")
_NUMBERS = ("tick_size", "multiplier", "commission_per_contract", "commission_rate")

# (exchange, product code): (tick size, multiplier, currency, source of both figures).
DEFAULTS = {
    ("SHFE", "rb"): (1.0, 10.0, "CNY", "SHFE Steel Rebar Futures Contract: 10 t/lot, 1 yuan/t "
                     "(https://tsite.shfe.com.cn/eng/market/futures/metal/rb/index.html; as "
                     "quoted at https://www.sywgqh.com.cn/Pc/English/Futures_contracts/96134.html)"),
    ("SHFE", "cu"): (10.0, 5.0, "CNY", "SHFE Copper Futures Contract: 5 t/lot, 10 yuan/t "
                     "(https://www.shfe.com.cn/eng/Market/Futures/Metal/cu_f/ContractText)"),
    ("SHFE", "au"): (0.02, 1000.0, "CNY", "SHFE Gold Futures Contract as amended from "
                     "2019-12-10: 1000 g/lot, 0.02 yuan/g (SHFE notice of 2019-12-02, "
                     "reported by National Business Daily)"),
    ("SHFE", "ag"): (1.0, 15.0, "CNY", "SHFE Silver Futures Rules arts. 3 and 5: 15 kg/lot, "
                     "1 yuan/kg (https://tsite.shfe.com.cn/eng/services/rules/shfe/911404889.html)"),
    ("DCE", "i"): (0.5, 100.0, "CNY", "DCE Iron Ore Futures Contract: 100 t/lot, 0.5 yuan/t "
                   "since 2015-04-17 (https://futures.e-capital.com.hk/en-US/Market/ChinaGoods2)"),
    ("DCE", "m"): (1.0, 10.0, "CNY", "DCE Soybean Meal Futures Contract: 10 t/lot, 1 yuan/t "
                   "(https://m.southmoney.com/futures/caipoqihuo/202207/28570170.html)"),
    ("DCE", "y"): (2.0, 10.0, "CNY", "DCE Soybean Oil Futures Contract: 10 t/lot, 2 yuan/t "
                   "(finance.sina.com.cn/money/future/futuresroll/20120521/203212113164.shtml)"),
    ("CZCE", "SR"): (1.0, 10.0, "CNY", "ZCE White Sugar Futures Contract: 10 t/lot, 1 yuan/t "
                     "(https://en.yhqh.com.cn/html/2014/CZCE_0623/55.html)"),
    ("CZCE", "TA"): (2.0, 5.0, "CNY", "ZCE PTA Futures Contract: 5 t/lot, 2 yuan/t "
                     "(https://www.asiapacificfutures.com/products-and-services-china-"
                     "internationalised-products/zce/purified-terephthalic-acid/)"),
    ("CZCE", "MA"): (1.0, 10.0, "CNY", "Detailed Rules of ZCE for Methanol Futures arts. 3 "
                     "and 5: 10 t/lot, 1 yuan/t (https://english.czce.com.cn/en/Rulebook/"
                     "DetailedRules/webinfo/2024/02/1708568086958539.htm)"),
    ("CFFEX", "IF"): (0.2, 300.0, "CNY", "CFFEX CSI 300 Index Futures: CNY 300/point, 0.2 point "
                      "(http://www.cffex.com.cn/en_new/CSI300IndexFutures.html)"),
    ("CFFEX", "IC"): (0.2, 200.0, "CNY", "CFFEX CSI 500 Index Futures: CNY 200/point, 0.2 point "
                      "(http://www.cffex.com.cn/en_new/CSI500IndexFutures.html)"),
    ("CFFEX", "IH"): (0.2, 300.0, "CNY", "CFFEX SSE 50 Index Futures: CNY 300/point, 0.2 point "
                      "(http://cffex.com.cn/en_new/sspz/SSE50/)"),
    ("CFFEX", "IM"): (None, 200.0, "CNY", "CFFEX CSI 1000 Index Futures contract draft: CNY "
                      "200/point (reported at http://axjcy.com/arc_53360.html); tick size not "
                      "found in a specification page: fill it in"),
    ("CFFEX", "T"): (0.005, 10000.0, "CNY", "CFFEX 10-year Treasury Bond Futures: face value "
                     "CNY 1,000,000 quoted per CNY 100 (so CNY 10,000/point), tick CNY 0.005 "
                     "(http://cffex.com.cn/en_new/sspz/10t/)"),
    ("CME", "ES"): (0.25, 50.0, "USD", "CME E-mini S&P 500 Futures: $50 x index, 0.25 point "
                    "(https://www.cmegroup.com/trading/equity-index/us-index/"
                    "e-mini-sandp500_contract_specifications.html)"),
    ("CME", "NQ"): (0.25, 20.0, "USD", "CME E-mini Nasdaq-100 Futures: $20 x index, 0.25 point "
                    "(https://www.cmegroup.com/activetrader/Products/EquityIndex)"),
}
SYNTHETIC_PREFIX = "SYN"  # jaxquant.data.synth's instruments are named SYN.<code>.

_NAME = re.compile(r"^(?:(?P<exchange>[A-Za-z]+)\.)?(?P<code>[A-Za-z]+)(?:\d{3,4})?$")


def default_row(name, synthetic=False):
  """The table row of `name` from DEFAULTS, or an empty row.

  `EXCHANGE.code`, `code`, either with a contract month (`SHFE.rb2105`, `rb2105`), and
  TqSdk's `KQ.m@SHFE.rb` match DEFAULTS by code (exact case first, then any case if one code fits); with an
  exchange it must be the default's. `synthetic`: `SYN.<code>` takes the facts of the
  real product it is modelled on (its prices are not on that tick grid).
  """
  row = {c: None for c in COLUMNS}
  row["instrument"] = name
  m = _NAME.match(name.rsplit("@", 1)[-1])  # TqSdk's continuous "KQ.m@SHFE.rb" too.
  if m is None:
    return row
  exchange, code = m["exchange"], m["code"]
  if synthetic and exchange == SYNTHETIC_PREFIX:
    exchange = None
  elif synthetic:
    return row
  hits = [k for k in DEFAULTS if k[1] == code] or [k for k in DEFAULTS
                                                    if k[1].lower() == code.lower()]
  if exchange is not None:
    hits = [k for k in hits if k[0] == exchange.upper()]
  if len(hits) != 1:
    return row
  tick, mult, currency, source = DEFAULTS[hits[0]]
  if synthetic:
    source = (f"synthetic market (jaxquant.data.synth), facts of {hits[0][0]} {hits[0][1]}; "
              f"its prices are not on the tick grid. {source}")
  row.update(tick_size=tick, multiplier=mult, currency=currency, source=source)
  return row


def _number(path, line, key, text):
  try:
    v = float(text)
  except ValueError:
    raise bar_checks.IngestError(f"{path}:{line}: {key} {text!r} is not a number "
                                 "(leave it empty if unknown)") from None
  ok = {"tick_size": v > 0, "multiplier": v > 0, "commission_per_contract": v >= 0,
        "commission_rate": 0 <= v < 1}[key]
  if not (math.isfinite(v) and ok):
    need = {"tick_size": "> 0", "multiplier": "> 0", "commission_per_contract": ">= 0",
            "commission_rate": "a fraction of turnover in [0, 1)"}[key]
    raise bar_checks.IngestError(f"{path}:{line}: {key} {text!r} must be {need}")
  return v


def read_instruments(path):
  """Reads and checks an instruments table.

  Returns:
    {instrument: row} with numbers as float and blank cells as None.

  Raises:
    bar_checks.IngestError: `<file>:<line>: <reason>` for a malformed header or row.
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise bar_checks.IngestError(f"{path}: not UTF-8 text ({e.reason})") from None
  reader = csv.reader(io.StringIO(text))
  header = next(reader, None)
  if header is None or [h.strip() for h in header] != list(COLUMNS):
    raise bar_checks.IngestError(f"{path}:1: header must be {','.join(COLUMNS)}, got "
                                 f"{','.join(header or [])!r}")
  rows, lines = {}, {}
  start = 2
  for fields in reader:
    line, start = start, reader.line_num + 1  # Quoted cells may span lines.
    if not any(f.strip() for f in fields):
      continue
    if len(fields) != len(COLUMNS):
      raise bar_checks.IngestError(f"{path}:{line}: {len(fields)} fields, expected "
                                   f"{len(COLUMNS)} ({','.join(COLUMNS)})")
    row = dict(zip(COLUMNS, (f.strip() for f in fields)))
    name = row["instrument"]
    if not name:
      raise bar_checks.IngestError(f"{path}:{line}: instrument is empty")
    if name in rows:
      raise bar_checks.IngestError(f"{path}:{line}: instrument {name!r} again (first on "
                                   f"line {lines[name]})")
    for key in _NUMBERS:
      row[key] = _number(path, line, key, row[key]) if row[key] else None
    if row["currency"] and not re.fullmatch(r"[A-Z]{3}", row["currency"]):
      raise bar_checks.IngestError(f"{path}:{line}: currency {row['currency']!r} is not a "
                                   "3-letter code such as CNY or USD")
    row["currency"] = row["currency"] or None
    row["source"] = row["source"] or None
    rows[name], lines[name] = row, line
  return rows


def load_table(data_dir):
  """The instruments table of a data folder ({} when it has none); see read_instruments."""
  path = os.path.join(data_dir, TABLE_FILE)
  return read_instruments(path) if os.path.exists(path) else {}


def _cell(v):
  if v is None:
    return ""
  if isinstance(v, float):
    s = f"{v:.12g}"
    return s if float(s) == v else repr(v)
  return str(v)


def table_text(rows):
  """CSV text of {instrument: row}, sorted by instrument."""
  out = io.StringIO()
  w = csv.writer(out, lineterminator="\n")
  w.writerow(COLUMNS)
  for name in sorted(rows):
    w.writerow([_cell(rows[name][c]) for c in COLUMNS])
  return out.getvalue()


def write_table(data_dir, names, synthetic=False, existing=None):
  """Writes `instruments.csv` (atomically): the rows already there, kept as the user
  left them, plus a default_row for every name in `names` without one.

  Args:
    data_dir: the data folder.
    names: instrument names of the data.
    synthetic: names are jaxquant.data.synth's (see default_row).
    existing: the table already read (load_table), or None to read it here.

  Returns:
    The path written.
  """
  rows = dict(load_table(data_dir) if existing is None else existing)
  for name in names:
    rows.setdefault(name, default_row(name, synthetic))
  path = os.path.join(data_dir, TABLE_FILE)
  io_utils.atomic_write_text(path, table_text(rows))
  return path


def tick_size(table, name, fallback):
  """An instrument's tick size: its table row's (load_table), else the global `fallback`.

  Returns:
    {"tick_size": float, "from": "instruments.csv" or "data.tick_size"}.
  """
  tick = (table.get(name) or {}).get("tick_size")
  return ({"tick_size": tick, "from": TABLE_FILE} if tick is not None
          else {"tick_size": float(fallback), "from": "data.tick_size"})


def fit_per_instrument(feats, names, train_rows, pooled, feature_names=None):
  """Feature statistics of each instrument on its own training rows.

  Args:
    feats: per instrument, [n_i, F] features.
    names: the instruments' names.
    train_rows: per instrument, its training rows (indices into its own features).
    pooled: the pooled normaliser of the same training rows (features.fit_normalizer);
      kept at the top level (its "mean"/"std" give the feature count), not applied.
    feature_names: the F column names (features.fit_normalizer's `names`).

  Returns:
    `pooled` with "kind": "per_instrument" and "instruments": {name: normaliser}.

  Raises:
    ValueError: an instrument has no training rows.
  """
  per = {}
  for name, f, rows in zip(names, feats, train_rows):
    rows = np.asarray(rows, np.int64)
    if not rows.size:
      raise ValueError(f"instrument {name!r} has no bar before the validation cut, so "
                       "config.data.normalization='per_instrument' cannot fit its "
                       "statistics; use 'pooled' or leave it out")
    per[name] = features_lib.fit_normalizer(f, rows, names=feature_names)
  return {**pooled, "kind": "per_instrument", "instruments": per}


def normalize_per_instrument(feats, names, normalizer, data_dir, rows=None):
  """All instruments' features, each normalised by its own statistics, concatenated.

  Args:
    feats: per instrument, [n_i, F] features (an iterable, read once).
    names: the instruments' names.
    normalizer: fit_per_instrument's result (from this run or a checkpoint).
    data_dir: the data folder (for the message).
    rows: sum of n_i, to fill one float32 array instead of concatenating copies.

  Returns:
    [sum n_i, F] float32.

  Raises:
    ValueError: the statistics lack an instrument of the data.
  """
  per = normalizer["instruments"]
  for name in names:
    if name not in per:
      raise ValueError(f"instrument {name!r} of {data_dir} was not in the training data "
                       "of this run: its data.normalization='per_instrument' statistics "
                       f"cover {', '.join(sorted(per))} only")
  if rows is None:
    return np.concatenate([features_lib.normalize(f, per[n]) for f, n in zip(feats, names)])
  out, row = None, 0
  for f, name in zip(feats, names):
    part = features_lib.normalize(f, per[name])
    if out is None:
      out = np.empty((rows, part.shape[1]), np.float32)
    out[row:row + len(part)] = part
    row += len(part)
  return out
