"""Read-only `.jqs` bar shards (format v1, before Parquet), for conversion only.

`python -m jaxquant.data.ingest --out=NEW OLD_DIR` converts a folder of them
to Parquet shards (`shards`). A `.jqs` file is::

    b"JQSHARD\\0" | u32 version (1) | u32 L | header JSON (L bytes) | u32 crc32(header)
    | chunk 0 | chunk 1 | ...        (the file ends at the end of the last chunk)

The header lists each chunk's offset, length, rows and crc32; a chunk is one
zstd frame of `timestamps[a:b]` (`<i8`) then `bars[a:b]` (`<f8`, `[rows, 6]`).
Every level is checked (header crc32, chunk table against the file size,
chunk crc32, zstd checksum and size); every failure is a `ShardError`
naming the file.

`ShardError` is defined here and re-exported by `shards` (which imports this
module for conversion), so both formats raise the one error without an import
circle.
"""

import json
import os
import struct
import zlib

import numpy as np
import zstandard

JQS_MAGIC = b"JQSHARD\0"
JQS_VERSION = 1
JQS_SUFFIX = ".jqs"
JQS_COLUMNS = ("open", "high", "low", "close", "volume", "open_interest")  # Frozen in v1.
_NCOL = len(JQS_COLUMNS)
_ROW_BYTES = 8 + 8 * _NCOL  # one int64 timestamp + six float64 values


class ShardError(ValueError):
  """A shard cannot be written or read; the message names file and reason."""


PREAMBLE = struct.Struct("<8sII")  # magic, version, header length (every format)
U32 = struct.Struct("<I")


def crc32(data):
  return zlib.crc32(data) & 0xFFFFFFFF


class CheckedFileReader:
  """Open file + positional reads + errors naming the file; subclasses parse in `_open`."""

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


def _is_int(x):
  return isinstance(x, int) and not isinstance(x, bool)


class LegacyShardReader(CheckedFileReader):
  """One `.jqs` shard, checked as it is opened and read.

  Attributes:
    path, instrument, num_rows, meta.
  """

  def _open(self):
    size = os.fstat(self._fd).st_size
    hdr, start = self._read_header(JQS_MAGIC, JQS_VERSION, "shard")
    try:
      h = json.loads(hdr.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
      raise self._err(f"header is not valid JSON ({e})") from e
    if not isinstance(h, dict) or not isinstance(h.get("instrument"), str) \
            or not _is_int(h.get("num_rows")) or not isinstance(h.get("chunks"), list) \
            or not isinstance(h.get("meta"), dict):
      raise self._err("header lacks instrument, num_rows, chunks or meta (file corrupt?)")
    if tuple(h.get("columns") or ()) != JQS_COLUMNS:
      raise self._err(f"unexpected columns {h.get('columns')}, expected {list(JQS_COLUMNS)}")
    self._chunks, end = [], start
    for i, c in enumerate(h["chunks"]):
      if not isinstance(c, dict) or not all(_is_int(c.get(k)) for k in
                                            ("offset", "length", "rows", "crc32")) \
              or c["offset"] != end or c["length"] < 1 or c["rows"] < 1:
        raise self._err(f"chunk {i}: chunk table is inconsistent (file corrupt?)")
      self._chunks.append(c)
      end += c["length"]
    if sum(c["rows"] for c in self._chunks) != h["num_rows"]:
      raise self._err(f"header declares {h['num_rows']} rows but its chunks hold others")
    if end != size:
      what = "truncated" if size < end else "has trailing garbage"
      raise self._err(f"{what}: chunks end at byte {end} but the file is {size} bytes")
    self.instrument, self.num_rows, self.meta = h["instrument"], h["num_rows"], h["meta"]

  def read_all(self):
    """Every row, each chunk verified.

    Returns:
      `(timestamps[int64, n], bars[float64, n, 6])`.
    """
    ts_out = np.empty(self.num_rows, np.int64)
    bars_out = np.empty((self.num_rows, _NCOL), np.float64)
    dctx, row0 = zstandard.ZstdDecompressor(), 0
    for i, c in enumerate(self._chunks):
      rows, want = c["rows"], c["rows"] * _ROW_BYTES
      where = f"chunk {i} (rows {row0}-{row0 + rows - 1})"
      blob = self._pread(c["length"], c["offset"])
      if len(blob) != c["length"] or crc32(blob) != c["crc32"]:
        raise self._err(f"{where} checksum mismatch (file corrupt?)")
      try:
        if zstandard.frame_content_size(blob) != want:
          raise self._err(f"{where} declares another decompressed size (file corrupt?)")
        raw = dctx.decompress(blob, max_output_size=want)
      except zstandard.ZstdError as e:
        raise self._err(f"{where} cannot be decompressed ({e})") from e
      if len(raw) != want:
        raise self._err(f"{where} decompressed to {len(raw)} bytes, expected {want}")
      ts_out[row0:row0 + rows] = np.frombuffer(raw, "<i8", count=rows)
      bars_out[row0:row0 + rows] = np.frombuffer(raw, "<f8", offset=rows * 8).reshape(rows, _NCOL)
      row0 += rows
    return ts_out, bars_out


def read_jqs(path):
  """The whole of one `.jqs` shard.

  Args:
    path: the file.

  Returns:
    `(instrument, timestamps[int64, n], bars[float64, n, 6], meta dict)`.

  Raises:
    ShardError: the file is not a readable `.jqs` shard (names the file).
  """
  with LegacyShardReader(path) as r:
    ts, bars = r.read_all()
    return r.instrument, ts, bars, r.meta
