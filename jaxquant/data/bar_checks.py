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
    # Loose sample files (whole files are skipped, not rows).
    "bad_sample_file": "a .zst sample that cannot be decoded as .npy/.npz",
    "sample_mismatch": "a sample/label whose shape or dtype differs from the first one",
}

PRICE_FIELDS = ("open", "high", "low", "close")


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

  def run(self, pre_code, ts, fields, prefix="", no_data=None):
    """Codes every row; returns (code per row, index of the first error or None).

    Args:
      pre_code: file-level row problems (field count, time).
      ts: int64 ns per row.
      fields: {bar column: Field}.
      prefix: put before the reason in messages (TqSdk: the symbol).
      no_data: TqSdk rows where the symbol has no bar (skipped, not an error).
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
    else:  # DUP / BACK
      earlier = np.flatnonzero(self.code[:i] == OK)
      j = int(earlier[np.argmax(self.ts[earlier])])
      t, tj = fmt_ts(self.ts[i]), fmt_ts(self.ts[j])
      why = (f"duplicate timestamp {t} (same as line {self.lines[j]})" if c == DUP
             else f"timestamp {t} is earlier than {tj} on line {self.lines[j]} "
                  "(rows must be in increasing time order)")
    return f"{self.path}:{self.lines[i]}: {self.prefix}{why}"


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
