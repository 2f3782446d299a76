"""Turn real bar data into ``.jqs`` shards (and loose samples into ``.jqx``).

Command line::

    python -m jaxquant.data.ingest --out=DIR [--time-format=FMT] [--on-error=stop|skip]
                                   [--instrument=NAME] [--chunk-rows=4096] INPUT...

Each INPUT is a file or a folder (folders are scanned, non-recursively, for
``*.csv`` and ``*.zst`` in sorted name order).  Three kinds of input:

* a generic OHLCV CSV (header required, columns matched case-insensitively);
* a TqSdk ``DataDownloader`` CSV (detected by its ``datetime_nano`` column),
  possibly holding several symbols: one shard per symbol;
* loose per-sample ``.zst`` files (a zstd-compressed ``.npy`` array, or
  ``.npz`` with ``x``/``sample`` and optional ``y``/``label``), packed into one
  checksummed, random-access ``samples.jqx`` (see :class:`SampleShardReader`).
  A ``*.csv.zst`` whose payload is not a NumPy file is read as a CSV.

Every row is validated; with ``--on-error=stop`` (default) the first problem
is reported as ``<file>:<line>: <reason>`` (line 1 is the header) and nothing
is written; with ``--on-error=skip`` bad rows are dropped and counted per
reason.  Shards are written atomically, then ``manifest.json`` last, so its
presence marks a complete ingest.  The output is a pure function of the input
bytes: re-running gives byte-identical files.  The format of both kinds of
file is documented in ``docs/data-format.md`` ("Ingesting real data").
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import json
import math
import os
import re
import struct
import sys
import time
import zipfile
import zlib
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
import zstandard

from jaxquant.data.shards import (BAR_COLUMNS, SHARD_SUFFIX, CheckedFileReader, ShardError,
                                   write_shard)
from jaxquant.io_utils import _json_default, atomic_write_bytes, atomic_write_json

__all__ = [
    "IngestError",
    "REASONS",
    "SAMPLE_FORMAT_VERSION",
    "SAMPLE_MAGIC",
    "SAMPLE_SUFFIX",
    "SampleShardReader",
    "TIME_FORMATS",
    "format_summary",
    "ingest",
    "main",
    "read_csv_bars",
    "write_sample_shard",
]


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


# --------------------------------------------------------------------------
# Loose samples -> samples.jqx
# --------------------------------------------------------------------------

SAMPLE_MAGIC = b"JQSAMPL\0"
SAMPLE_FORMAT_VERSION = 1
SAMPLE_SUFFIX = ".jqx"
SAMPLE_FILE = "samples" + SAMPLE_SUFFIX
_SAMPLE_CHUNK_BYTES = 1 << 20  # ~1 MiB decompressed per chunk: cheap random access
_PREAMBLE = struct.Struct("<8sII")
_U32 = struct.Struct("<I")
_ZSTD_LEVEL = 3


def _crc32(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def _le(dt: np.dtype) -> np.dtype:
    """Little-endian version of a numeric dtype (files are little-endian)."""
    return dt.newbyteorder("<") if dt.byteorder in (">", "=") and dt.itemsize > 1 else dt


class _SampleBuilder:
    """Accumulates samples, compressing each full chunk as soon as it fills."""

    def __init__(self, chunk_samples: int | None = None):
        self.chunk_samples = chunk_samples
        self.shape = self.dtype = self.label_shape = self.label_dtype = None
        self.pending: list[np.ndarray] = []
        self.blobs: list[bytes] = []
        self.counts: list[int] = []
        self.labels: list[np.ndarray | None] = []
        self._cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True,
                                              write_content_size=True)

    def problem(self, x: np.ndarray, y: np.ndarray | None) -> str | None:
        """Why (x, y) cannot join this shard (shape/dtype differ), or None."""
        if self.shape is not None and (x.shape != self.shape or _le(x.dtype) != self.dtype):
            return (f"sample has shape {list(x.shape)} dtype {x.dtype}, expected "
                    f"{list(self.shape)} {self.dtype} like the first sample")
        if y is not None and self.label_shape is not None and \
                (y.shape != self.label_shape or _le(y.dtype) != self.label_dtype):
            return (f"label has shape {list(y.shape)} dtype {y.dtype}, expected "
                    f"{list(self.label_shape)} {self.label_dtype} like the first label")
        return None

    def add(self, x: np.ndarray, y: np.ndarray | None) -> None:
        if self.shape is None:
            self.shape, self.dtype = x.shape, _le(x.dtype)
            if self.chunk_samples is None:
                self.chunk_samples = max(1, min(4096, _SAMPLE_CHUNK_BYTES // max(1, x.nbytes)))
        if y is not None and self.label_shape is None:
            self.label_shape, self.label_dtype = y.shape, _le(y.dtype)
        self.pending.append(np.ascontiguousarray(x, dtype=self.dtype))
        self.labels.append(None if y is None else np.asarray(y, dtype=self.label_dtype))
        if len(self.pending) == self.chunk_samples:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.blobs.append(self._cctx.compress(b"".join(p.tobytes() for p in self.pending)))
            self.counts.append(len(self.pending))
            self.pending = []

    def build(self, meta: dict, path: str) -> bytes:
        """The complete file (a pure function of the samples, labels and meta)."""
        self._flush()
        n = sum(self.counts)
        has = np.array([y is not None for y in self.labels], dtype=np.uint8)
        label_blob = None
        if has.any():
            lab = np.zeros((n,) + tuple(self.label_shape), dtype=self.label_dtype)
            for i, y in enumerate(self.labels):
                if y is not None:
                    lab[i] = y
            label_blob = self._cctx.compress(lab.tobytes() + has.tobytes())

        def header(hlen: int) -> bytes:
            off = _PREAMBLE.size + hlen + _U32.size
            chunks = []
            for blob, k in zip(self.blobs, self.counts):
                chunks.append({"offset": off, "length": len(blob), "samples": k,
                               "crc32": _crc32(blob)})
                off += len(blob)
            labels = None
            if label_blob is not None:
                labels = {"offset": off, "length": len(label_blob), "crc32": _crc32(label_blob),
                          "count": int(has.sum()), "shape": list(self.label_shape),
                          "dtype": self.label_dtype.str}
            h = {"num_samples": n, "shape": list(self.shape or ()),
                 "dtype": self.dtype.str if self.dtype is not None else "<f4",
                 "chunk_samples": int(self.chunk_samples or 1), "chunks": chunks,
                 "labels": labels, "meta": meta}
            try:
                return json.dumps(h, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                  allow_nan=False, default=_json_default).encode()
            except (TypeError, ValueError) as e:
                raise ShardError(f"shard {path}: cannot write: meta is not "
                                 f"JSON-serialisable ({e})") from e

        # Offsets depend on the header length and vice versa: iterate to the
        # fixed point, as write_shard does.
        hlen, hdr = 0, header(0)
        while len(hdr) != hlen:
            hlen = len(hdr)
            hdr = header(hlen)
        parts = [_PREAMBLE.pack(SAMPLE_MAGIC, SAMPLE_FORMAT_VERSION, len(hdr)), hdr,
                 _U32.pack(_crc32(hdr)), *self.blobs]
        if label_blob is not None:
            parts.append(label_blob)
        return b"".join(parts)


def write_sample_shard(path: str | os.PathLike, samples: Any, labels: Any = None, *,
                       has_label: Any = None, chunk_samples: int | None = None,
                       meta: dict | None = None) -> None:
    """Write samples (and optional labels) to a ``.jqx`` file atomically.

    Args:
      path: destination, conventionally ``samples.jqx``.
      samples: ``[n, ...]`` numeric array; every sample has the same shape.
      labels: None, or ``[n, ...]`` numeric array of per-sample labels.
      has_label: optional ``[n]`` bool; False marks samples without a label
        (their stored label is zeros).  Default: all True when ``labels`` is given.
      chunk_samples: samples per compressed chunk; default keeps chunks ~1 MiB.
      meta: JSON-serialisable dict stored in the header.

    Raises:
      ShardError: inconsistent inputs (nothing is written).
    """
    path = os.fspath(path)
    x = np.asarray(samples)
    if x.ndim < 1 or x.dtype.kind not in "biufc":
        raise ShardError(f"shard {path}: cannot write: samples must be a numeric array "
                         f"[n, ...], got shape {x.shape} dtype {x.dtype}")
    if chunk_samples is not None and (not isinstance(chunk_samples, int) or chunk_samples < 1):
        raise ShardError(f"shard {path}: cannot write: chunk_samples must be a positive int")
    y = None if labels is None else np.asarray(labels)
    if y is not None and (y.shape[:1] != x.shape[:1] or y.dtype.kind not in "biufc"):
        raise ShardError(f"shard {path}: cannot write: labels must be numeric [n={x.shape[0]}, "
                         f"...], got shape {y.shape} dtype {y.dtype}")
    mask = np.ones(x.shape[0], dtype=bool) if has_label is None else \
        np.asarray(has_label, dtype=bool)
    if mask.shape != (x.shape[0],):
        raise ShardError(f"shard {path}: cannot write: has_label must have shape [{x.shape[0]}]")
    b = _SampleBuilder(chunk_samples)
    for i in range(x.shape[0]):
        b.add(x[i], y[i] if y is not None and mask[i] else None)
    if x.shape[0] == 0:
        b.shape, b.dtype = x.shape[1:], _le(x.dtype)
    atomic_write_bytes(path, b.build({} if meta is None else meta, path))


class SampleShardReader(CheckedFileReader):
    """Random-access reader for a ``.jqx`` sample shard.

    Opening checks magic, version, header crc32 and JSON, the chunk table
    against the file size, and loads and verifies the label block; each
    sample chunk is verified (crc32, size, zstd checksum) when first read.
    Every failure is a :class:`~jaxquant.data.shards.ShardError`.

    Attributes:
      path, num_samples, shape (per sample), dtype, chunk_samples, meta,
      num_labels, labels (``[n, ...]`` array or None), has_label (``[n]`` bool).
    """

    def _open(self) -> None:
        size = os.fstat(self._fd).st_size
        pre = self._pread(_PREAMBLE.size, 0)
        if not SAMPLE_MAGIC.startswith(pre[:len(SAMPLE_MAGIC)]) or not pre:
            raise self._err(f"bad magic {pre[:8]!r}, not a jaxquant sample shard")
        if len(pre) < _PREAMBLE.size:
            raise self._err(f"truncated: file is {size} bytes")
        _, version, hlen = _PREAMBLE.unpack(pre)
        if version > SAMPLE_FORMAT_VERSION:
            raise self._err(f"written by a newer jaxquant (format v{version} > "
                            f"{SAMPLE_FORMAT_VERSION}); upgrade jaxquant to read it")
        if version < 1:
            raise self._err(f"invalid format version {version} (file corrupt?)")
        end = _PREAMBLE.size + hlen + _U32.size
        if end > size:
            raise self._err(f"truncated or corrupt: header declares {hlen} bytes but the "
                            f"file is only {size} bytes")
        raw = self._pread(hlen + _U32.size, _PREAMBLE.size)
        if _crc32(raw[:hlen]) != _U32.unpack(raw[hlen:])[0]:
            raise self._err("header checksum mismatch (file corrupt?)")
        try:
            h = json.loads(raw[:hlen].decode("utf-8"))
            self.num_samples = int(h["num_samples"])
            self.shape = tuple(int(d) for d in h["shape"])
            self.dtype = np.dtype(h["dtype"])
            self.chunk_samples = int(h["chunk_samples"])
            self.meta = dict(h["meta"])
            chunks, labels = list(h["chunks"]), h["labels"]
            offs = [int(c["offset"]) for c in chunks]
            lens = [int(c["length"]) for c in chunks]
            counts = [int(c["samples"]) for c in chunks]
            crcs = [int(c["crc32"]) for c in chunks]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise self._err(f"malformed header ({type(e).__name__}: {e})") from e
        expected = end
        for i, (o, ln, k) in enumerate(zip(offs, lens, counts)):
            last = i == len(counts) - 1
            if o != expected or ln < 1 or k < 1 or (not last and k != self.chunk_samples):
                raise self._err(f"chunk {i}: chunk table is inconsistent")
            expected += ln
        if sum(counts) != self.num_samples:
            raise self._err(f"header declares {self.num_samples} samples but its chunks "
                            f"hold {sum(counts)}")
        self._offs, self._lens, self._counts, self._crcs = offs, lens, counts, crcs
        self._sample_bytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._dctx = zstandard.ZstdDecompressor()
        self._cache: tuple[int, np.ndarray] | None = None
        self.labels, self.has_label, self.num_labels = None, np.zeros(self.num_samples, bool), 0
        self.label_shape, self.label_dtype = None, None
        if labels is not None:
            try:
                lo, ll, lc = int(labels["offset"]), int(labels["length"]), int(labels["crc32"])
                self.label_shape = tuple(int(d) for d in labels["shape"])
                self.label_dtype = np.dtype(labels["dtype"])
                self.num_labels = int(labels["count"])
            except (ValueError, KeyError, TypeError) as e:
                raise self._err(f"malformed label entry in header ({e})") from e
            if lo != expected:
                raise self._err("label block offset is inconsistent")
            expected += ll
        if expected != size:
            what = "truncated" if size < expected else "has trailing garbage"
            raise self._err(f"{what}: data ends at byte {expected} but the file is "
                            f"{size} bytes")
        if labels is not None:
            per = int(np.prod(self.label_shape, dtype=np.int64)) * self.label_dtype.itemsize
            blob = self._verified(self._pread(ll, lo), lc, self.num_samples * (per + 1),
                                  "label block")
            n = self.num_samples
            count = n * int(np.prod(self.label_shape, dtype=np.int64))
            self.labels = np.frombuffer(blob, self.label_dtype, count=count).reshape(
                (n,) + self.label_shape)
            self.has_label = np.frombuffer(blob, np.uint8, offset=n * per).astype(bool)
            if int(self.has_label.sum()) != self.num_labels:
                raise self._err("label block count disagrees with the header")

    def _verified(self, blob: bytes, crc: int, want: int, where: str) -> bytes:
        if _crc32(blob) != crc:
            raise self._err(f"{where} checksum mismatch (file corrupt?)")
        try:
            if zstandard.frame_content_size(blob) != want:
                raise self._err(f"{where} has the wrong decompressed size (file corrupt?)")
            raw = self._dctx.decompress(blob, max_output_size=want)
        except zstandard.ZstdError as e:
            raise self._err(f"{where} cannot be decompressed ({e})") from e
        if len(raw) != want:
            raise self._err(f"{where} decompressed to {len(raw)} bytes, expected {want}")
        return raw

    def _chunk(self, c: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == c:
            return self._cache[1]
        if self._fd is None:
            raise self._err("reader is closed")
        k, a = self._counts[c], c * self.chunk_samples
        raw = self._verified(self._pread(self._lens[c], self._offs[c]), self._crcs[c],
                             k * self._sample_bytes, f"chunk {c} (samples {a}-{a + k - 1})")
        arr = np.frombuffer(raw, self.dtype).reshape((k,) + self.shape)
        self._cache = (c, arr)  # sequential read(i) decodes each chunk once
        return arr

    def _index(self, i: Any) -> int:
        i = int(i)
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.num_samples} samples")
        return i % self.num_samples

    def __len__(self) -> int:
        return self.num_samples

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``(sample, label)`` of sample ``i``; label is None if it has none.

        Args:
          i: sample index (negative counts from the end).
        """
        i = self._index(i)
        x = self._chunk(i // self.chunk_samples)[i % self.chunk_samples].copy()
        y = self.labels[i].copy() if self.has_label[i] else None
        return x, y

    def read_batch(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``(samples[k, ...], labels[k, ...] or None)`` for indices ``idx``.

        Each needed chunk is decompressed once.  ``labels`` is None when the
        shard has no labels at all; samples without a label get zeros there
        (check ``has_label[idx]``).
        """
        idx = np.asarray([self._index(i) for i in np.asarray(idx).ravel()], dtype=np.int64)
        out = np.empty((idx.size,) + self.shape, dtype=self.dtype.newbyteorder("="))
        order = np.argsort(idx, kind="stable")
        for c in np.unique(idx // self.chunk_samples):
            sel = order[(idx[order] // self.chunk_samples) == c]
            out[sel] = self._chunk(int(c))[idx[sel] - c * self.chunk_samples]
        labels = None if self.labels is None else self.labels[idx].copy()
        return out, labels


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


def _load_sample(path: str, raw: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one loose sample (.npy or .npz payload); IngestError if impossible."""
    kind = _npy_kind(raw)
    if kind is None:
        raise IngestError(f"{path}: decompressed payload is neither .npy nor .npz")
    try:
        if kind == "npz":
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                keys = set(z.files)
                xk = [k for k in ("x", "sample") if k in keys]
                yk = [k for k in ("y", "label") if k in keys]
                if len(xk) != 1 or len(yk) > 1:
                    raise IngestError(f"{path}: .npz must hold exactly one of x/sample and at "
                                      f"most one of y/label, found {sorted(keys)}")
                x, y = z[xk[0]], (z[yk[0]] if yk else None)
        else:
            x, y = np.load(io.BytesIO(raw), allow_pickle=False), None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise IngestError(f"{path}: cannot load the .{kind} payload ({e})") from None
    if x.dtype.kind not in "biufc" or (y is not None and y.dtype.kind not in "biufc"):
        raise IngestError(f"{path}: sample/label must be numeric, got dtype {x.dtype}"
                          + ("" if y is None else f" / {y.dtype}"))
    return x, y


# --------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------


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


def _expand(inputs: Sequence[str]) -> list[str]:
    """Files to read, in order: folders contribute their *.csv / *.zst, sorted."""
    files: list[str] = []
    for inp in inputs:
        if os.path.isdir(inp):
            names = sorted(n for n in os.listdir(inp) if not n.startswith(".")
                           and n.lower().endswith((".csv", ".zst"))
                           and os.path.isfile(os.path.join(inp, n)))
            if not names:
                raise IngestError(f"{inp}: folder holds no *.csv or *.zst files")
            files += [os.path.join(inp, n) for n in names]
        elif os.path.exists(inp):
            files.append(inp)
        else:
            raise IngestError(f"{inp}: no such file or directory")
    seen = {}
    for f in files:
        key = os.path.realpath(f)
        if key in seen:
            raise IngestError(f"{f}: given twice (also as {seen[key]})")
        seen[key] = f
    return files


def _safe_name(instrument: str) -> str:
    """File-name-safe instrument name (never hidden: list_shards skips dot files)."""
    s = re.sub(r"[^A-Za-z0-9._@+-]", "_", instrument)
    return "_" + s if s.startswith(".") else s


def ingest(inputs: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
           time_format: str | None = None, on_error: str = "stop",
           instrument: str | None = None, chunk_rows: int = 4096) -> dict:
    """Validate the inputs and write shards + ``manifest.json`` to ``out_dir``.

    Everything is read and validated before the first file is written, so
    bad input (stop mode) leaves ``out_dir`` untouched.  Bar shards are
    ``<instrument>.jqs`` (``<instrument>.partK.jqs`` when an instrument comes
    from several files, ordered by time); loose samples go to ``samples.jqx``.
    Any old ``manifest.json`` is removed first and the new one written last.

    Args:
      inputs: files and/or folders (folders: their ``*.csv``/``*.zst``, sorted).
      out_dir: output folder (created). It may hold shards of an earlier run
        of the same inputs, but no other ``*.jqs``/``*.jqx`` files.
      time_format: strptime format for generic CSV time columns (or
        ``epoch_s``/``epoch_ms``/``epoch_us``/``epoch_ns``); None: auto-detect.
      on_error: ``"stop"`` (raise on the first bad row) or ``"skip"`` (drop
        and count bad rows / bad sample files).
      instrument: name for the single generic CSV input (default: file stem).
      chunk_rows: rows per compressed chunk in bar shards.

    Returns:
      The summary dict: ``{"out_dir", "instruments": [{"instrument", "rows",
      "first", "last", "skipped", "notes", "source", "shard"}], "samples":
      {...} or None, "total_rows", "skipped", "manifest", "elapsed_s"}``.

    Raises:
      IngestError: bad input or arguments (one-line message).
      OSError: the output cannot be written (already written shards stay
        complete; no partial file is left).
    """
    t0 = time.perf_counter()
    _check_on_error(on_error)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
            or chunk_rows < 1:
        raise IngestError(f"--chunk-rows={chunk_rows!r}: expected a positive integer")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise IngestError("no INPUT given")
    out_dir = os.fspath(out_dir)
    if time_format is not None:
        _user_time_format(time_format)  # fail early on a bad format

    # ---- phase 1: read and validate everything --------------------------------
    series: list[_Series] = []
    builder, sample_files, sample_skipped = None, [], {}
    for path in _expand(inputs):
        data = _read_file(path)
        payload = data
        if path.lower().endswith(".zst"):
            csv_name = path.lower().endswith(".csv.zst")
            try:
                payload = _zstd_decompress(path, data)
            except IngestError:
                if csv_name or on_error == "stop":
                    raise
                payload = b""  # a broken sample file: counted below
            if not csv_name or _npy_kind(payload):
                builder = builder or _SampleBuilder()
                try:
                    x, y = _load_sample(path, payload)
                except IngestError:
                    if on_error == "stop":
                        raise
                    sample_skipped["bad_sample_file"] = sample_skipped.get("bad_sample_file", 0) + 1
                    continue
                why = builder.problem(x, y)
                if why:
                    if on_error == "stop":
                        raise IngestError(f"{path}: {why}")
                    sample_skipped["sample_mismatch"] = sample_skipped.get("sample_mismatch", 0) + 1
                    continue
                builder.add(x, y)
                sample_files.append({"name": os.path.basename(path),
                                     "sha256": hashlib.sha256(data).hexdigest(),
                                     "labeled": y is not None})
                continue
        got = _read_csv_bytes(path, payload, time_format, on_error)
        for s in got:  # the sha256 is of the file as stored (compressed or not)
            s.sha256 = hashlib.sha256(data).hexdigest()
        series += got

    generic = [s for s in series if s.kind == "csv"]
    if instrument is not None:
        if len(generic) != 1 or not instrument:
            raise IngestError(f"--instrument={instrument!r} needs exactly one generic CSV "
                              f"input, got {len(generic)}")
        generic[0].instrument = instrument

    # Shard names; an instrument from several files becomes time-ordered parts.
    by_inst: dict[str, list[_Series]] = {}
    for s in series:
        by_inst.setdefault(s.instrument, []).append(s)
    plan: list[tuple[str, _Series]] = []
    unwritten: list[_Series] = []
    for inst in sorted(by_inst):
        parts = [s for s in by_inst[inst] if s.timestamps.size]
        unwritten += [s for s in by_inst[inst] if not s.timestamps.size]
        parts.sort(key=lambda s: int(s.timestamps[0]))
        for a, b in zip(parts, parts[1:]):
            if b.timestamps[0] <= a.timestamps[-1]:
                raise IngestError(f"{b.source}: instrument {inst!r} overlaps {a.source} "
                                  f"({_fmt_ts(b.timestamps[0])} <= {_fmt_ts(a.timestamps[-1])})")
        base = _safe_name(inst)
        for k, s in enumerate(parts):
            name = base + (f".part{k + 1}" if len(parts) > 1 else "") + SHARD_SUFFIX
            plan.append((name, s))
    names = [n for n, _ in plan]
    if len(set(n.lower() for n in names)) != len(names):
        dup = sorted(n for n in names if [m.lower() for m in names].count(n.lower()) > 1)
        raise IngestError(f"{out_dir}: instrument names map to the same file {dup[0]!r}; "
                          "rename an input or pass --instrument")
    samples_name = SAMPLE_FILE if builder is not None and builder.shape is not None else None

    # Refuse to mix with other data: load_dir would pick up stale shards.
    if os.path.isdir(out_dir):
        ours = set(names) | ({samples_name} if samples_name else set())
        foreign = sorted(n for n in os.listdir(out_dir) if not n.startswith(".")
                         and n.endswith((SHARD_SUFFIX, SAMPLE_SUFFIX)) and n not in ours)
        if foreign:
            raise IngestError(f"{out_dir}: already holds other shards ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); use an empty directory")

    # ---- phase 2: write ---------------------------------------------------------
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, "manifest.json")
    try:
        os.remove(manifest_path)  # its presence must mean "this ingest completed"
    except FileNotFoundError:
        pass
    entries, m_entries = [], []
    for name, s in plan:
        meta = {"generator": "jaxquant.data.ingest", "source": s.source_name,
                "source_sha256": s.sha256, "source_kind": s.kind, "skipped": s.skipped,
                "notes": s.notes, **s.extra_meta}
        write_shard(os.path.join(out_dir, name), s.instrument, s.timestamps, s.bars,
                    chunk_rows=int(chunk_rows), meta=meta)
        entries.append(_entry(s, os.path.join(out_dir, name)))
        m_entries.append(_entry(s, name) | {"source_sha256": s.sha256})
    for s in unwritten:
        entries.append(_entry(s, None))
        m_entries.append(_entry(s, None) | {"source_sha256": s.sha256})

    samples = m_samples = None
    if samples_name:
        agg = hashlib.sha256("".join(f"{f['name']} {f['sha256']}\n" for f in sample_files)
                             .encode()).hexdigest()
        meta = {"generator": "jaxquant.data.ingest", "num_sources": len(sample_files),
                "sources_sha256": agg, "skipped": dict(sorted(sample_skipped.items()))}
        spath = os.path.join(out_dir, samples_name)
        atomic_write_bytes(spath, builder.build(meta, spath))
        n_lab = sum(f["labeled"] for f in sample_files)
        samples = {"shard": spath, "num_samples": len(sample_files), "num_labels": n_lab,
                   "shape": list(builder.shape), "dtype": builder.dtype.str,
                   "label_shape": (None if builder.label_shape is None
                                   else list(builder.label_shape)),
                   "label_dtype": None if builder.label_dtype is None else builder.label_dtype.str,
                   "skipped": dict(sorted(sample_skipped.items()))}
        m_samples = {**samples, "shard": samples_name, "sources": sample_files}
    elif sample_skipped:
        samples = {"shard": None, "num_samples": 0, "num_labels": 0,
                   "skipped": dict(sorted(sample_skipped.items()))}
        m_samples = samples

    total_skipped: dict[str, int] = {}
    for e in entries:
        for k, v in e["skipped"].items():
            total_skipped[k] = total_skipped.get(k, 0) + v
    for k, v in sample_skipped.items():
        total_skipped[k] = total_skipped.get(k, 0) + v
    total_rows = sum(e["rows"] for e in entries)
    manifest = {"generator": "jaxquant.data.ingest", "shards": m_entries, "samples": m_samples,
                "total_rows": total_rows, "skipped": dict(sorted(total_skipped.items()))}
    atomic_write_json(manifest_path, manifest)
    return {"out_dir": out_dir, "instruments": entries, "samples": samples,
            "total_rows": total_rows, "skipped": dict(sorted(total_skipped.items())),
            "manifest": manifest_path, "elapsed_s": time.perf_counter() - t0}


def _entry(s: _Series, shard: str | None) -> dict:
    n = int(s.timestamps.size)
    notes = list(s.notes) + ([] if n else ["no rows left: no shard written"])
    return {"instrument": s.instrument, "rows": n,
            "first": _fmt_ts(s.timestamps[0]) if n else None,
            "last": _fmt_ts(s.timestamps[-1]) if n else None,
            "skipped": s.skipped, "notes": notes, "source": s.source_name,
            "time_format": s.extra_meta.get("time_format"), "shard": shard}


def format_summary(summary: dict) -> str:
    """Human-readable multi-line summary of :func:`ingest`'s result."""
    out = []
    for e in summary["instruments"]:
        span = f"{e['first']} .. {e['last']}" if e["rows"] else "-"
        out.append(f"{e['instrument']}: {e['rows']} rows, {span} -> {e['shard'] or '(none)'}"
                   f"  [from {e['source']}]")
        if e["skipped"]:
            out.append("    skipped: " + ", ".join(f"{k}={v}" for k, v in e["skipped"].items()))
        for note in e["notes"]:
            out.append(f"    note: {note}")
    s = summary["samples"]
    if s:
        if s["shard"]:
            out.append(f"samples: {s['num_samples']} x {s['shape']} {s['dtype']}, "
                       f"{s['num_labels']} labelled -> {s['shard']}")
        if s["skipped"]:
            out.append("    skipped files: "
                       + ", ".join(f"{k}={v}" for k, v in s["skipped"].items()))
    out.append(f"total: {summary['total_rows']} rows; manifest {summary['manifest']} "
               f"({summary['elapsed_s']:.2f}s)")
    return "\n".join(out)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _define_flags(fv) -> None:
    """Defined only when run as a script (no clashes with other modules' flags)."""
    from absl import flags

    flags.DEFINE_string("out", None, "Output directory for shards + manifest.json.", flag_values=fv)
    flags.DEFINE_string("time_format", None, "strptime format of the time column "
                        "(or epoch_s/ms/us/ns); default: auto-detect.", flag_values=fv)
    flags.DEFINE_enum("on_error", "stop", ["stop", "skip"], "stop: fail on the first bad row; "
                      "skip: drop bad rows and count them.", flag_values=fv)
    flags.DEFINE_string("instrument", None, "Instrument name for a single generic CSV input.",
                        flag_values=fv)
    flags.DEFINE_integer("chunk_rows", 4096, "Rows per compressed shard chunk.", flag_values=fv)


def _one_line(msg: str) -> str:
    return msg.replace("\r", "\\r").replace("\n", "\\n")


def _usage_error(msg: str) -> None:
    print(f"ingest: error: {_one_line(msg)}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parser accepting --time-format style names; bad flags -> one line, exit 2."""
    from absl import flags

    fixed, done = [], False
    for a in argv:
        if not done and a.startswith("--") and len(a) > 2:
            name, eq, val = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + val
        done = done or a == "--"
        fixed.append(a)
    try:
        return flags.FLAGS(fixed)
    except flags.Error as e:
        _usage_error(str(e).splitlines()[0])


def main(argv: list[str]) -> None:
    """CLI entry point (absl ``app.run`` main): exit 2 on bad input, 1 on I/O errors."""
    from absl import flags

    fl = flags.FLAGS
    if not fl.out:
        _usage_error("--out=DIR is required")
    if len(argv) < 2:
        _usage_error("no INPUT given (files or folders of *.csv / *.zst)")
    try:
        summary = ingest(argv[1:], fl.out, time_format=fl.time_format, on_error=fl.on_error,
                         instrument=fl.instrument, chunk_rows=fl.chunk_rows)
    except (IngestError, ShardError) as e:
        # Bad input: the message already says <file>:<line>: <reason>.
        print(_one_line(str(e)), file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"ingest: error: cannot write {fl.out}: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(1)
    print(format_summary(summary))


if __name__ == "__main__":
    from absl import app, flags as _flags

    _define_flags(_flags.FLAGS)
    app.run(main, flags_parser=_parse_flags)
