"""The CSV reader that ingest used before pyarrow, kept only as benchmarks/ingest.py's baseline.

Recovered verbatim from `git show 6bac7c5^:jaxquant/data/ingest.py` (its CSV half:
tokenizing with the standard `csv` module, a regex number and time parser, the same
rejection rules), with the shard and sample-file code cut away and `BAR_COLUMNS`
taken from `jaxquant.data.shards`. Nothing in jaxquant imports it; it is not
maintained and keeps its original 4-space style.
"""

import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import math
import os
import re
from datetime import datetime
from typing import Iterable, Sequence

import numpy as np
import zstandard

from jaxquant.data.shards import BAR_COLUMNS


class IngestError(ValueError):
    """Bad input; the message is one line, ``<file>:<line>: <reason>``."""


# --------------------------------------------------------------------------
# Row problems.  Codes are checked in this order; a row is reported (and
# counted) under the first problem it has.
# --------------------------------------------------------------------------

_OK, _R_FIELDS, _R_TIME, _R_MISMATCH, _R_NODATA, _R_EMPTY, _R_NONNUM, _R_NONFIN, \
    _R_NONPOS, _R_NEGVOL, _R_OHLC, _R_DUP, _R_BACK = range(13)

_REASON_KEYS = {
    _R_FIELDS: "wrong_field_count",
    _R_TIME: "unparsable_time",
    _R_MISMATCH: "time_mismatch",
    _R_NODATA: "no_data",
    _R_EMPTY: "empty_field",
    _R_NONNUM: "non_numeric",
    _R_NONFIN: "non_finite",
    _R_NONPOS: "non_positive_price",
    _R_NEGVOL: "negative_volume",
    _R_OHLC: "inconsistent_ohlc",
    _R_DUP: "duplicate_timestamp",
    _R_BACK: "non_monotonic_timestamp",
}

#: Reason keys used in ``skipped`` counts, with what they mean.
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

# Spellings of "no value" that count as an empty field (TqSdk writes "#N/A").
_MISSING = {"", "#n/a", "n/a", "na", "null", "none"}
# Their usual spellings, for an exact (fast) set lookup before any strip/lower.
_MISSING_EXACT = _MISSING | {"#N/A", "N/A", "NA", "NULL", "Null", "None"}

_PRICE_FIELDS = ("open", "high", "low", "close")
_ALL_FIELDS = ("open", "high", "low", "close", "volume", "open_interest")


def _norm(name: str) -> str:
    """Header name for matching: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


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


# --------------------------------------------------------------------------
# Time parsing
# --------------------------------------------------------------------------

_TAIL = r"(?:{sep}(?P<H>\d{{1,2}}):(?P<M>\d{{2}})(?::(?P<S>\d{{2}})(?:\.(?P<f>\d{{1,9}}))?)?)?"
_TAIL_T = _TAIL.format(sep="[ T]")
_TAIL_SP = _TAIL.format(sep=" +")

#: Built-in time formats tried by auto-detection, in order of preference.
TIME_FORMATS = (
    ("YYYY-MM-DD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})" + _TAIL_T),
    ("YYYY/MM/DD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})" + _TAIL_SP),
    ("DD.MM.YYYY[ HH:MM[:SS[.f]]]", r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<Y>\d{4})" + _TAIL_SP),
    ("M/D/YYYY[ HH:MM[:SS[.f]]]", r"(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<Y>\d{4})" + _TAIL_SP),
    # Before epoch: an 8-digit integer is a date, not seconds in 1970.
    ("YYYYMMDD[ HH:MM[:SS[.f]]]", r"(?P<Y>\d{4})(?P<m>\d{2})(?P<d>\d{2})" + _TAIL_SP),
    ("epoch integer (s/ms/us/ns by magnitude)", r"-?\d+"),
)
_FIELD_GROUPS = ("Y", "m", "d", "H", "M", "S", "f")
_EPOCH_UNITS = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}
_DETECT_ROWS = 100
_INT_RX = re.compile(r"-?\d+", re.ASCII)
_INT_LINES_RX = re.compile(r"(?:-?\d+\n)*-?\d+", re.ASCII)
_I64 = np.iinfo(np.int64)


@dataclasses.dataclass
class _TimeFormat:
    """One way of turning time strings into int64 ns (naive wall clock)."""
    name: str
    regex: re.Pattern | None = None      # fields via named groups Y m d H M S f
    strptime: str | None = None          # fallback for directives we don't compile
    epoch_factor: int | None = None      # epoch integers: ns per unit (None: by magnitude)
    epoch: bool = False


def _compile_strptime(fmt: str) -> re.Pattern | None:
    """Translate a strptime format using only %Y %m %d %H %M %S %f to a regex.

    Returns None when the format uses other directives (then strptime is used
    row by row, which is ~20x slower but exact).
    """
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
            out.append(r"\s+" if ch.isspace() else re.escape(ch))
            i += 1
    if not {"Y", "m", "d"} <= seen:
        return None
    return re.compile("".join(out), re.ASCII)


def _user_time_format(fmt: str) -> _TimeFormat:
    if fmt in _EPOCH_UNITS:
        return _TimeFormat(fmt, regex=_INT_RX, epoch=True,
                           epoch_factor=_EPOCH_UNITS[fmt])
    rx = _compile_strptime(fmt)
    if rx is not None:
        return _TimeFormat(fmt, regex=rx)
    try:
        datetime.strftime(datetime(2000, 1, 2, 3, 4, 5), fmt)
    except ValueError as e:
        raise IngestError(f"--time-format={fmt!r}: invalid format ({e})") from e
    return _TimeFormat(fmt, strptime=fmt)


def _builtin_formats() -> list[_TimeFormat]:
    out = []
    for name, pattern in TIME_FORMATS:
        out.append(_TimeFormat(name, regex=re.compile(pattern, re.ASCII),
                               epoch=name.startswith("epoch")))
    return out


_BUILTINS = _builtin_formats()


def _detect_time_format(values: Sequence[str]) -> _TimeFormat | None:
    """Pick the built-in format matching most of the first rows (ties: list order)."""
    sample = [v for v in values[:_DETECT_ROWS]]
    best, best_n = None, 0
    for f in _BUILTINS:
        n = sum(1 for v in sample if f.regex.fullmatch(v))
        if n > best_n:
            best, best_n = f, n
    if best is not None and best.epoch:
        ints = [abs(int(v)) for v in sample if best.regex.fullmatch(v)]
        top = max(ints)
        # Magnitude of "now": ~1.7e9 s, 1.7e12 ms, 1.7e15 us, 1.7e18 ns.
        unit, factor = (("s", 10**9) if top < 10**11 else ("ms", 10**6) if top < 10**14
                        else ("us", 10**3) if top < 10**17 else ("ns", 1))
        best = _TimeFormat(f"epoch_{unit}", regex=best.regex, epoch=True, epoch_factor=factor)
    return best


def _template_fields(values: Sequence[str], rx: re.Pattern, fields: np.ndarray,
                     ok: np.ndarray) -> np.ndarray:
    """Vectorised parse of fixed-layout strings; returns rows still to do.

    Rows with the same length, the same non-digit characters at the same
    places and digits elsewhere as a regex-matched template row split into
    the same groups, so their digits can be read straight from a uint8 view.
    A handful of templates covers real files (e.g. M/D/YYYY has a few
    layouts); whatever is left goes through the regex row by row.
    """
    n = len(values)
    todo = np.ones(n, dtype=bool)
    try:
        lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
        width = int(lens.max()) if n else 0
        if width == 0 or width > 64:
            return todo
        u = np.array(values, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    except (UnicodeEncodeError, ValueError):  # non-ASCII: regex path only
        return todo
    group_index = {g: rx.groupindex[g] for g in _FIELD_GROUPS if g in rx.groupindex}
    pos = 0
    for _ in range(16):
        while pos < n and not todo[pos]:
            pos += 1
        if pos >= n:
            break
        m = rx.fullmatch(values[pos])
        if m is None:  # a bad row: the row-by-row pass reports it; try the next one
            pos += 1
            continue
        i0, L = pos, int(lens[pos])
        rows = np.flatnonzero(todo & (lens == L))
        sub = u[rows, :L]
        digit = np.zeros(L, dtype=bool)
        spans = {}
        for g, gi in group_index.items():
            a, b = m.span(gi)
            if a >= 0:
                digit[a:b] = True
                spans[g] = (a, b)
        tmpl = u[i0, :L]
        good = np.all(sub[:, ~digit] == tmpl[~digit], axis=1) & \
            np.all((sub[:, digit] - np.uint8(48)) < 10, axis=1)
        rows, sub = rows[good], sub[good]
        for k, g in enumerate(_FIELD_GROUPS):
            if g not in spans:
                fields[k, rows] = 0
                continue
            a, b = spans[g]
            w = 10 ** np.arange(b - a - 1, -1, -1, dtype=np.int64)
            v = (sub[:, a:b].astype(np.int64) - 48) @ w
            fields[k, rows] = v * 10 ** (9 - (b - a)) if g == "f" else v
        ok[rows] = True
        todo[rows] = False
        pos = i0 + 1
    return todo


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_DIM = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _compose(fields: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fields [7, n] (Y m d H M S ns) -> int64 ns since epoch, and validity."""
    Y, M, D, h, mi, s, f = fields
    leap = (Y % 4 == 0) & ((Y % 100 != 0) | (Y % 400 == 0))
    mc = np.clip(M, 0, 12)
    dim = _DIM[mc] + ((mc == 2) & leap)
    # Years 1700-2261 keep int64 nanoseconds far from overflow.
    ok = ok & (Y >= 1700) & (Y <= 2261) & (M >= 1) & (M <= 12) & (D >= 1) & (D <= dim) \
        & (h < 24) & (mi < 60) & (s < 60)
    days = _days_from_civil(Y, np.where(ok, M, 1), D)
    ns = ((days * 86400 + h * 3600 + mi * 60 + s) * 10**9 + f)
    return np.where(ok, ns, 0).astype(np.int64), ok


def _parse_times(values: Sequence[str], fmt: _TimeFormat) -> tuple[np.ndarray, np.ndarray]:
    """Parse time strings; returns ``(ns[int64], ok[bool])`` (ns is 0 where not ok)."""
    n = len(values)
    if fmt.epoch:
        lim = _I64.max // fmt.epoch_factor
        # Fast path: one C-level regex scan proves every value is an ASCII integer.
        if n and _INT_LINES_RX.fullmatch("\n".join(values)):
            try:
                x = np.array(values, dtype=np.int64)
            except (OverflowError, ValueError):
                pass
            else:
                ok = np.abs(x) <= lim
                return np.where(ok, x, 0) * fmt.epoch_factor, ok
        ns, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        for i, v in enumerate(values):
            if fmt.regex.fullmatch(v):
                x = int(v)
                if -lim <= x <= lim:
                    ns[i], ok[i] = x * fmt.epoch_factor, True
        return ns, ok
    fields = np.zeros((7, n), dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if fmt.regex is not None:
        todo = np.flatnonzero(_template_fields(values, fmt.regex, fields, ok))
        gi = [fmt.regex.groupindex.get(g) for g in _FIELD_GROUPS]
        for i in todo:
            m = fmt.regex.fullmatch(values[i])
            if m is None:
                continue
            for k, idx in enumerate(gi):
                t = m.group(idx) if idx else None
                if t:
                    fields[k, i] = int(t.ljust(9, "0")) if k == 6 else int(t)
            ok[i] = True
    else:
        for i, v in enumerate(values):
            try:
                d = datetime.strptime(v, fmt.strptime)
            except ValueError:
                continue
            # Keep the wall clock as written: shards hold naive exchange local time.
            fields[:, i] = (d.year, d.month, d.day, d.hour, d.minute, d.second,
                            d.microsecond * 1000)
            ok[i] = True
    return _compose(fields, ok)


def _fmt_ts(ns: int | None) -> str | None:
    """Timestamp for messages and summaries: ``YYYY-MM-DD HH:MM:SS[.fff...]``."""
    if ns is None:
        return None
    ns = int(ns)
    unit = "s" if ns % 10**9 == 0 else "ms" if ns % 10**6 == 0 else \
        "us" if ns % 10**3 == 0 else "ns"
    div = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    return str(np.datetime64(ns // div, unit)).replace("T", " ")


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def _parse_numbers(col: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (float64 values, problem code per row: 0 / empty / non-numeric / non-finite)."""
    try:
        v = np.array(col, dtype=np.float64)  # fast path: every field is a number
        return v, np.where(np.isfinite(v), _OK, _R_NONFIN).astype(np.int8)
    except (ValueError, TypeError, OverflowError):
        pass
    n = len(col)
    # Usual case (TqSdk "#N/A" for a symbol not trading): the only non-numbers
    # are missing-value tokens; a C-level set lookup beats try/except per field.
    miss = np.fromiter(map(_MISSING_EXACT.__contains__, col), dtype=bool, count=n)
    if miss.any():
        try:
            v = np.array([("nan" if m else x) for x, m in zip(col, miss)], dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            code = np.where(miss, _R_EMPTY, np.where(np.isfinite(v), _OK, _R_NONFIN))
            return v, code.astype(np.int8)
    v = np.full(n, np.nan)
    code = np.zeros(n, dtype=np.int8)
    for i, s in enumerate(col):
        try:
            x = float(s)
        except ValueError:
            code[i] = _R_EMPTY if s.strip().lower() in _MISSING else _R_NONNUM
            continue
        v[i] = x
        if not math.isfinite(x):
            code[i] = _R_NONFIN
    return v, code


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Series:
    """One instrument read from one file."""
    instrument: str
    timestamps: np.ndarray
    bars: np.ndarray
    skipped: dict
    notes: list
    source: str          # the path as given (for messages)
    source_name: str     # base name (stored; paths are not reproducible)
    sha256: str
    kind: str            # "csv" or "tqsdk"
    extra_meta: dict


@dataclasses.dataclass
class _Field:
    header: str          # column name as written in the file
    raw: list            # raw strings per row
    values: np.ndarray
    code: np.ndarray


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".csv.zst", ".zst", ".csv"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return os.path.splitext(name)[0]


def _decode_text(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise IngestError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None


def _split_csv(path: str, text: str) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Parse CSV text -> (header, rows, line numbers). Blank rows are dropped."""
    if not text.strip():
        raise IngestError(f"{path}:1: empty file, expected a header row")
    first = text.split("\n", 1)[0]
    # Comma unless the header clearly uses something else (";" or tab exports).
    delim = "," if "," in first else ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        if '"' not in text:
            # No quotes: each record is exactly one physical line (fast path).
            records = list(reader)
            line_of = None
        else:
            records, line_of = [], []
            for row in reader:
                records.append(row)
                line_of.append(reader.line_num)
    except csv.Error as e:
        raise IngestError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    # Blank lines (and rows of only delimiters) are ignored; the first field
    # is almost always non-empty, which keeps this test cheap.
    keep = [i for i, r in enumerate(records)
            if r and (r[0].strip() or any(f.strip() for f in r))]
    nums = np.asarray(keep, dtype=np.int64) + 1 if line_of is None else \
        np.asarray(line_of, dtype=np.int64)[keep]
    if not keep:
        raise IngestError(f"{path}:1: empty file, expected a header row")
    header = [h.strip() for h in records[keep[0]]]
    header_line = int(nums[0])
    rows = [records[i] for i in keep[1:]]
    lines = nums[1:]
    if not rows:
        raise IngestError(f"{path}:{header_line}: no data rows after the header")
    return header, rows, lines


def _fix_lengths(rows: list[list[str]],
                 ncol: int) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Pad/cut rows to ``ncol`` fields; rows of the wrong length (extra empty
    trailing fields excepted) get code _R_FIELDS.  Returns (rows, code, lengths)."""
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    code = np.zeros(len(rows), dtype=np.int8)
    bad = np.flatnonzero(lens != ncol)
    if bad.size:
        rows = list(rows)
        for i in bad:
            r = rows[i]
            if len(r) < ncol or any(f.strip() for f in r[ncol:]):
                code[i] = _R_FIELDS
            rows[i] = (r + [""] * ncol)[:ncol]
    return rows, code, lens


def _columns(rows: list[list[str]]) -> list[tuple[str, ...]]:
    """Transpose equal-length rows into columns (zip runs in C)."""
    return list(zip(*rows))


class _Checker:
    """Validate the rows of one instrument and explain the first problem."""

    def __init__(self, path: str, lines: np.ndarray, ncol: int, row_lens: np.ndarray,
                 time_text, mismatch_text=None):
        # time_text(i) / mismatch_text(i): the reason for a bad time in row i.
        self.path, self.lines, self.ncol, self.row_lens = path, lines, ncol, row_lens
        self.time_text, self.mismatch_text = time_text, mismatch_text

    def run(self, pre_code: np.ndarray, ts: np.ndarray, fields: dict[str, _Field],
            prefix: str = "", no_data: np.ndarray | None = None):
        """Return (code per row, first error message or None).

        ``pre_code`` carries file-level row problems (field count, time);
        ``no_data`` marks TqSdk rows where the symbol has no bar.
        """
        code = pre_code.copy()
        if no_data is not None:
            code[(code == _OK) & no_data] = _R_NODATA
        for f in fields.values():
            m = (code == _OK) & (f.code != _OK)
            code[m] = f.code[m]
        o, h, l, c = (fields[k].values for k in _PRICE_FIELDS)
        with np.errstate(invalid="ignore"):
            nonpos = (o <= 0) | (h <= 0) | (l <= 0) | (c <= 0)
            code[(code == _OK) & nonpos] = _R_NONPOS
            neg = np.zeros_like(nonpos)
            for k in ("volume", "open_interest"):
                if k in fields:
                    neg |= fields[k].values < 0
            code[(code == _OK) & neg] = _R_NEGVOL
            ohlc = (h < l) | (h < np.maximum(o, c)) | (l > np.minimum(o, c))
            code[(code == _OK) & ohlc] = _R_OHLC
        # Order among the rows that survive: each kept timestamp must beat the
        # running max of earlier kept ones (rows dropped here never raise it).
        idx = np.flatnonzero(code == _OK)
        if idx.size > 1:
            t = ts[idx]
            prev = np.maximum.accumulate(t)[:-1]
            code[idx[1:][t[1:] == prev]] = _R_DUP
            code[idx[1:][t[1:] < prev]] = _R_BACK
        self.code, self.ts, self.fields, self.prefix = code, ts, fields, prefix
        bad = np.flatnonzero((code != _OK) & (code != _R_NODATA))
        return code, (int(bad[0]) if bad.size else None)

    def message(self, i: int) -> str:
        """``<file>:<line>: <reason>`` for row ``i``."""
        c, f = int(self.code[i]), self.fields
        if c == _R_FIELDS:
            why = f"expected {self.ncol} fields, got {self.row_lens[i]}"
        elif c == _R_TIME:
            why = self.time_text(i)
        elif c == _R_MISMATCH:
            why = self.mismatch_text(i)
        elif c in (_R_EMPTY, _R_NONNUM, _R_NONFIN):
            fld = next(x for x in f.values() if x.code[i] != _OK)
            v = fld.raw[i]
            why = {_R_EMPTY: f"empty value {v!r} in column {fld.header!r}",
                   _R_NONNUM: f"non-numeric value {v!r} in column {fld.header!r}",
                   _R_NONFIN: f"non-finite value {v!r} in column {fld.header!r}"}[c]
        elif c == _R_NONPOS:
            bad = [f"{f[k].header}={f[k].raw[i].strip()}" for k in _PRICE_FIELDS
                   if not f[k].values[i] > 0]
            why = "non-positive price " + ", ".join(bad)
        elif c == _R_NEGVOL:
            bad = [f"{f[k].header}={f[k].raw[i].strip()}" for k in ("volume", "open_interest")
                   if k in f and f[k].values[i] < 0]
            why = "negative " + ", ".join(bad)
        elif c == _R_OHLC:
            o, h, l, cl = (f[k] for k in _PRICE_FIELDS)
            r = {k: f[k].raw[i].strip() for k in _PRICE_FIELDS}
            if h.values[i] < l.values[i]:
                why = f"high {r['high']} < low {r['low']}"
            elif h.values[i] < max(o.values[i], cl.values[i]):
                why = f"high {r['high']} < max(open {r['open']}, close {r['close']})"
            else:
                why = f"low {r['low']} > min(open {r['open']}, close {r['close']})"
        else:  # _R_DUP / _R_BACK
            earlier = np.flatnonzero(self.code[:i] == _OK)
            j = int(earlier[np.argmax(self.ts[earlier])])
            t, tj = _fmt_ts(self.ts[i]), _fmt_ts(self.ts[j])
            why = (f"duplicate timestamp {t} (same as line {self.lines[j]})" if c == _R_DUP
                   else f"timestamp {t} is earlier than {tj} on line {self.lines[j]} "
                        "(rows must be in increasing time order)")
        return f"{self.path}:{self.lines[i]}: {self.prefix}{why}"


def _counts(code: np.ndarray) -> dict[str, int]:
    vals, cnt = np.unique(code[code != _OK], return_counts=True)
    return dict(sorted((_REASON_KEYS[int(v)], int(n)) for v, n in zip(vals, cnt)))


def _bars_from(fields: dict[str, _Field], keep: np.ndarray) -> np.ndarray:
    n = int(keep.sum())
    bars = np.zeros((n, len(BAR_COLUMNS)), dtype=np.float64)
    for j, k in enumerate(_ALL_FIELDS):
        if k in fields:
            bars[:, j] = fields[k].values[keep]
    return bars


def _missing_columns_error(path: str, line: int, missing: list[str],
                           header: list[str]) -> IngestError:
    found = ", ".join(repr(h) for h in header)
    return IngestError(f"{path}:{line}: missing required column(s) {', '.join(missing)}; "
                       f"found: {found}")


def _read_generic(path: str, header: list[str], rows: list[list[str]], lines: np.ndarray,
                  time_format: str | None, on_error: str) -> list[_Series]:
    """Generic OHLCV CSV -> one series named after the file stem."""
    norm = [_norm(h) for h in header]

    def find(aliases: Iterable[str]) -> int | None:
        hits = [j for j, n in enumerate(norm) if n in aliases]
        if len(hits) > 1:
            raise IngestError(f"{path}:1: ambiguous columns "
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
    missing = [k for k in _PRICE_FIELDS if cols[k] is None]
    if tcols is None:
        missing.insert(0, f"time ({_TIME_HELP})")
    if missing:
        raise _missing_columns_error(path, 1, missing, header)

    rows, pre, row_lens = _fix_lengths(rows, len(header))
    columns = _columns(rows)
    if len(tcols) == 1:
        tvals = [v.strip() for v in columns[tcols[0]]]
    else:
        tvals = [f"{d.strip()} {t.strip()}"
                 for d, t in zip(columns[tcols[0]], columns[tcols[1]])]
    if time_format:
        fmt = _user_time_format(time_format)
    else:
        fmt = _detect_time_format(tvals)
        if fmt is None:
            raise IngestError(f"{path}:{lines[0]}: unparsable time {tvals[0]!r}: no known "
                              f"format matches the first rows (pass --time-format)")
    ts, tok = _parse_times(tvals, fmt)
    pre[(pre == _OK) & ~tok] = _R_TIME

    fields = {}
    for k, j in cols.items():
        if j is not None:
            raw = columns[j]
            v, c = _parse_numbers(raw)
            fields[k] = _Field(header[j], raw, v, c)
    notes = []
    if cols["volume"] is None:
        notes.append("no volume column: volume set to 0")
    if cols["open_interest"] is None:
        notes.append("no open interest column: open_interest set to 0")

    chk = _Checker(path, lines, len(header), row_lens,
                   lambda i: f"unparsable time {tvals[i]!r} (expected {fmt.name})")
    code, first = chk.run(pre, ts, fields)
    if first is not None and on_error == "stop":
        raise IngestError(chk.message(first))
    keep = code == _OK
    s = _Series(_stem(path), ts[keep], _bars_from(fields, keep), _counts(code), notes,
                path, os.path.basename(path), "", "csv", {"time_format": fmt.name})
    return [s]


def _read_tqsdk(path: str, header: list[str], rows: list[list[str]], lines: np.ndarray,
                on_error: str) -> list[_Series]:
    """TqSdk DataDownloader export: one series per ``<SYMBOL>.<field>`` group."""
    want = {"open": "open", "high": "high", "low": "low", "close": "close",
            "volume": "volume", "close_oi": "open_interest"}
    symbols: dict[str, dict[str, int]] = {}
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
        missing += [f"{sym}.{k}" for k in _PRICE_FIELDS if k not in cols]
    if missing:
        raise _missing_columns_error(path, 1, missing, header)

    rows, pre, row_lens = _fix_lengths(rows, len(header))
    columns = _columns(rows)
    nano_raw = [v.strip() for v in columns[header.index("datetime_nano")]]
    dt_raw = [v.strip() for v in columns[header.index("datetime")]]
    nano, nok = _parse_times(nano_raw, _TimeFormat("epoch_ns", regex=_INT_RX, epoch=True,
                                                   epoch_factor=1))
    local, lok = _parse_times(dt_raw, _BUILTINS[0])
    pre[(pre == _OK) & ~(nok & lok)] = _R_TIME
    # datetime_nano is UTC; the datetime string is exchange local time (Beijing
    # for TqSdk).  Shards hold naive local time, so shift datetime_nano by the
    # file's offset (the most common local - nano, in whole minutes).
    both = (pre == _OK)
    offset = 0
    if both.any():
        diff = local[both] - nano[both]
        mins = np.round(diff / 60e9).astype(np.int64)
        vals, cnt = np.unique(mins, return_counts=True)
        offset = int(vals[np.argmax(cnt)]) * 60 * 10**9
    # The string may be truncated to microseconds: allow < 1 us of disagreement.
    mismatch = (pre == _OK) & (np.abs(local - nano - offset) >= 1000)
    pre[mismatch] = _R_MISMATCH
    ts = nano + offset
    sign = "+" if offset >= 0 else "-"
    off_min = abs(offset) // (60 * 10**9)
    off_desc = f"{sign}{off_min // 60:02d}:{off_min % 60:02d}"

    def time_text(i: int) -> str:
        return (f"unparsable time: datetime {dt_raw[i]!r} (expected YYYY-MM-DD HH:MM:SS[.f]), "
                f"datetime_nano {nano_raw[i]!r} (expected an integer)")

    def mismatch_text(i: int) -> str:
        return (f"datetime {dt_raw[i]!r} does not match datetime_nano {nano_raw[i]!r} "
                f"shifted by the file's UTC offset {off_desc}")

    out, first_err = [], None
    for sym, cols in symbols.items():
        fields = {}
        for k, j in cols.items():
            raw = columns[j]
            v, c = _parse_numbers(raw)
            fields[k] = _Field(header[j], raw, v, c)
        # Symbols aligned to the first one have no bar where they don't trade:
        # every price missing (TqSdk writes "#N/A" or "nan").
        no_data = np.ones(len(rows), dtype=bool)
        for k in _PRICE_FIELDS:
            f = fields[k]
            no_data &= (f.code == _R_EMPTY) | ((f.code == _R_NONFIN) & np.isnan(f.values))
        chk = _Checker(path, lines, len(header), row_lens, time_text, mismatch_text)
        code, first = chk.run(pre, ts, fields, prefix=f"{sym}: ", no_data=no_data)
        if first is not None and (first_err is None or first < first_err[0]):
            first_err = (first, chk)
        notes = []
        if "volume" not in cols:
            notes.append("no volume column: volume set to 0")
        if "open_interest" not in cols:
            notes.append("no close_oi column: open_interest set to 0")
        keep = code == _OK
        out.append(_Series(sym, ts[keep], _bars_from(fields, keep), _counts(code), notes,
                           path, os.path.basename(path), "", "tqsdk",
                           {"time_format": "datetime_nano", "utc_offset": off_desc}))
    if first_err is not None and on_error == "stop":
        raise IngestError(first_err[1].message(first_err[0]))
    return out


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic GC: parsing creates ~1e5 lists and tuples that would
    trigger many useless full collections (~25% of the parse time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read_csv_bytes(path: str, data: bytes, time_format: str | None,
                    on_error: str) -> list[_Series]:
    text = _decode_text(path, data)
    with _gc_paused():
        header, rows, lines = _split_csv(path, text)
        if "datetime_nano" in header:
            series = _read_tqsdk(path, header, rows, lines, on_error)
        else:
            series = _read_generic(path, header, rows, lines, time_format, on_error)
    digest = hashlib.sha256(data).hexdigest()
    for s in series:
        s.sha256 = digest
    return series


def _check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise IngestError(f"--on-error={on_error!r}: expected 'stop' or 'skip'")


def read_csv_bars(path: str | os.PathLike, time_format: str | None = None,
                  on_error: str = "stop") -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """Read and validate one bar CSV (generic OHLCV or TqSdk export).

    Args:
      path: a ``.csv`` file (or a zstd-compressed ``.csv.zst``).
      time_format: strptime format of the time column (also ``epoch_s``,
        ``epoch_ms``, ``epoch_us``, ``epoch_ns``); None auto-detects it from
        the first rows among :data:`TIME_FORMATS`.  Ignored for TqSdk files.
      on_error: ``"stop"`` raises on the first bad row; ``"skip"`` drops bad
        rows and counts them.

    Returns:
      ``{instrument: (timestamps[int64 ns, naive local time], bars[n, 6] in
      BAR_COLUMNS order, skipped_counts{reason: rows})}``.  A generic CSV gives
      one entry named after the file stem; a TqSdk file one per symbol.

    Raises:
      IngestError: ``<file>:<line>: <reason>`` for the first problem (stop
        mode) or for a file-level problem (missing column, no rows, ...).
    """
    _check_on_error(on_error)
    path = os.fspath(path)
    data = _read_file(path)
    if path.lower().endswith(".zst"):
        data = _zstd_decompress(path, data)
        if _npy_kind(data):
            raise IngestError(f"{path}: is a NumPy sample file, not a CSV")
    return {s.instrument: (s.timestamps, s.bars, s.skipped)
            for s in _read_csv_bytes(path, data, time_format, on_error)}


# Helpers of the original module that read_csv_bars uses.
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _npy_kind(raw: bytes) -> str | None:
    return "npy" if raw.startswith(_NPY_MAGIC) else "npz" if raw.startswith(_ZIP_MAGIC) else None


def _zstd_decompress(path: str, data: bytes) -> bytes:
    try:
        # stream_reader handles frames without a content size and several frames.
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
            return r.read()
    except zstandard.ZstdError as e:
        raise IngestError(f"{path}: cannot decompress ({e})") from None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise IngestError(f"{path}: no such file or directory") from None
    except IsADirectoryError:
        raise IngestError(f"{path}: is a directory") from None
    except OSError as e:
        raise IngestError(f"{path}: cannot read ({e.strerror or e})") from None

