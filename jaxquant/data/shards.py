"""On-disk shard format (`.jqs`) for one-minute futures bars.

A shard holds the bars of one instrument (or a contiguous part of one) as a
JSON header followed by independently compressed zstd chunks, so any row range
can be read by decompressing only the chunks that overlap it.  The exact byte
layout is documented in `docs/data-format.md`; in short::

    b"JQSHARD\\0" | u32 version | u32 L | header JSON (L bytes) | u32 crc32(header)
    | chunk 0 | chunk 1 | ...        (file ends exactly at the end of the last chunk)

Each chunk is one zstd frame of `timestamps[a:b]` (`<i8`) followed by
`bars[a:b]` (`<f8`, row-major `[rows, 6]`).  Integrity is checked at every
level (header crc32, per-chunk crc32 of the compressed bytes, zstd content
checksum, decompressed size), and every failure is a `ShardError` that
names the file, the chunk/row range and the reason.
"""

import json
import os
import struct
import zlib

import numpy as np
import zstandard

from jaxquant import io_utils

BAR_COLUMNS = ("open", "high", "low", "close", "volume", "open_interest")
FORMAT_VERSION = 1
MAGIC = b"JQSHARD\0"
SHARD_SUFFIX = ".jqs"
DEFAULT_CHUNK_ROWS = 4096
ZSTD_LEVEL = 3

_NCOL = len(BAR_COLUMNS)
_ROW_BYTES = 8 + 8 * _NCOL  # one int64 timestamp + six float64 values
PREAMBLE = struct.Struct("<8sII")  # magic, version, header length (every format)
U32 = struct.Struct("<I")
_TS_DTYPE = np.dtype("<i8")
_BAR_DTYPE = np.dtype("<f8")


class ShardError(ValueError):
  """A shard cannot be written or read; the message names file and reason."""


def crc32(data):
  return zlib.crc32(data) & 0xFFFFFFFF


def _chunk_desc(index, row0, rows):
  return f"chunk {index} (rows {row0}-{row0 + rows - 1})"


# -------------------- Writing


def _validate_inputs(path, instrument, timestamps, bars, chunk_rows):
  """Check and normalise writer inputs; return little-endian copies."""
  def fail(reason):
    return ShardError(f"shard {path}: cannot write: {reason}")

  if not isinstance(instrument, str) or not instrument:
    raise fail(f"instrument must be a non-empty str, got {instrument!r}")
  if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
          or chunk_rows < 1:
    raise fail(f"chunk_rows must be a positive int, got {chunk_rows!r}")

  ts = np.asarray(timestamps)
  if np.issubdtype(ts.dtype, np.datetime64):
    ts = ts.astype("datetime64[ns]").view(np.int64)
  if ts.ndim != 1:
    raise fail(f"timestamps must be 1-D, got shape {ts.shape}")
  if ts.size and not np.issubdtype(ts.dtype, np.integer):
    raise fail(f"timestamps must be int64 nanoseconds, got dtype {ts.dtype}")
  if ts.dtype.kind == "u" and ts.size and ts.max() > np.iinfo(np.int64).max:
    raise fail("timestamps overflow int64")
  ts = ts.astype(_TS_DTYPE)

  b = np.asarray(bars)
  if b.ndim != 2 or b.shape[1] != _NCOL:
    raise fail(f"bars must have shape [n, {_NCOL}] {BAR_COLUMNS}, got {b.shape}")
  if b.shape[0] != ts.shape[0]:
    raise fail(f"{ts.shape[0]} timestamps but {b.shape[0]} bar rows")
  if b.size and not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)):
    raise fail(f"bars must be real numbers, got dtype {b.dtype}")
  b = np.ascontiguousarray(b, dtype=_BAR_DTYPE)

  bad = ~np.isfinite(b)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise fail(f"bars contain {int(bad.sum())} non-finite value(s), first at "
               f"row {row} column {BAR_COLUMNS[col]!r} ({b[row, col]})")
  if ts.size > 1:
    steps = np.diff(ts)
    if (steps <= 0).any():
      i = int(np.argmax(steps <= 0))
      raise fail(f"timestamps must be strictly increasing: row {i + 1} "
                 f"({ts[i + 1]}) <= row {i} ({ts[i]})")
  return ts, b


def _header_bytes(header, path):
  try:
    # Sorted keys + fixed separators: identical inputs give identical bytes.
    text = json.dumps(header, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False, default=io_utils.json_default)
  except (TypeError, ValueError) as e:
    raise ShardError(f"shard {path}: cannot write: meta is not JSON-serialisable ({e})") from e
  return text.encode("utf-8")


def write_shard(path, instrument, timestamps, bars, *, chunk_rows=DEFAULT_CHUNK_ROWS, meta=None):
  """Write one shard atomically.

  Args:
    path: destination file (conventionally `<instrument>.jqs`).
    instrument: instrument name stored in the header.
    timestamps: `[n]` strictly increasing int64 ns since epoch (naive
      exchange local time); `datetime64` arrays are accepted too.
    bars: `[n, 6]` finite values in `BAR_COLUMNS` order (stored float64).
    chunk_rows: rows per compressed chunk (the last chunk may be shorter).
    meta: optional JSON-serialisable user dict stored in the header.

  Raises:
    ShardError: invalid inputs (the file is not created/replaced).

  The output is a pure function of the inputs: rewriting the same data
  gives a byte-identical file.
  """
  path = os.fspath(path)
  ts, b = _validate_inputs(path, instrument, timestamps, bars, chunk_rows)
  chunk_rows = int(chunk_rows)
  meta = {} if meta is None else meta
  if not isinstance(meta, dict):
    raise ShardError(f"shard {path}: cannot write: meta must be a dict, got {type(meta).__name__}")

  cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True,
                                  write_content_size=True)
  blobs, rows = [], []
  for a in range(0, ts.shape[0], chunk_rows):
    z = min(a + chunk_rows, ts.shape[0])
    blobs.append(cctx.compress(ts[a:z].tobytes() + b[a:z].tobytes()))
    rows.append(z - a)

  def build(header_len):
    offset = PREAMBLE.size + header_len + U32.size
    chunks = []
    for blob, n in zip(blobs, rows):
      chunks.append({"offset": offset, "length": len(blob), "rows": n,
                     "crc32": crc32(blob)})
      offset += len(blob)
    header = {"instrument": instrument, "num_rows": int(ts.shape[0]),
              "columns": list(BAR_COLUMNS), "chunk_rows": chunk_rows,
              "chunks": chunks, "meta": meta}
    return _header_bytes(header, path)

  # Offsets depend on the header length, which depends on the offsets' digits:
  # iterate to the fixed point (monotone, converges in a couple of steps).
  header_len, hdr = 0, build(0)
  while len(hdr) != header_len:
    header_len = len(hdr)
    hdr = build(header_len)

  out = [PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(hdr)), hdr, U32.pack(crc32(hdr))]
  io_utils.atomic_write_bytes(path, b"".join(out + blobs))


# -------------------- Reading


class CheckedFileReader:
  """Open file + positional reads + errors naming the file; subclasses parse in `_open`.

  Shared by the bar shards here and the sample shards of `samples`.
  """

  def __init__(self, path):
    self.path = os.fspath(path)
    self._fd = None
    try:
      self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as e:
      raise self._err(f"cannot open ({e.strerror or e})") from e
    try:
      self._open()
    except BaseException:
      self.close()
      raise

  def _open(self):
    raise NotImplementedError

  def _err(self, reason):
    return ShardError(f"shard {self.path}: {reason}")

  def _read_header(self, magic, max_version, kind):
    """(header bytes, offset after them) once the preamble — magic, version, header
    length — and the header's crc32 check out; `kind` names the format in errors."""
    size = os.fstat(self._fd).st_size
    if size == 0:
      raise self._err(f"empty file (0 bytes), not a jaxquant {kind}")
    pre = self._pread(PREAMBLE.size, 0)
    if not magic.startswith(pre[:len(magic)]):  # prefix test: tiny files too
      raise self._err(f"bad magic {pre[:len(magic)]!r}, not a jaxquant {kind}")
    if len(pre) < PREAMBLE.size:
      raise self._err(f"truncated: file is {size} bytes, shorter than the "
                      f"{PREAMBLE.size}-byte preamble")
    _, version, hlen = PREAMBLE.unpack(pre)
    if version > max_version:
      raise self._err(f"written by a newer jaxquant (format v{version} > "
                      f"{max_version}); upgrade jaxquant to read it")
    if version < 1:
      raise self._err(f"invalid format version {version} (file corrupt?)")
    hdr_end = PREAMBLE.size + hlen + U32.size
    if hdr_end > size:
      raise self._err(f"truncated or corrupt: header declares {hlen} bytes "
                      f"but the file is only {size} bytes")
    hdr = self._pread(hlen + U32.size, PREAMBLE.size)
    (crc,) = U32.unpack(hdr[hlen:])
    if crc32(hdr[:hlen]) != crc:
      raise self._err("header checksum mismatch (file corrupt?)")
    return hdr[:hlen], hdr_end

  def _pread(self, n, offset):
    """Read exactly `n` bytes at `offset` (short only at end of file)."""
    parts, got = [], 0
    while got < n:
      part = os.pread(self._fd, n - got, offset + got)
      if not part:
        break
      parts.append(part)
      got += len(part)
    return b"".join(parts)

  def close(self):
    """Close the file descriptor (idempotent)."""
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:
      pass


class ShardReader(CheckedFileReader):
  """Random-access reader for one `.jqs` shard.

  Opening validates everything except chunk contents (magic, version,
  header crc32 and JSON, chunk table vs. file size); each chunk is verified
  when it is read.  Use as a context manager or call `close`.

  Attributes:
    path, instrument, num_rows, columns, meta, chunk_rows.
  """

  def _open(self):
    size = os.fstat(self._fd).st_size
    self._size = size
    hdr, hdr_end = self._read_header(MAGIC, FORMAT_VERSION, "shard")
    try:
      header = json.loads(hdr.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
      raise self._err(f"header is not valid JSON ({e})") from e
    self._parse_header(header, hdr_end, size)

  def _parse_header(self, h, data_start, size):
    def is_int(x):
      return isinstance(x, int) and not isinstance(x, bool)

    if not isinstance(h, dict):
      raise self._err("header is not a JSON object")
    missing = {"instrument", "num_rows", "columns", "chunk_rows", "chunks", "meta"} - set(h)
    if missing:
      raise self._err(f"header is missing field(s) {sorted(missing)}")
    if not isinstance(h["instrument"], str) or not is_int(h["num_rows"]) \
            or h["num_rows"] < 0 or not is_int(h["chunk_rows"]) or h["chunk_rows"] < 1 \
            or not isinstance(h["chunks"], list) or not isinstance(h["meta"], dict):
      raise self._err("header has fields of the wrong type")
    if tuple(h["columns"]) != BAR_COLUMNS:
      raise self._err(f"unexpected columns {h['columns']}, expected {list(BAR_COLUMNS)}")

    offsets, lengths, rows, crcs = [], [], [], []
    expected = data_start
    for i, c in enumerate(h["chunks"]):
      if not isinstance(c, dict) or not all(is_int(c.get(k)) for k in
                                            ("offset", "length", "rows", "crc32")):
        raise self._err(f"chunk {i}: malformed chunk entry in header")
      if c["offset"] != expected or c["length"] < 1 or c["rows"] < 1:
        raise self._err(f"chunk {i}: chunk table is inconsistent "
                        f"(offset {c['offset']}, expected {expected})")
      offsets.append(c["offset"]); lengths.append(c["length"])
      rows.append(c["rows"]); crcs.append(c["crc32"])
      expected += c["length"]
    if sum(rows) != h["num_rows"]:
      raise self._err(f"header declares {h['num_rows']} rows but its chunks "
                      f"hold {sum(rows)}")
    if expected != size:
      what = "truncated" if size < expected else "has trailing garbage"
      raise self._err(f"{what}: chunks end at byte {expected} but the file "
                      f"is {size} bytes")

    self.instrument = h["instrument"]
    self.num_rows = h["num_rows"]
    self.columns = tuple(h["columns"])
    self.meta = h["meta"]
    self.chunk_rows = h["chunk_rows"]
    self._offsets, self._lengths, self._rows, self._crcs = offsets, lengths, rows, crcs
    self._row_starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
    self._dctx = zstandard.ZstdDecompressor()

  def _read_chunk(self, i):
    """Read, verify and decode chunk `i`."""
    rows, row0 = self._rows[i], int(self._row_starts[i])
    where = _chunk_desc(i, row0, rows)
    blob = self._pread(self._lengths[i], self._offsets[i])
    if len(blob) != self._lengths[i]:
      raise self._err(f"{where} truncated (file changed since it was opened?)")
    if crc32(blob) != self._crcs[i]:
      raise self._err(f"{where} checksum mismatch (file corrupt?)")
    want = rows * _ROW_BYTES
    try:
      declared = zstandard.frame_content_size(blob)
      if declared != want:
        raise self._err(f"{where} declares {declared} decompressed bytes, "
                        f"expected {want} (file corrupt?)")
      raw = self._dctx.decompress(blob, max_output_size=want)
    except zstandard.ZstdError as e:
      raise self._err(f"{where} cannot be decompressed ({e})") from e
    if len(raw) != want:
      raise self._err(f"{where} decompressed to {len(raw)} bytes, expected {want}")
    ts = np.frombuffer(raw, dtype=_TS_DTYPE, count=rows)
    bars = np.frombuffer(raw, dtype=_BAR_DTYPE, offset=rows * 8).reshape(rows, _NCOL)
    return ts, bars

  # -- public API --------------------------------------------------------

  def read(self, start=0, stop=None):
    """Read rows `[start, stop)`, decompressing only the overlapping chunks.

    Args:
      start: first row (0 <= start <= stop).
      stop: one past the last row (<= num_rows); None means num_rows.

    Returns:
      `(timestamps[int64, stop-start], bars[float64, stop-start, 6])`,
      fresh native-endian arrays.

    Raises:
      ShardError: bad range, or a needed chunk fails verification.
    """
    if self._fd is None:
      raise self._err("reader is closed")
    stop = self.num_rows if stop is None else stop
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= self.num_rows:
      raise self._err(f"invalid row range [{start}, {stop}) for {self.num_rows} rows")
    ts_out = np.empty(stop - start, dtype=np.int64)
    bars_out = np.empty((stop - start, _NCOL), dtype=np.float64)
    if start == stop:
      return ts_out, bars_out
    first = int(np.searchsorted(self._row_starts, start, side="right")) - 1
    last = int(np.searchsorted(self._row_starts, stop, side="left")) - 1
    for i in range(first, last + 1):
      ts, bars = self._read_chunk(i)
      c0 = int(self._row_starts[i])
      a, b = max(start, c0), min(stop, c0 + self._rows[i])
      ts_out[a - start:b - start] = ts[a - c0:b - c0]
      bars_out[a - start:b - start] = bars[a - c0:b - c0]
    return ts_out, bars_out

  def read_all(self):
    """Read every row; see `read`."""
    return self.read(0, self.num_rows)

  def __repr__(self):
    return (f"ShardReader({self.path!r}, instrument={getattr(self, 'instrument', None)!r}, "
            f"num_rows={getattr(self, 'num_rows', None)})")


# -------------------- Directories


def list_shards(directory):
  """Return the sorted paths of the `*.jqs` files in `directory`.

  Hidden files (e.g. in-progress atomic-write temp files) are ignored.

  Raises:
    ShardError: the directory does not exist or holds no shard.
  """
  directory = os.fspath(directory)
  try:
    names = os.listdir(directory)
  except OSError as e:
    raise ShardError(f"shard directory {directory}: cannot list ({e.strerror or e})") from e
  paths = sorted(os.path.join(directory, n) for n in names
                 if n.endswith(SHARD_SUFFIX) and not n.startswith("."))
  if not paths:
    raise ShardError(f"shard directory {directory}: no *{SHARD_SUFFIX} files found")
  return paths


def load_dir(directory):
  """Load every shard of a directory, one entry per instrument.

  Several shards of the same instrument are ordered by their first
  timestamp and concatenated; their time ranges must not overlap.

  Args:
    directory: folder holding `*.jqs` files.

  Returns:
    `[(instrument, timestamps[n], bars[n, 6]), ...]` sorted by instrument.

  Raises:
    ShardError: no shards, a corrupt shard, or overlapping parts.
  """
  parts = {}
  for path in list_shards(directory):
    with ShardReader(path) as r:
      ts, bars = r.read_all()
      parts.setdefault(r.instrument, []).append((path, ts, bars))

  out = []
  for name in sorted(parts):
    group = sorted((p for p in parts[name] if p[1].size),
                   key=lambda p: int(p[1][0])) or parts[name][:1]
    for (pa, ta, _), (pb, tb, _) in zip(group, group[1:]):
      if tb[0] <= ta[-1]:
        raise ShardError(f"shard {pb}: instrument {name!r} overlaps {pa} "
                         f"(starts at {tb[0]} <= previous end {ta[-1]}); "
                         "timestamps must keep increasing across parts")
    out.append((name, np.concatenate([p[1] for p in group]),
                np.concatenate([p[2] for p in group])))
  return out
