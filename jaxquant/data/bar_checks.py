"""The rejection rules for ingested bar rows, and the `<file>:<line>: <reason>` of each.

A row is reported (and counted, with --on-error=skip) under the first problem
it has, in the order of the codes below. `REASONS` names them for the
`skipped` counts of shards, manifest and summary.
"""

import numpy as np

from jaxquant.data import shards


class IngestError(ValueError):
  """Bad input; the message is one line, `<file>:<line>: <reason>`."""


(OK, FIELDS, TIME, MISMATCH, NODATA, EMPTY, NONNUM, NONFIN, NONPOS, NEGVOL, OHLC, DUP,
 BACK) = range(13)

REASON_KEYS = {
    FIELDS: "wrong_field_count",
    TIME: "unparsable_time",
    MISMATCH: "time_mismatch",
    NODATA: "no_data",
    EMPTY: "empty_field",
    NONNUM: "non_numeric",
    NONFIN: "non_finite",
    NONPOS: "non_positive_price",
    NEGVOL: "negative_volume",
    OHLC: "inconsistent_ohlc",
    DUP: "duplicate_timestamp",
    BACK: "non_monotonic_timestamp",
}
# A bar far wider than the series' typical price (a misprint such as a high of 1e300):
# checked after the codes above, on the rows they leave.
RANGE = len(REASON_KEYS) + 1
REASON_KEYS[RANGE] = "absurd_range"

# Reason keys used in `skipped` counts, with what they mean.
REASONS = {
    "wrong_field_count": "the row has a different number of fields than the header",
    "unparsable_time": "the time field does not parse with the file's time format",
    "time_mismatch": "TqSdk: the datetime string disagrees with datetime_nano",
    "no_data": "TqSdk: the symbol has no bar in this row (not an error)",
    "empty_field": "an empty or N/A field in a number column",
    "non_numeric": "text in a number column",
    "non_finite": "NaN or infinity in a number column",
    "non_positive_price": "open/high/low/close <= 0",
    "negative_volume": "volume or open interest < 0",
    "inconsistent_ohlc": "high < low, high < max(open, close) or low > min(open, close)",
    "duplicate_timestamp": "same timestamp as an earlier kept row",
    "non_monotonic_timestamp": "timestamp earlier than an earlier kept row",
    "absurd_range": "high - low above --max-bar-range times the series' median close",
    # Flagged, not skipped: a gap removes no row (--on-error=stop raises on it).
    "long_gap": "more than --max-gap between two kept rows",
    # Loose sample files (whole files are skipped, not rows).
    "bad_sample_file": "a .zst sample that cannot be decoded as .npy/.npz",
    "sample_mismatch": "a sample/label whose shape or dtype differs from the first one",
}

PRICE_FIELDS = ("open", "high", "low", "close")

# Defaults of ingest's --max-gap and --max-bar-range: a market closed two weeks (no
# exchange holiday is that long) or a bar spanning the whole typical price is suspect.
MAX_GAP = "14d"
MAX_BAR_RANGE = 1.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def gap_ns(text):
  """'90m', '6h', '14d', '2w' or plain seconds -> ns; '0' or '' turns the check off (0)."""
  t = str(text or "0").strip().lower()
  unit = _UNITS.get(t[-1:], None)
  try:
    n = float(t[:-1] if unit else t)
  except ValueError:
    n = -1
  if not n >= 0:
    raise IngestError(f"--max-gap={text!r}: expected a duration such as 90m, 6h or 14d")
  return int(n * (unit or 1) * 10**9)


def fmt_gap(ns):
  """A duration as its largest whole unit or as hours: '20d', '36h', '90m'."""
  for unit, sec in sorted(_UNITS.items(), key=lambda u: -u[1]):
    if ns % (sec * 10**9) == 0:
      return f"{ns // (sec * 10**9)}{unit}"
  return f"{ns / 3.6e12:.2f}h"


class Field:
  """One number column of one instrument: raw strings, values and problem codes."""

  def __init__(self, header, raw, values, code):
    self.header = header  # The column name as written in the file.
    self.raw = raw  # pyarrow string array, as read (not stripped).
    self.values = values
    self.code = code

  def text(self, i):
    return self.raw[int(i)].as_py()


def fmt_ts(ns):
  """Timestamp for messages and summaries: `YYYY-MM-DD HH:MM:SS[.fff...]`."""
  if ns is None:
    return None
  ns = int(ns)
  unit = "s" if ns % 10**9 == 0 else "ms" if ns % 10**6 == 0 else \
      "us" if ns % 10**3 == 0 else "ns"
  div = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
  return str(np.datetime64(ns // div, unit)).replace("T", " ")


class Checker:
  """Validates the rows of one instrument and explains the first problem."""

  def __init__(self, path, lines, ncol, row_lens, time_text, mismatch_text=None):
    # time_text(i) / mismatch_text(i): the reason for a bad time in row i.
    self.path, self.lines, self.ncol, self.row_lens = path, lines, ncol, row_lens
    self.time_text, self.mismatch_text = time_text, mismatch_text

  def run(self, pre_code, ts, fields, prefix="", no_data=None, max_bar_range=MAX_BAR_RANGE):
    """Codes every row; returns (code per row, index of the first error or None).

    Args:
      pre_code: file-level row problems (field count, time).
      ts: int64 ns per row.
      fields: {bar column: Field}.
      prefix: put before the reason in messages (TqSdk: the symbol).
      no_data: TqSdk rows where the symbol has no bar (skipped, not an error).
      max_bar_range: widest high - low of a bar in median closes (0: no check).
    """
    code = pre_code.copy()
    if no_data is not None:
      code[(code == OK) & no_data] = NODATA
    for f in fields.values():
      m = (code == OK) & (f.code != OK)
      code[m] = f.code[m]
    o, h, l, c = (fields[k].values for k in PRICE_FIELDS)
    with np.errstate(invalid="ignore"):
      nonpos = (o <= 0) | (h <= 0) | (l <= 0) | (c <= 0)
      code[(code == OK) & nonpos] = NONPOS
      neg = np.zeros_like(nonpos)
      for k in ("volume", "open_interest"):
        if k in fields:
          neg |= fields[k].values < 0
      code[(code == OK) & neg] = NEGVOL
      ohlc = (h < l) | (h < np.maximum(o, c)) | (l > np.minimum(o, c))
      code[(code == OK) & ohlc] = OHLC
      self.median_close = float(np.median(c[code == OK])) if (code == OK).any() else 0.0
      if max_bar_range and self.median_close > 0:
        code[(code == OK) & (h - l > max_bar_range * self.median_close)] = RANGE
    self.max_bar_range = max_bar_range
    # Order among the rows that survive: each kept timestamp must beat the
    # running max of earlier kept ones (rows dropped here never raise it).
    idx = np.flatnonzero(code == OK)
    if idx.size > 1:
      t = ts[idx]
      prev = np.maximum.accumulate(t)[:-1]
      code[idx[1:][t[1:] == prev]] = DUP
      code[idx[1:][t[1:] < prev]] = BACK
    self.code, self.ts, self.fields, self.prefix = code, ts, fields, prefix
    bad = np.flatnonzero((code != OK) & (code != NODATA))
    return code, (int(bad[0]) if bad.size else None)

  def message(self, i):
    """`<file>:<line>: <reason>` for row `i`."""
    c, f = int(self.code[i]), self.fields
    if c == FIELDS:
      why = f"expected {self.ncol} fields, got {self.row_lens[i]}"
    elif c == TIME:
      why = self.time_text(i)
    elif c == MISMATCH:
      why = self.mismatch_text(i)
    elif c in (EMPTY, NONNUM, NONFIN):
      fld = next(x for x in f.values() if x.code[i] != OK)
      v = fld.text(i)
      why = {EMPTY: f"empty value {v!r} in column {fld.header!r}",
             NONNUM: f"non-numeric value {v!r} in column {fld.header!r}",
             NONFIN: f"non-finite value {v!r} in column {fld.header!r}"}[c]
    elif c == NONPOS:
      bad = [f"{f[k].header}={f[k].text(i).strip()}" for k in PRICE_FIELDS
             if not f[k].values[i] > 0]
      why = "non-positive price " + ", ".join(bad)
    elif c == NEGVOL:
      bad = [f"{f[k].header}={f[k].text(i).strip()}" for k in ("volume", "open_interest")
             if k in f and f[k].values[i] < 0]
      why = "negative " + ", ".join(bad)
    elif c == OHLC:
      o, h, l, cl = (f[k].values[i] for k in PRICE_FIELDS)
      r = {k: f[k].text(i).strip() for k in PRICE_FIELDS}
      if h < l:
        why = f"high {r['high']} < low {r['low']}"
      elif h < max(o, cl):
        why = f"high {r['high']} < max(open {r['open']}, close {r['close']})"
      else:
        why = f"low {r['low']} > min(open {r['open']}, close {r['close']})"
    elif c == RANGE:
      r = {k: f[k].text(i).strip() for k in ("high", "low")}
      why = (f"absurd range: high {r['high']} - low {r['low']} is more than "
             f"{self.max_bar_range:g} x the series' median close {self.median_close:.6g} "
             "(--max-bar-range)")
    else:  # DUP / BACK
      earlier = np.flatnonzero(self.code[:i] == OK)
      j = int(earlier[np.argmax(self.ts[earlier])])
      t, tj = fmt_ts(self.ts[i]), fmt_ts(self.ts[j])
      why = (f"duplicate timestamp {t} (same as line {self.lines[j]})" if c == DUP
             else f"timestamp {t} is earlier than {tj} on line {self.lines[j]} "
                  "(rows must be in increasing time order)")
    return f"{self.path}:{self.lines[i]}: {self.prefix}{why}"


  def gaps(self, max_gap):
    """`<file>:<line>: ...` of every step between kept rows longer than max_gap ns."""
    keep = np.flatnonzero(self.code == OK)
    if not max_gap or keep.size < 2:
      return []
    t = self.ts[keep]
    out = []
    for j in np.flatnonzero(np.diff(t) > max_gap):
      a, b = keep[j], keep[j + 1]
      gap = fmt_gap(int(t[j + 1] - t[j]))
      out.append(f"{self.path}:{self.lines[b]}: {self.prefix}gap of {gap} since line "
                 f"{self.lines[a]} ({fmt_ts(t[j])} -> {fmt_ts(t[j + 1])}) is longer than "
                 f"--max-gap={fmt_gap(max_gap)}")
    return out


MAX_FLAGGED = 20  # Messages kept per series in the manifest (all are counted).


def flag_suspicious(chk, max_gap, on_error):
  """The suspicious rows of a checked series: ({reason: count}, first MAX_FLAGGED
  `<file>:<line>: ...` messages). Gaps remove no row, so with on_error="stop" the
  first one raises; absurd bars were already dropped (skip) or raised (stop)."""
  gaps = chk.gaps(max_gap)
  if gaps and on_error == "stop":
    raise IngestError(gaps[0] + " (pass --max-gap=0 to allow it, or --on-error=skip "
                      "to only report it)")
  wide = [chk.message(i) for i in np.flatnonzero(chk.code == RANGE)[:MAX_FLAGGED]]
  n_wide = int((chk.code == RANGE).sum())
  found = {k: n for k, n in (("absurd_range", n_wide), ("long_gap", len(gaps))) if n}
  return found, (wide + gaps)[:MAX_FLAGGED]


def counts(code):
  """{reason key: rows} of the rows that are not OK."""
  vals, cnt = np.unique(code[code != OK], return_counts=True)
  return dict(sorted((REASON_KEYS[int(v)], int(n)) for v, n in zip(vals, cnt)))


def bars_from(fields, keep):
  """The kept rows as [n, 6] float64 in BAR_COLUMNS order (absent columns are 0)."""
  bars = np.zeros((int(keep.sum()), len(shards.BAR_COLUMNS)), dtype=np.float64)
  for j, k in enumerate(shards.BAR_COLUMNS):
    if k in fields:
      bars[:, j] = fields[k].values[keep]
  return bars
