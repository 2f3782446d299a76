"""Bar CSVs -> validated series: generic OHLCV files and TqSdk exports.

`csv_table` reads the rows with pyarrow; here the columns are matched to bar
fields by name (the time column, when no header names it, by its content),
numbers are parsed with pyarrow.compute (Python's float() decides the few cells
pyarrow's cast reads differently), times with `bar_times`, and every row goes
through the rules of `bar_checks`.
"""

import dataclasses
import gzip
import math
import os
import re
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxquant.data import bar_checks
from jaxquant.data import bar_times
from jaxquant.data import csv_fast
from jaxquant.data import csv_table
from jaxquant.data import samples
from jaxquant.data import shards

# Spellings of "no value" that count as an empty field (TqSdk writes "#N/A").
MISSING = ("", "#n/a", "n/a", "na", "null", "none")
_MISSING = pa.array(MISSING)
# Decimals and float()'s spellings of NaN and infinity, which pyarrow's cast
# reads exactly as float() does.
_DECIMAL = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_NONFINITE = pa.array([sign + word for sign in ("", "+", "-")
                       for word in ("nan", "inf", "infinity")])

# Clean files through `csv_fast` (tests turn it off to compare with the exact path).
FAST = True

_FIELD_ALIASES = {
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume", "vol"),
    "open_interest": ("openinterest", "oi", "closeoi"),
}
# Single time columns, in order of preference (normalised names).
_TIME_ALIASES = ("datetime", "timestamp", "time", "date", "gmttime", "localtime")
_TIME_HELP = "time, datetime, date, timestamp, gmt time, local time, or date + time"


@dataclasses.dataclass
class Series:
  """One instrument read from one file."""
  instrument: str
  timestamps: np.ndarray
  bars: np.ndarray
  skipped: dict
  notes: list
  source: str  # The path as given (for messages).
  source_name: str  # Base name (stored; paths are not reproducible).
  sha256: str
  kind: str  # "csv" or "tqsdk".
  extra_meta: dict
  # Kept but suspicious (bar_checks.flag_suspicious): {reason: count} and the first messages.
  flagged: dict = dataclasses.field(default_factory=dict)
  flag_messages: list = dataclasses.field(default_factory=list)


def check_on_error(on_error):
  if on_error not in ("stop", "skip"):
    raise bar_checks.IngestError(f"--on-error={on_error!r}: expected 'stop' or 'skip'")


def _numbers(raw):
  """Strings -> (float64 values, problem code per row: OK / EMPTY / NONNUM / NONFIN)."""
  n = len(raw)
  code = np.zeros(n, dtype=np.int8)
  unsure = np.zeros(n, dtype=bool)
  try:  # The cast refuses blanks: a column it reads whole needs no trimming.
    text, v = raw, pc.cast(raw, pa.float64()).to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:
    text, v = pc.utf8_trim_whitespace(raw), None
  try:
    if v is None:
      v = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:
    lower = pc.utf8_lower(text)
    missing = pc.is_in(lower, value_set=_MISSING).to_numpy(zero_copy_only=False)
    num = (pc.match_substring_regex(text, _DECIMAL).to_numpy(zero_copy_only=False)
           | pc.is_in(lower, value_set=_NONFINITE).to_numpy(zero_copy_only=False))
    v = np.full(n, np.nan)
    v[num] = pc.cast(pc.filter(text, pa.array(num)), pa.float64()).to_numpy()
    code[missing] = bar_checks.EMPTY
    unsure = ~num & ~missing
  nonfinite = ~np.isfinite(v) & ~unsure & (code == bar_checks.OK)
  if nonfinite.any():  # pyarrow also reads "nan(1)", which float() refuses.
    known = pc.is_in(pc.utf8_lower(text), value_set=_NONFINITE).to_numpy(zero_copy_only=False)
    code[nonfinite & known] = bar_checks.NONFIN
    unsure |= nonfinite & ~known
  # float() decides the rest: "1_000", other digits, text.
  todo = np.flatnonzero(unsure)
  if todo.size and not v.flags.writeable:
    v = v.copy()
  for i in todo:
    s = raw[int(i)].as_py()
    try:
      x = float(s)
    except ValueError:
      v[i] = np.nan
      code[i] = bar_checks.EMPTY if s.strip().lower() in MISSING else bar_checks.NONNUM
      continue
    v[i] = x
    code[i] = bar_checks.OK if math.isfinite(x) else bar_checks.NONFIN
  return v, code


def _field(header, j, columns):
  v, code = _numbers(columns[j])
  return bar_checks.Field(header[j], columns[j], v, code)


def _norm(name):
  """Header name for matching: lower case, letters and digits only."""
  return re.sub(r"[^a-z0-9]", "", name.lower())


def _stem(path):
  name = os.path.basename(path)
  for suffix in (".csv.zst", ".csv.gz", ".zst", ".gz", ".csv"):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return os.path.splitext(name)[0]


def _missing_columns(path, missing, header):
  found = ", ".join(repr(h) for h in header)
  return bar_checks.IngestError(f"{path}:1: missing required column(s) {', '.join(missing)}; "
                                f"found: {found}")


def _bar_columns(path, header, columns):
  """Generic CSV: {bar column: index or None}, the time column(s), and their format
  when found by content (else None)."""
  norm = [_norm(h) for h in header]

  def find(aliases):
    hits = [j for j, n in enumerate(norm) if n in aliases]
    if len(hits) > 1:
      raise bar_checks.IngestError(f"{path}:1: ambiguous columns "
                                   f"{', '.join(repr(header[j]) for j in hits)}")
    return hits[0] if hits else None

  cols = {k: find(a) for k, a in _FIELD_ALIASES.items()}
  # Time: a combined column, else separate date + time, else any single alias.
  tcols = None
  for alias in ("datetime", "timestamp"):
    if (j := find((alias,))) is not None:
      tcols = (j,)
      break
  if tcols is None:
    jd, jt = find(("date",)), find(("time",))
    if jd is not None and jt is not None:
      tcols = (jd, jt)
    else:
      for alias in _TIME_ALIASES:
        if (j := find((alias,))) is not None:
          tcols = (j,)
          break
  found = None
  if tcols is None and columns is not None:
    tcols, found = _time_by_content(path, header, columns, set(cols.values()))
  missing = [k for k in bar_checks.PRICE_FIELDS if cols[k] is None]
  if tcols is None:
    missing.insert(0, f"time ({_TIME_HELP})")
  if missing:
    raise _missing_columns(path, missing, header)
  return cols, tcols, found


def _time_by_content(path, header, columns, taken):
  """The one other column whose first rows hold times (a pandas index, `Unnamed: 0`).

  Returns ((index,), TimeFormat) or (None, None). Dates and date-times beat epoch
  integers; two columns of the same kind are ambiguous.
  """
  hits = []
  for j in range(len(header)):
    if j not in taken:
      fmt = bar_times.time_like(pc.utf8_trim_whitespace(columns[j].slice(0, 100)))
      if fmt is not None:
        hits.append((fmt.epoch, j, fmt))
  hits.sort(key=lambda h: h[0])
  if len(hits) > 1 and hits[0][0] == hits[1][0]:
    raise bar_checks.IngestError(
        f"{path}:1: no column is named time, datetime, date or timestamp and several hold "
        f"times ({', '.join(repr(header[h[1]]) for h in hits)}): rename the one to use")
  return ((hits[0][1],), hits[0][2]) if hits else (None, None)


def _read_generic(path, table, time_format, on_error, max_gap, max_bar_range, timezone):
  """Generic OHLCV CSV -> one series named after the file stem."""
  header, columns, lines, lens, wrong = table
  cols, tcols, found = _bar_columns(path, header, columns)
  pre = np.where(wrong, bar_checks.FIELDS, bar_checks.OK).astype(np.int8)
  tvals = pc.utf8_trim_whitespace(columns[tcols[0]])
  if len(tcols) == 2:
    tvals = pc.binary_join_element_wise(tvals, pc.utf8_trim_whitespace(columns[tcols[1]]), " ")
  if time_format:
    fmt = bar_times.user_time_format(time_format)
  else:
    fmt = found or bar_times.detect_time_format(tvals)
    if fmt is None:
      raise bar_checks.IngestError(f"{path}:{lines[0]}: unparsable time {tvals[0].as_py()!r}: "
                                   "no known format matches the first rows (pass --time-format)")
  ts, tok, offset, zoned = bar_times.parse_zoned(tvals, fmt)
  pre[(pre == bar_checks.OK) & ~tok] = bar_checks.TIME
  # Times with an offset and times without cannot be ordered together.
  naive = np.flatnonzero(tok & ~zoned) if zoned.any() else np.zeros(0, dtype=np.int64)
  pre[naive[pre[naive] == bar_checks.OK]] = bar_checks.TIME
  first_zoned = lines[np.argmax(zoned)] if naive.size else None
  ts, rule = bar_times.local_times(ts, tok, offset, zoned, timezone, fmt.epoch)
  fields = {k: _field(header, j, columns) for k, j in cols.items() if j is not None}
  notes = [] if found is None else [f"time column {header[tcols[0]]!r} (column "
                                    f"{tcols[0] + 1}) found by its content ({fmt.name})"]
  notes += _notes(cols, rule)

  def time_text(i):
    if tok[i]:
      return (f"time {tvals[int(i)].as_py()!r} has no UTC offset, unlike line {first_zoned} "
              "(write every time with its offset)")
    return f"unparsable time {tvals[int(i)].as_py()!r} (expected {fmt.name})"

  chk = bar_checks.Checker(path, lines, len(header), lens, time_text)
  code, first = chk.run(pre, ts, fields, max_bar_range=max_bar_range)
  if first is not None and on_error == "stop":
    raise bar_checks.IngestError(chk.message(first))
  keep = code == bar_checks.OK
  return [Series(_stem(path), ts[keep], bar_checks.bars_from(fields, keep),
                 bar_checks.counts(code), notes, path, os.path.basename(path), "", "csv",
                 _meta(fmt, rule), *bar_checks.flag_suspicious(chk, max_gap, on_error))]


def _meta(fmt, rule):
  return {"time_format": fmt.name, **({"time_rule": rule} if rule else {})}


def _notes(cols, rule):
  """The summary's notes of a generic CSV: the time rule applied, absent columns."""
  return ([rule] if rule else []) + [
      f"no {name} column: {k} set to 0" for k, name in (("volume", "volume"),
                                                         ("open_interest", "open interest"))
      if cols[k] is None]


def _read_clean(path, data, time_format, on_error, max_gap, max_bar_range, timezone):
  """A clean generic CSV without a problem, through `csv_fast`; None: read it exactly."""
  clean = csv_table.clean_header(data)
  if clean is None or "datetime_nano" in clean[0]:
    return None
  header, delim, start = clean
  try:
    cols, tcols, _ = _bar_columns(path, header, None)
  except bar_checks.IngestError:
    return None
  fmt = bar_times.user_time_format(time_format) if time_format else None
  got = None if len(tcols) != 1 else csv_fast.read_bars(
      data, start, len(header), delim, tcols[0],
      {k: j for k, j in cols.items() if j is not None}, fmt)
  if got is None:
    return None
  fmt, ns, offset, zoned, values = got
  if zoned.any() and not zoned.all():
    return None
  ts, rule = bar_times.local_times(ns, np.ones(ns.size, bool), offset, zoned, timezone, fmt.epoch)
  ok = np.zeros(ns.size, dtype=np.int8)
  fields = {k: bar_checks.Field(header[j], None, values[shards.BAR_COLUMNS.index(k)], ok)
            for k, j in cols.items() if j is not None}
  chk = bar_checks.Checker(path, np.arange(2, ns.size + 2), len(header), None, None)
  if chk.run(ok, ts, fields, max_bar_range=max_bar_range)[1] is not None:
    return None  # A bad row: the exact reader names it.
  # values.T: [rows, 6] like the exact path's bars, each column contiguous (no copy).
  return [Series(_stem(path), ts, values.T, {}, _notes(cols, rule), path,
                 os.path.basename(path), "", "csv", _meta(fmt, rule),
                 *bar_checks.flag_suspicious(chk, max_gap, on_error))]


def _read_tqsdk(path, table, on_error, max_gap, max_bar_range):
  """TqSdk DataDownloader export: one series per `<SYMBOL>.<field>` group."""
  header, columns, lines, lens, wrong = table
  want = {"open": "open", "high": "high", "low": "low", "close": "close",
          "volume": "volume", "close_oi": "open_interest"}
  symbols = {}
  for j, h in enumerate(header):
    if h in ("datetime", "datetime_nano") or "." not in h:
      continue
    sym, fld = h.rsplit(".", 1)
    symbols.setdefault(sym, {})
    if fld in want:
      symbols[sym][want[fld]] = j
  missing = []
  if "datetime" not in header:
    missing.append("datetime")
  if not symbols:
    missing.append("<SYMBOL>.open/high/low/close")
  for sym, cols in symbols.items():
    missing += [f"{sym}.{k}" for k in bar_checks.PRICE_FIELDS if k not in cols]
  if missing:
    raise _missing_columns(path, missing, header)

  pre = np.where(wrong, bar_checks.FIELDS, bar_checks.OK).astype(np.int8)
  nano_raw = pc.utf8_trim_whitespace(columns[header.index("datetime_nano")])
  dt_raw = pc.utf8_trim_whitespace(columns[header.index("datetime")])
  nano, nok = bar_times.parse_times(nano_raw, bar_times.EPOCH_NS)
  local, lok = bar_times.parse_times(dt_raw, bar_times.ISO)
  pre[(pre == bar_checks.OK) & ~(nok & lok)] = bar_checks.TIME
  # datetime_nano is UTC; the datetime string is exchange local time (Beijing
  # for TqSdk). Shards hold naive local time, so shift datetime_nano by the
  # file's offset (the most common local - nano, in whole minutes).
  both = pre == bar_checks.OK
  offset = 0
  if both.any():
    mins = np.round((local[both] - nano[both]) / 60e9).astype(np.int64)
    vals, cnt = np.unique(mins, return_counts=True)
    offset = int(vals[np.argmax(cnt)]) * 60 * 10**9
  # The string may be truncated to microseconds: allow < 1 us of disagreement.
  pre[(pre == bar_checks.OK) & (np.abs(local - nano - offset) >= 1000)] = bar_checks.MISMATCH
  ts = nano + offset
  sign = "+" if offset >= 0 else "-"
  off_min = abs(offset) // (60 * 10**9)
  off_desc = f"{sign}{off_min // 60:02d}:{off_min % 60:02d}"

  def time_text(i):
    return (f"unparsable time: datetime {dt_raw[int(i)].as_py()!r} (expected "
            f"YYYY-MM-DD HH:MM:SS[.f]), datetime_nano {nano_raw[int(i)].as_py()!r} "
            "(expected an integer)")

  def mismatch_text(i):
    return (f"datetime {dt_raw[int(i)].as_py()!r} does not match datetime_nano "
            f"{nano_raw[int(i)].as_py()!r} shifted by the file's UTC offset {off_desc}")

  out, first_err = [], None
  for sym, cols in symbols.items():
    fields = {k: _field(header, j, columns) for k, j in cols.items()}
    # Symbols aligned to the first one have no bar where they don't trade:
    # every price missing (TqSdk writes "#N/A" or "nan").
    no_data = np.ones(len(lines), dtype=bool)
    for k in bar_checks.PRICE_FIELDS:
      f = fields[k]
      no_data &= (f.code == bar_checks.EMPTY) | ((f.code == bar_checks.NONFIN)
                                                 & np.isnan(f.values))
    chk = bar_checks.Checker(path, lines, len(header), lens, time_text, mismatch_text)
    code, first = chk.run(pre, ts, fields, prefix=f"{sym}: ", no_data=no_data,
                          max_bar_range=max_bar_range)
    if first is not None and (first_err is None or first < first_err[0]):
      first_err = (first, chk)
    # Gaps only once every row is valid (the row error is the first problem).
    flagged = bar_checks.flag_suspicious(chk, max_gap, on_error) if first_err is None \
        or on_error != "stop" else ({}, [])
    notes = []
    if "volume" not in cols:
      notes.append("no volume column: volume set to 0")
    if "open_interest" not in cols:
      notes.append("no close_oi column: open_interest set to 0")
    keep = code == bar_checks.OK
    out.append(Series(sym, ts[keep], bar_checks.bars_from(fields, keep),
                      bar_checks.counts(code), notes, path, os.path.basename(path), "",
                      "tqsdk", {"time_format": "datetime_nano", "utc_offset": off_desc},
                      *flagged))
  if first_err is not None and on_error == "stop":
    raise bar_checks.IngestError(first_err[1].message(first_err[0]))
  return out


def decompress(path, data):
  """The CSV bytes of a `.gz` file (other files as they are).

  Raises:
    IngestError: a corrupt or truncated gzip file.
  """
  if not path.lower().endswith(".gz"):
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise bar_checks.IngestError(f"{path}: cannot decompress gzip ({e})") from None


def read_csv_bytes(path, data, time_format, on_error, max_gap=None,
                   max_bar_range=bar_checks.MAX_BAR_RANGE, timezone=None):
  """The series of one CSV's bytes (sha256 left empty for the caller).

  max_gap: longest step between kept rows, in ns (None: bar_checks.MAX_GAP; 0: any).
  max_bar_range: widest high - low of a bar, in the series' median closes (0: any).
  timezone: --timezone (`bar_times.local_times`); None keeps the file's own offset.
  A `.gz` file's bytes are decompressed first.
  """
  data = decompress(path, data)
  if max_gap is None:
    max_gap = bar_checks.gap_ns(bar_checks.MAX_GAP)
  if FAST:
    got = _read_clean(path, data, time_format, on_error, max_gap, max_bar_range, timezone)
    if got is not None:
      return got
  table = csv_table.read_table(path, data)
  if "datetime_nano" in table[0]:
    return _read_tqsdk(path, table, on_error, max_gap, max_bar_range)
  return _read_generic(path, table, time_format, on_error, max_gap, max_bar_range, timezone)


def read_csv_bars(path, time_format=None, on_error="stop", timezone=None):
  """Reads and validates one bar CSV (generic OHLCV or TqSdk export).

  Args:
    path: a `.csv` file (or a compressed `.csv.zst` / `.csv.gz`).
    time_format: strptime format of the time column (also `epoch_s`,
      `epoch_ms`, `epoch_us`, `epoch_ns`); None auto-detects it from the
      first rows among `bar_times.TIME_FORMATS`. Ignored for TqSdk files.
    on_error: "stop" raises on the first bad row; "skip" drops bad rows and
      counts them.
    timezone: times with a UTC offset, and epoch times, become this zone's wall
      clock (IANA name, `UTC`, `+HH:MM`); None: the file's most common offset
      (`bar_times.local_times`). Ignored for TqSdk files.

  Returns:
    {instrument: (timestamps[int64 ns, naive local time], bars[n, 6] in
    BAR_COLUMNS order, skipped_counts{reason: rows})}. A generic CSV gives
    one entry named after the file stem; a TqSdk file one per symbol.

  Raises:
    IngestError: `<file>:<line>: <reason>` for the first problem (stop mode)
      or for a file-level problem (missing column, no rows, ...).
  """
  check_on_error(on_error)
  path = os.fspath(path)
  data = samples.read_file(path)
  if path.lower().endswith(".zst"):
    data = samples.zstd_decompress(path, data)
    if samples.npy_kind(data):
      raise bar_checks.IngestError(f"{path}: is a NumPy sample file, not a CSV")
  return {s.instrument: (s.timestamps, s.bars, s.skipped)
          for s in read_csv_bytes(path, data, time_format, on_error, timezone=timezone)}
