"""Time columns of bar CSVs: the built-in formats, their detection, parsing to int64 ns,
and UTC offsets turned into exchange local time.

The built-in formats and the strptime formats that use only %Y %m %d %H %M %S %f
are regular expressions. Rows laid out like the first matching row (same length,
the same characters outside its digit groups, digits inside them) are read digit by
digit with numpy: the regex would match them with the same groups, as it tells
digits only from non-digits. The other rows go through the regex with
pyarrow.compute; other strptime formats through `datetime.strptime` row by row.

Times are the wall clock as written. A time with a UTC offset (`...+08:00`, `...Z`)
or an epoch integer is an instant; `local_times` turns instants into the naive
exchange local time shards hold, by the rule stated in its docstring.
"""

import dataclasses
import datetime
import re
import zoneinfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxquant.data import bar_checks

_TAIL = r"(?:{sep}(?P<H>\d{{1,2}}):(?P<M>\d{{2}})(?::(?P<S>\d{{2}})(?:\.(?P<f>\d{{1,9}}))?)?{z})?"
# A UTC offset after an ISO time: Z, +HH:MM, +HHMM or +HH.
_OFFSET = r"(?:(?P<Z>Z)|(?P<zs>[+-])(?P<zh>\d{2})(?::?(?P<zm>\d{2}))?)?"
_TAIL_T = _TAIL.format(sep="[ T]", z=_OFFSET)
_TAIL_SP = _TAIL.format(sep=" +", z="")

# Built-in time formats tried by auto-detection, in order of preference.
TIME_FORMATS = (
    ("YYYY-MM-DD[ HH:MM[:SS[.f]][Z|+HH:MM]]",
     r"(?P<Y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})" + _TAIL_T),
    ("YYYY/MM/DD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})" + _TAIL_SP),
    ("DD.MM.YYYY[ HH:MM[:SS[.f]]]", r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<Y>\d{4})" + _TAIL_SP),
    ("M/D/YYYY[ HH:MM[:SS[.f]]]", r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<Y>\d{4})" + _TAIL_SP),
    # Before epoch: an 8-digit integer is a date, not seconds in 1970.
    ("YYYYMMDD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})(?P<m>\d{2})(?P<d>\d{2})" + _TAIL_SP),
    # MetaTrader exports.
    ("YYYY.MM.DD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})\.(?P<m>\d{1,2})\.(?P<d>\d{1,2})" + _TAIL_SP),
    ("epoch integer (s/ms/us/ns by magnitude)", r"-?\d+"),
)
EPOCH_UNITS = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}
_GROUPS = ("Y", "m", "d", "H", "M", "S", "f", "zh", "zm")
_DETECT_ROWS = 100
_INT = r"-?\d+"
_I64_MAX = np.iinfo(np.int64).max
# Epoch integers found by content (no time header) must land in these years.
_PLAUSIBLE = (np.datetime64("1971-01-01", "ns").astype(np.int64),
              np.datetime64("2100-01-01", "ns").astype(np.int64))


@dataclasses.dataclass
class TimeFormat:
  """One way of turning time strings into int64 ns."""
  name: str
  regex: str = None  # RE2 pattern with named groups Y m d H M S f (whole-string match).
  strptime: str = None  # Used row by row for directives the regex path lacks.
  epoch_factor: int = None  # Epoch integers: ns per unit.
  epoch: bool = False


def _compile_strptime(fmt):
  """A strptime format using only %Y %m %d %H %M %S %f as a regex; None for any other."""
  parts = {"Y": r"(?P<Y>\d{4})", "m": r"(?P<m>\d{1,2})", "d": r"(?P<d>\d{1,2})",
           "H": r"(?P<H>\d{1,2})", "M": r"(?P<M>\d{1,2})", "S": r"(?P<S>\d{1,2})",
           "f": r"(?P<f>\d{1,9})", "%": "%"}
  out, seen, i = [], set(), 0
  while i < len(fmt):
    ch = fmt[i]
    if ch == "%":
      if i + 1 >= len(fmt) or fmt[i + 1] not in parts or fmt[i + 1] in seen:
        return None
      seen.add(fmt[i + 1])
      out.append(parts[fmt[i + 1]])
      i += 2
    else:
      # strptime: whitespace matches any run of ASCII whitespace.
      out.append(r"[ \t\n\r\f\v]+" if ch.isspace() else re.escape(ch))
      i += 1
  if not {"Y", "m", "d"} <= seen:
    return None
  return "".join(out)


def user_time_format(fmt):
  """The TimeFormat of a --time-format value.

  Raises:
    IngestError: not a valid strptime format.
  """
  if fmt in EPOCH_UNITS:
    return TimeFormat(fmt, regex=_INT, epoch=True, epoch_factor=EPOCH_UNITS[fmt])
  rx = _compile_strptime(fmt)
  if rx is not None:
    return TimeFormat(fmt, regex=rx)
  try:
    datetime.datetime(2000, 1, 2, 3, 4, 5).strftime(fmt)
  except ValueError as e:
    raise bar_checks.IngestError(f"--time-format={fmt!r}: invalid format ({e})") from e
  return TimeFormat(fmt, strptime=fmt)


BUILTINS = [TimeFormat(name, regex=rx, epoch=name.startswith("epoch"))
            for name, rx in TIME_FORMATS]
ISO = BUILTINS[0]
EPOCH_NS = TimeFormat("epoch_ns", regex=_INT, epoch=True, epoch_factor=1)


def _matches(values, regex):
  return pc.fill_null(pc.match_substring_regex(values, f"^(?:{regex})$"), False)


def detect_time_format(values):
  """The built-in format matching most of the first rows (ties: list order), or None."""
  sample = values.slice(0, _DETECT_ROWS)
  best, best_n = None, 0
  for f in BUILTINS:
    n = pc.sum(_matches(sample, f.regex).cast(pa.int64())).as_py() or 0
    if n > best_n:
      best, best_n = f, n
  if best is not None and best.epoch:
    top = max(abs(int(v)) for v in pc.filter(sample, _matches(sample, best.regex)).to_pylist())
    # Magnitude of "now": ~1.7e9 s, 1.7e12 ms, 1.7e15 us, 1.7e18 ns.
    unit, factor = (("s", 10**9) if top < 10**11 else ("ms", 10**6) if top < 10**14
                    else ("us", 10**3) if top < 10**17 else ("ns", 1))
    best = TimeFormat(f"epoch_{unit}", regex=best.regex, epoch=True, epoch_factor=factor)
  return best


def time_like(values):
  """The format of a column whose header says nothing, if its first rows hold times.

  Times: 90 % of the first non-empty rows parse with the detected built-in format,
  and epoch integers fall in 1971-2099 (row numbers and counts do not).

  Args:
    values: pyarrow string array, already stripped.
  """
  sample = pc.filter(values.slice(0, _DETECT_ROWS),
                     pc.not_equal(values.slice(0, _DETECT_ROWS), ""))
  fmt = detect_time_format(sample) if len(sample) else None
  if fmt is None:
    return None
  ns, ok = parse_times(sample, fmt)
  if ok.sum() < 0.9 * len(sample):
    return None
  if fmt.epoch and not ((ns[ok] >= _PLAUSIBLE[0]) & (ns[ok] < _PLAUSIBLE[1])).all():
    return None
  return fmt


def _days_from_civil(y, m, d):
  """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
  y = y - (m <= 2)
  era = np.floor_divide(y, 400)
  yoe = y - era * 400
  doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
  doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468


_DIM = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _compose(fields, ok):
  """Fields [9, n] (Y m d H M S ns zh zm) -> int64 ns since epoch, and validity."""
  y, mo, d, h, mi, s, f, zh, zm = fields
  # Dates once per run of equal dates (bars come in time order: few runs).
  key = (y * 100 + mo) * 100 + d
  head = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if key.size else key
  yr, mr, dr = y[head], mo[head], d[head]
  leap = (yr % 4 == 0) & ((yr % 100 != 0) | (yr % 400 == 0))
  mc = np.clip(mr, 0, 12)
  # Years 1700-2261 keep int64 nanoseconds far from overflow.
  good = (yr >= 1700) & (yr <= 2261) & (mr >= 1) & (mr <= 12) & (dr >= 1) \
      & (dr <= _DIM[mc] + ((mc == 2) & leap))
  runs = np.diff(np.append(head, key.size))
  days = np.repeat(_days_from_civil(yr, np.where(good, mr, 1), dr), runs)
  ok = ok & np.repeat(good, runs) & (h < 24) & (mi < 60) & (s < 60) & (zh < 24) & (zm < 60)
  ns = (days * 86400 + h * 3600 + mi * 60 + s) * 10**9 + f
  ns[~ok] = 0
  return ns, ok


def _ints(strings):
  """Digit strings (nulls, and "" from unmatched optional groups, are 0) -> int64."""
  return pc.fill_null(pc.cast(pc.utf8_lpad(strings, 1, "0"), pa.int64()), 0).to_numpy()


def _parse_epoch(values, factor):
  n = len(values)
  ok = _matches(values, _INT).to_numpy(zero_copy_only=False)
  # Up to 18 digits fit int64; longer ones (rare, mostly out of range) go through int().
  short = ok & (pc.utf8_length(values).to_numpy(zero_copy_only=False) <= 18)
  x = np.zeros(n, dtype=np.int64)
  x[short] = pc.cast(pc.filter(values, short), pa.int64()).to_numpy()
  lim = _I64_MAX // factor
  for i in np.flatnonzero(ok & ~short):
    v = int(values[int(i)].as_py())
    if -lim <= v <= lim:
      x[i] = v
    else:
      ok[i] = False
  ok &= np.abs(x) <= lim
  return np.where(ok, x, 0) * factor, ok


def _like_first(values, regex, fields, sign):
  """The fast path: fills fields/sign of the rows laid out like the first match.

  Returns the rows it read (bool); the others are left for the regex.
  """
  n = len(values)
  done = np.zeros(n, dtype=bool)
  rx = re.compile(regex, re.ASCII)
  head = values.slice(0, _DETECT_ROWS).to_pylist()
  m = next((m for v in head if v is not None and v.isascii()
            and (m := rx.fullmatch(v)) is not None), None)
  if m is None or values.null_count or values.type != pa.string():
    return done
  first = np.frombuffer(m.string.encode(), np.uint8)
  width = first.size
  offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + n + 1]
  same = np.diff(offsets) == width
  if not same.any():
    return done
  raw = np.frombuffer(values.buffers()[2], np.uint8)
  starts = offsets[:-1][same]
  spans = [(k, m.span(g)) for k, g in enumerate(_GROUPS)
           if g in rx.groupindex and m.start(g) >= 0 and m.end(g) > m.start(g)]
  # Bytes allowed at each position, lo .. lo + span: a digit inside a group, else
  # the first row's byte (Z and the offset's sign too: another sign is left over).
  lo, span = first.copy(), np.zeros(width, dtype=np.uint8)
  for _, (a, b) in spans:
    lo[a:b], span[a:b] = ord("0"), 9
  group = {p: c for c, (_, (a, b)) in enumerate(spans) for p in range(a, b)}
  scale = [10 ** (9 - (b - a)) if k == 6 else 1 for k, (a, b) in spans]  # f: digits -> ns
  rows = np.flatnonzero(same)
  good = np.ones(rows.size, dtype=bool)
  step = 1 << 15  # Rows per block, column by column: the temporaries stay in cache.
  for s in range(0, rows.size, step):
    if rows.size == n:
      block = raw[starts[0] + s * width:starts[0] + min(s + step, n) * width].reshape(-1, width)
    else:
      block = raw[starts[s:s + step, None] + np.arange(width)]
    ok, acc = good[s:s + step], np.zeros((len(spans), block.shape[0]), dtype=np.int64)
    for p in range(width):
      d = block[:, p] - lo[p]  # uint8: a byte below lo wraps above span.
      ok &= d <= span[p]
      if p in group:
        acc[group[p]] *= 10
        acc[group[p]] += d
    at = slice(s, s + step) if rows.size == n else rows[s:s + step]
    for c, (k, _) in enumerate(spans):
      fields[k, at] = acc[c] * scale[c]  # Bad rows: overwritten by the regex.
  idx = rows[good]
  if "zs" in rx.groupindex and m.start("zs") >= 0:
    sign[idx] = 1 if m.group("zs") == "+" else -1
  elif "Z" in rx.groupindex and m.start("Z") >= 0:
    sign[idx] = 1
  done[idx] = True
  return done


def parse_zoned(values, fmt):
  """Parses time strings, with their UTC offsets.

  Args:
    values: pyarrow string array (or a list of str), already stripped.
    fmt: a TimeFormat.

  Returns:
    (ns[int64]: the wall clock as written, ok[bool], offset[int64 ns],
    zoned[bool]: the row carries an offset; epoch rows are UTC, offset 0).
    ns is 0 where not ok.
  """
  if not isinstance(values, (pa.Array, pa.ChunkedArray)):
    values = pa.array(values, pa.string())
  if isinstance(values, pa.ChunkedArray):
    values = values.combine_chunks()
  n = len(values)
  if fmt.epoch:
    ns, ok = _parse_epoch(values, fmt.epoch_factor)
    return ns, ok, np.zeros(n, dtype=np.int64), ok.copy()
  fields = np.zeros((len(_GROUPS), n), dtype=np.int64)
  sign = np.zeros(n, dtype=np.int64)  # +1 / -1: an offset (Z: +1), 0: none.
  if fmt.regex is not None:
    ok = _like_first(values, fmt.regex, fields, sign)
    rest = np.flatnonzero(~ok)
    if rest.size:
      groups = pc.extract_regex(values.take(pa.array(rest)), f"^(?:{fmt.regex})$")
      ok[rest] = groups.is_valid().to_numpy(zero_copy_only=False)
      present = {groups.type.field(k).name for k in range(groups.type.num_fields)}
      for k, g in enumerate(_GROUPS):
        if g in present:
          text = pc.struct_field(groups, g)
          if g == "f":  # Fraction digits -> nanoseconds.
            text = pc.utf8_rpad(text, 9, "0")
          fields[k, rest] = _ints(text)
      for g, mark, s in (("Z", "Z", 1), ("zs", "+", 1), ("zs", "-", -1)):
        if g in present:
          text = pc.fill_null(pc.struct_field(groups, g), "")
          sign[rest[pc.equal(text, mark).to_numpy(zero_copy_only=False)]] = s
  else:
    ok = np.zeros(n, dtype=bool)
    for i, v in enumerate(values.to_pylist()):
      try:
        d = datetime.datetime.strptime(v, fmt.strptime)
      except (TypeError, ValueError):
        continue
      fields[:7, i] = (d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond * 1000)
      if d.utcoffset() is not None:  # %z
        off = int(d.utcoffset().total_seconds())
        sign[i] = -1 if off < 0 else 1
        fields[7, i], fields[8, i] = abs(off) // 3600, abs(off) % 3600 // 60
      ok[i] = True
  ns, ok = _compose(fields, ok)
  if not sign.any():
    return ns, ok, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
  offset = sign * (fields[7] * 3600 + fields[8] * 60) * 10**9
  return ns, ok, np.where(ok, offset, 0), ok & (sign != 0)


def parse_times(values, fmt):
  """Parses time strings to the wall clock as written (offsets ignored).

  Args:
    values: pyarrow string array (or a list of str), already stripped.
    fmt: a TimeFormat.

  Returns:
    (ns[int64], ok[bool]); ns is 0 where not ok.
  """
  ns, ok, _, _ = parse_zoned(values, fmt)
  return ns, ok


def fmt_offset(ns):
  """A UTC offset in ns as `+HH:MM`."""
  m = abs(int(ns)) // (60 * 10**9)
  return f"{'+' if ns >= 0 else '-'}{m // 60:02d}:{m % 60:02d}"


def zone(name):
  """The tzinfo of a --timezone value: an IANA name (zoneinfo), `UTC`, or `+HH:MM`.

  Raises:
    IngestError: an unknown zone.
  """
  m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name or "")
  if m:
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return datetime.timezone(datetime.timedelta(minutes=minutes if m.group(1) == "+"
                                                else -minutes))
  if name in ("UTC", "Z"):
    return datetime.timezone.utc
  try:
    return zoneinfo.ZoneInfo(name)
  except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
    raise bar_checks.IngestError(
        f"--timezone={name!r}: unknown time zone (expected an IANA name such as "
        "Asia/Shanghai, UTC, or an offset such as +08:00; pip install tzdata if this "
        "system has no zone database)") from None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _zone_offsets(utc, tz):
  """The UTC offset (ns) of tz at each instant (int64 ns UTC)."""
  def off(sec):
    d = (_EPOCH + datetime.timedelta(seconds=int(sec))).astimezone(tz)
    return int(d.utcoffset().total_seconds()) * 10**9

  hours, inv = np.unique(utc // (3600 * 10**9), return_inverse=True)
  # One offset per hour, unless it changes inside it (a DST switch): then per row.
  start = np.array([off(h * 3600) for h in hours], dtype=np.int64)
  end = np.array([off(h * 3600 + 3599) for h in hours], dtype=np.int64)
  out = start[inv.reshape(-1)]
  for i in np.flatnonzero((start != end)[inv.reshape(-1)]):
    out[i] = off(utc[i] // 10**9)
  return out


def local_times(ns, ok, offset, zoned, timezone=None, epoch=False):
  """Exchange local time of parsed times, and the rule applied (None: nothing to say).

  The rule: times without an offset are kept as written. Instants (a UTC offset or
  epoch time) become, without `timezone`, the wall clock at the file's most common
  offset (epoch: UTC): for a file of one offset exactly what is written, and for one
  whose offset changes (DST) strictly increasing. With `timezone` (an IANA zone via
  zoneinfo, `UTC`, `+HH:MM`) each instant becomes that zone's wall clock, DST
  included (a market open through a DST fall-back hour then repeats an hour).

  Args:
    ns, ok, offset, zoned: `parse_zoned`'s output.
    timezone: a --timezone value or None.
    epoch: the times are epoch integers.
  """
  use = ok & zoned
  if not use.any():
    if timezone is None:
      return ns, None
    return ns, (f"times carry no UTC offset: kept as written (--timezone={timezone} "
                "applies only to times with an offset and to epoch times)")
  utc = ns - offset
  if timezone is not None:
    local = np.where(use, utc + _zone_offsets(np.where(use, utc, 0), zone(timezone)), ns)
    what = "epoch (UTC) times" if epoch else "times with UTC offsets"
    return local, f"{what} converted to {timezone} wall clock (--timezone)"
  if epoch:
    return ns, "epoch times are UTC: kept as UTC (--timezone=ZONE converts)"
  vals, first, cnt = np.unique(offset[use], return_index=True, return_counts=True)
  # Most rows; ties: the offset seen first.
  common = int(vals[np.lexsort((first, -cnt))[0]])
  if vals.size == 1:
    return ns, (f"times carry the UTC offset {fmt_offset(common)}: kept as written "
                "(--timezone=ZONE converts)")
  seen = ", ".join(f"{fmt_offset(v)} ({c} rows)" for v, c in zip(vals, cnt))
  return (np.where(use, utc + common, ns),
          f"times carry UTC offsets {seen}: all expressed at {fmt_offset(common)}, the "
          "file's most common offset (--timezone=ZONE converts to a zone's wall clock)")
