"""Time columns of bar CSVs: the built-in formats, their detection, and parsing to int64 ns.

Times are naive wall clock as written (shards hold exchange local time). The
built-in formats and the strptime formats that use only %Y %m %d %H %M %S %f
are regular expressions run by pyarrow.compute over the whole column, their
groups composed into nanoseconds with numpy; other strptime formats go
through `datetime.strptime` row by row (exact, and much slower).
"""

import dataclasses
import datetime
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxquant.data import bar_checks

_TAIL = r"(?:{sep}(?P<H>\d{{1,2}}):(?P<M>\d{{2}})(?::(?P<S>\d{{2}})(?:\.(?P<f>\d{{1,9}}))?)?)?"
_TAIL_T = _TAIL.format(sep="[ T]")
_TAIL_SP = _TAIL.format(sep=" +")

# Built-in time formats tried by auto-detection, in order of preference.
TIME_FORMATS = (
    ("YYYY-MM-DD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})" + _TAIL_T),
    ("YYYY/MM/DD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})" + _TAIL_SP),
    ("DD.MM.YYYY[ HH:MM[:SS[.f]]]", r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<Y>\d{4})" + _TAIL_SP),
    ("M/D/YYYY[ HH:MM[:SS[.f]]]", r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<Y>\d{4})" + _TAIL_SP),
    # Before epoch: an 8-digit integer is a date, not seconds in 1970.
    ("YYYYMMDD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})(?P<m>\d{2})(?P<d>\d{2})" + _TAIL_SP),
    ("epoch integer (s/ms/us/ns by magnitude)", r"-?\d+"),
)
EPOCH_UNITS = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}
_GROUPS = ("Y", "m", "d", "H", "M", "S", "f")
_DETECT_ROWS = 100
_INT = r"-?\d+"
_I64_MAX = np.iinfo(np.int64).max


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
  """Fields [7, n] (Y m d H M S ns) -> int64 ns since epoch, and validity."""
  y, mo, d, h, mi, s, f = fields
  leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
  mc = np.clip(mo, 0, 12)
  dim = _DIM[mc] + ((mc == 2) & leap)
  # Years 1700-2261 keep int64 nanoseconds far from overflow.
  ok = ok & (y >= 1700) & (y <= 2261) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim) \
      & (h < 24) & (mi < 60) & (s < 60)
  days = _days_from_civil(y, np.where(ok, mo, 1), d)
  ns = (days * 86400 + h * 3600 + mi * 60 + s) * 10**9 + f
  return np.where(ok, ns, 0).astype(np.int64), ok


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


def parse_times(values, fmt):
  """Parses time strings.

  Args:
    values: pyarrow string array (or a list of str), already stripped.
    fmt: a TimeFormat.

  Returns:
    (ns[int64], ok[bool]); ns is 0 where not ok.
  """
  if not isinstance(values, (pa.Array, pa.ChunkedArray)):
    values = pa.array(values, pa.string())
  if fmt.epoch:
    return _parse_epoch(values, fmt.epoch_factor)
  n = len(values)
  fields = np.zeros((7, n), dtype=np.int64)
  if fmt.regex is not None:
    groups = pc.extract_regex(values, f"^(?:{fmt.regex})$")
    ok = groups.is_valid().to_numpy(zero_copy_only=False)
    present = {groups.type.field(k).name for k in range(groups.type.num_fields)}
    for k, g in enumerate(_GROUPS):
      if g in present:
        text = pc.struct_field(groups, g)
        if g == "f":  # Fraction digits -> nanoseconds.
          text = pc.utf8_rpad(text, 9, "0")
        fields[k] = _ints(text)
  else:
    ok = np.zeros(n, dtype=bool)
    for i, v in enumerate(values.to_pylist()):
      try:
        d = datetime.datetime.strptime(v, fmt.strptime)
      except (TypeError, ValueError):
        continue
      # Keep the wall clock as written: shards hold naive exchange local time.
      fields[:, i] = (d.year, d.month, d.day, d.hour, d.minute, d.second,
                      d.microsecond * 1000)
      ok[i] = True
  return _compose(fields, ok)
