"""Bar shards: one Parquet file per instrument (or contiguous part of one).

Columns `timestamp` (`timestamp[ns]`, no time zone: naive exchange-local time)
and `BAR_COLUMNS` (float64), none nullable; zstd pages with CRC-32 page
checksums, verified on every read. The instrument, the format version and a
free-form `meta` dict are in the file's key-value metadata. `manifest.json`
beside the shards records each file's size and sha256 (`MANIFEST_KEY`), and
`load_dir` checks every file against it before reading a byte of data, so any
corruption (also one that Parquet's page checksums do not cover: page headers,
the footer) is one `ShardError` naming the file. The layout is in
`docs/data-format.md`; pandas, polars and DuckDB open the files directly.
"""

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jaxquant import io_utils
from jaxquant.data import legacy_shards

BAR_COLUMNS = ("open", "high", "low", "close", "volume", "open_interest")
TIME_COLUMN = "timestamp"
FORMAT_VERSION = 2  # Version 1 was the binary `.jqs` (jaxquant/data/legacy_shards.py).
SHARD_SUFFIX = ".parquet"
DEFAULT_CHUNK_ROWS = 65536  # Rows per Parquet row group.
ZSTD_LEVEL = 3
MANIFEST = "manifest.json"
MANIFEST_KEY = "shard_files"  # In manifest.json: {file name: {"bytes", "sha256"}}.
NOT_BARS = ("samples.parquet",)  # samples.SAMPLE_FILE: ingest's sample set, beside the bars.

_NCOL = len(BAR_COLUMNS)
_KEY = "jaxquant."  # Prefix of our key-value metadata keys.
_SCHEMA = pa.schema([pa.field(TIME_COLUMN, pa.timestamp("ns"), nullable=False)]
                    + [pa.field(c, pa.float64(), nullable=False) for c in BAR_COLUMNS])
# Delta-coded times (regular steps: a few bytes per row group) and byte-split floats:
# 40 % smaller than Parquet's default dictionary encoding here; every reader has both.
_ENCODING = {TIME_COLUMN: "DELTA_BINARY_PACKED", **{c: "BYTE_STREAM_SPLIT" for c in BAR_COLUMNS}}

# One error for both formats: the `.jqs` reader (legacy_shards) raises it too.
ShardError = legacy_shards.ShardError


# -------------------- Writing


def _validate_inputs(path, instrument, timestamps, bars, chunk_rows):
  """Check and normalise writer inputs: (int64 timestamps, float64 bars)."""
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
  ts = ts.astype(np.int64)

  b = np.asarray(bars)
  if b.ndim != 2 or b.shape[1] != _NCOL:
    raise fail(f"bars must have shape [n, {_NCOL}] {BAR_COLUMNS}, got {b.shape}")
  if b.shape[0] != ts.shape[0]:
    raise fail(f"{ts.shape[0]} timestamps but {b.shape[0]} bar rows")
  if b.size and not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)):
    raise fail(f"bars must be real numbers, got dtype {b.dtype}")
  b = b.astype(np.float64, copy=False)
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


def write_shard(path, instrument, timestamps, bars, *, chunk_rows=DEFAULT_CHUNK_ROWS, meta=None):
  """Write one shard atomically.

  Args:
    path: destination file (conventionally `<instrument>.parquet`).
    instrument: instrument name stored in the metadata.
    timestamps: `[n]` strictly increasing int64 ns since epoch (naive
      exchange local time); `datetime64` arrays are accepted too.
    bars: `[n, 6]` finite values in `BAR_COLUMNS` order (stored float64).
    chunk_rows: rows per Parquet row group (the last may be shorter).
    meta: optional JSON-serialisable user dict stored in the metadata.

  Returns:
    `{"bytes": size, "sha256": hex digest}` of the file, for the manifest
    (`MANIFEST_KEY`).

  Raises:
    ShardError: invalid inputs (the file is not created/replaced).

  The output is a pure function of the inputs (and the pyarrow version):
  rewriting the same data gives a byte-identical file.
  """
  path = os.fspath(path)
  ts, b = _validate_inputs(path, instrument, timestamps, bars, chunk_rows)
  meta = {} if meta is None else meta
  if not isinstance(meta, dict):
    raise ShardError(f"shard {path}: cannot write: meta must be a dict, got {type(meta).__name__}")
  try:
    # Sorted keys + fixed separators: identical inputs give identical bytes.
    meta_text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           allow_nan=False, default=io_utils.json_default)
  except (TypeError, ValueError) as e:
    raise ShardError(f"shard {path}: cannot write: meta is not JSON-serialisable ({e})") from e

  table = pa.Table.from_arrays([pa.array(ts.view("datetime64[ns]"), pa.timestamp("ns"))]
                               + [pa.array(b[:, j]) for j in range(_NCOL)], schema=_SCHEMA)
  sink = pa.BufferOutputStream()
  # store_schema=False: no base64 Arrow schema (it would hold the metadata twice);
  # Parquet's own types say timestamp[ns] and float64.
  with pq.ParquetWriter(sink, _SCHEMA, compression="zstd", compression_level=ZSTD_LEVEL,
                        write_page_checksum=True, use_dictionary=False,
                        column_encoding=_ENCODING, store_schema=False) as writer:
    writer.write_table(table, row_group_size=int(chunk_rows))
    writer.add_key_value_metadata({_KEY + "format_version": str(FORMAT_VERSION),
                                   _KEY + "instrument": instrument,
                                   _KEY + "chunk_rows": str(int(chunk_rows)),
                                   _KEY + "meta": meta_text})
  data = sink.getvalue()
  io_utils.atomic_write_bytes(path, data)
  return {"bytes": data.size, "sha256": hashlib.sha256(data).hexdigest()}


# -------------------- Reading


def file_digest(path, block=1 << 20):
  """`{"bytes", "sha256"}` of a file, read in blocks (constant memory).

  Args:
    path: the file.
    block: bytes per read.

  Returns:
    The digest dict, as `write_shard` returns it.
  """
  return {"bytes": os.path.getsize(path), "sha256": io_utils.file_sha256(path, block)}


def verify_file(path, expected):
  """Raises ShardError unless the file's size and sha256 are `expected`'s.

  Args:
    path: the shard.
    expected: its manifest entry, `{"bytes", "sha256"}`.
  """
  try:
    got = file_digest(path)
  except OSError as e:
    raise ShardError(f"shard {path}: cannot open ({e.strerror or e})") from e
  if got["bytes"] == 0:
    raise ShardError(f"shard {path}: empty file (0 bytes), not a jaxquant shard")
  if got["bytes"] != expected.get("bytes"):
    what = "truncated" if got["bytes"] < expected.get("bytes", 0) else "has trailing bytes"
    raise ShardError(f"shard {path}: {what}: {got['bytes']} bytes, {MANIFEST} records "
                     f"{expected.get('bytes')} (file corrupt?)")
  if got["sha256"] != expected.get("sha256"):
    raise ShardError(f"shard {path}: sha256 differs from the one {MANIFEST} records "
                     "(file corrupt, or changed since it was written)")


class ShardReader:
  """Random-access reader for one shard (row groups read as needed).

  Opening checks the file against `expected` (its manifest entry) when
  given, then the footer: Parquet, the format version, the columns and
  their types. Each row group is checked (page checksums, no nulls, finite
  bars, increasing times) when it is read. Use as a context manager or call
  `close`.

  Attributes:
    path, instrument, num_rows, columns, meta, chunk_rows, format_version.
  """

  def __init__(self, path, expected=None):
    self.path = os.fspath(path)
    self._file = None
    if expected is not None:
      verify_file(self.path, expected)
    try:
      size = os.stat(self.path).st_size
    except OSError as e:
      raise self._err(f"cannot open ({e.strerror or e})") from e
    if size == 0:
      raise self._err("empty file (0 bytes), not a jaxquant shard")
    try:
      self._file = pq.ParquetFile(self.path, page_checksum_verification=True)
      md = self._file.metadata
      schema = self._file.schema_arrow
    except (OSError, pa.ArrowException) as e:
      self.close()
      raise self._err(f"not a readable Parquet file ({_one_line(e)})") from e
    try:
      self._check_footer(md, schema)
    except BaseException:
      self.close()
      raise

  def _err(self, reason):
    return ShardError(f"shard {self.path}: {reason}")

  def _check_footer(self, md, schema):
    kv = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
          for k, v in (md.metadata or {}).items()}
    version = kv.get(_KEY + "format_version")
    if version is None:
      raise self._err(f"not a jaxquant shard (no {_KEY}format_version in its metadata)")
    if not version.isdigit() or int(version) < 1:
      raise self._err(f"invalid format version {version!r} (file corrupt?)")
    if int(version) > FORMAT_VERSION:
      raise self._err(f"written by a newer jaxquant (format v{int(version)} > "
                      f"{FORMAT_VERSION}); upgrade jaxquant to read it")
    got, want = ([f"{f.name}: {f.type}" for f in sch] for sch in (schema, _SCHEMA))
    if got != want:
      raise self._err(f"columns {got}, expected {want} (timestamp[ns]: no time zone)")
    try:
      self.meta = json.loads(kv.get(_KEY + "meta", "{}"))
      self.chunk_rows = int(kv.get(_KEY + "chunk_rows", "0")) or None
    except ValueError as e:
      raise self._err(f"metadata is not valid ({e}) (file corrupt?)") from e
    self.instrument = kv.get(_KEY + "instrument")
    if not self.instrument or not isinstance(self.meta, dict):
      raise self._err("metadata lacks the instrument or a meta dict (file corrupt?)")
    self.format_version = int(version)
    self.columns = BAR_COLUMNS
    rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    self.num_rows = md.num_rows
    if sum(rows) != self.num_rows:
      raise self._err(f"footer declares {self.num_rows} rows but its row groups hold "
                      f"{sum(rows)} (file corrupt?)")
    self._row_starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])

  def _read_group(self, i):
    """Row group `i` as (int64 timestamps, float64 bars [rows, 6]), checked."""
    row0, row1 = int(self._row_starts[i]), int(self._row_starts[i + 1])
    where = f"row group {i} (rows {row0}-{row1 - 1})"
    try:
      # One thread: decoder threads would each grow a malloc arena of their own.
      t = self._file.read_row_group(i, use_threads=False)
    except (OSError, pa.ArrowException) as e:
      raise self._err(f"{where} cannot be read ({_one_line(e)}) (file corrupt?)") from e
    if t.num_rows != row1 - row0 or any(c.null_count for c in t.columns):
      raise self._err(f"{where}: {t.num_rows} rows, {sum(c.null_count for c in t.columns)} "
                      f"nulls; the footer declares {row1 - row0} rows, no nulls (file corrupt?)")
    ts = t.column(0).to_numpy().view(np.int64)
    bars = np.empty((t.num_rows, _NCOL), np.float64)
    for j in range(_NCOL):
      bars[:, j] = t.column(j + 1).to_numpy()
    if not np.isfinite(bars).all() or (np.diff(ts) <= 0).any():
      raise self._err(f"{where}: non-finite bars or times not strictly increasing "
                      "(not written by jaxquant, or corrupt)")
    return ts, bars

  def read(self, start=0, stop=None):
    """Read rows `[start, stop)`, decoding only the overlapping row groups.

    Args:
      start: first row (0 <= start <= stop).
      stop: one past the last row (<= num_rows); None means num_rows.

    Returns:
      `(timestamps[int64, stop-start], bars[float64, stop-start, 6])`,
      fresh arrays.

    Raises:
      ShardError: bad range, or a needed row group fails verification.
    """
    if self._file is None:
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
    for i in range(first, last + 1):  # One row group in memory at a time.
      ts, bars = self._read_group(i)
      g0 = int(self._row_starts[i])
      a, b = max(start, g0), min(stop, g0 + ts.shape[0])
      ts_out[a - start:b - start] = ts[a - g0:b - g0]
      bars_out[a - start:b - start] = bars[a - g0:b - g0]
    if (ts_out[1:] <= ts_out[:-1]).any():  # Across row groups too (no int64 np.diff copy).
      raise self._err("times are not strictly increasing (not written by jaxquant, or corrupt)")
    return ts_out, bars_out

  def read_all(self):
    """Read every row; see `read`."""
    return self.read(0, self.num_rows)

  def close(self):
    """Close the file (idempotent)."""
    if getattr(self, "_file", None) is not None:
      self._file.close()
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _one_line(e):
  return " ".join(str(e).split())[:300]


# -------------------- Directories


def list_shards(directory):
  """Return the sorted paths of the `*.parquet` files in `directory`.

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
                 if n.endswith(SHARD_SUFFIX) and not n.startswith(".") and n not in NOT_BARS)
  if not paths:
    old = any(n.endswith(legacy_shards.JQS_SUFFIX) for n in names)
    raise ShardError(f"shard directory {directory}: no *{SHARD_SUFFIX} files found" + (
        "; it holds .jqs shards of the old format: convert them with python -m "
        f"jaxquant.data.ingest --out=NEW_DIR {directory}" if old else ""))
  return paths


def manifest_digests(directory):
  """The `{file name: {"bytes", "sha256"}}` that the directory's manifest records.

  Returns:
    The dict, or None when there is no manifest or it records no digests
    (shards written by `write_shard` alone).

  Raises:
    ShardError: the manifest cannot be read or is malformed.
  """
  path = os.path.join(os.fspath(directory), MANIFEST)
  try:
    with open(path, "rb") as f:
      manifest = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ShardError(f"{path}: cannot be read ({_one_line(e)})") from e
  files = manifest.get(MANIFEST_KEY) if isinstance(manifest, dict) else None
  if files is None:
    return None
  if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
    raise ShardError(f"{path}: {MANIFEST_KEY} is not a {{file: {{bytes, sha256}}}} object")
  return files


def load_dir(directory):
  """The bars of a shard directory, one instrument at a time, sorted by name.

  Before anything is yielded, every shard is checked against the manifest
  (when it records digests: each file listed there must be present with that
  size and sha256, and no other shard may be) and its footer is read; the
  data is then read lazily: one instrument's bars in memory (`list(load_dir(d))`
  for all) if the consumer drops each before asking for the next (a `for` loop's
  variables hold it while the next is read). Several shards of one instrument are
  ordered by their first timestamp and concatenated; they must not overlap.

  Args:
    directory: folder holding `*.parquet` files (and usually `manifest.json`).

  Returns:
    An iterator of `(instrument, timestamps[n] int64, bars[n, 6] float64)`.

  Raises:
    ShardError: no shards, a corrupt or unlisted shard, or overlapping parts
      (the last while iterating).
  """
  directory = os.fspath(directory)
  paths = list_shards(directory)
  digests = manifest_digests(directory)
  if digests is not None:
    names = {os.path.basename(p) for p in paths}
    for name in sorted(set(digests) - names):
      raise ShardError(f"shard {os.path.join(directory, name)}: listed in {MANIFEST} but "
                       "missing")
  groups = {}
  for path in paths:
    expected = None if digests is None else digests.get(os.path.basename(path))
    if digests is not None and expected is None:
      raise ShardError(f"shard {path}: not listed in {os.path.join(directory, MANIFEST)} "
                       "(copied in from elsewhere?); remove it or ingest again")
    with ShardReader(path, expected) as r:
      groups.setdefault(r.instrument, []).append(path)
  return _iter_instruments(groups)


def _iter_instruments(groups):
  for name in sorted(groups):
    yield _read_instrument(name, groups[name])  # (This frame keeps no reference to it.)


def _read_instrument(name, paths):
  parts = []
  for path in paths:
    with ShardReader(path) as r:  # (Checked against the manifest above.)
      parts.append((path, *r.read_all()))
  group = sorted((p for p in parts if p[1].size), key=lambda p: int(p[1][0])) or parts[:1]
  for (pa_, ta, _), (pb, tb, _) in zip(group, group[1:]):
    if tb[0] <= ta[-1]:
      raise ShardError(f"shard {pb}: instrument {name!r} overlaps {pa_} "
                       f"(starts at {tb[0]} <= previous end {ta[-1]}); "
                       "timestamps must keep increasing across parts")
  if len(group) == 1:
    return name, group[0][1], group[0][2]
  return name, np.concatenate([p[1] for p in group]), np.concatenate([p[2] for p in group])
