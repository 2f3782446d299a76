"""Loose per-sample `.zst` files, and `samples.parquet`, the one file they are packed into.

A loose sample (the original system's layout: one file per sample) is a
zstd-compressed `.npy` array, or an `.npz` with `x`/`sample` and optionally
`y`/`label` (its class), `r`/`ret`/`return`/`fwd_return` (the return of the trade
its label describes) and `t`/`time`/`timestamp` (when it was taken). A sample
without a time in the file may carry one in its name (`name_time`). `ingest` packs
them into one Parquet file, in input order: zstd, page checksums, its sha256 in
manifest.json; columns name, timestamp, time_from, label, return and x (each
sample's C-order bytes as fixed-size binary, shape and dtype in the schema
metadata). Layout: docs/data-format.md ("Loose samples").
"""

import concurrent.futures
import datetime
import hashlib
import io
import json
import os
import re
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from jaxquant import io_utils
from jaxquant.data import bar_checks

SAMPLE_FILE = "samples.parquet"
SAMPLE_FORMAT_VERSION = 1
_META_KEY = b"jaxquant.samples"  # Schema metadata: {"version", "shape", "dtype"}.
_ROW_GROUP_BYTES = 32 << 20  # Raw sample bytes per row group.
_ZSTD_LEVEL = 3
X_KEYS, Y_KEYS = ("x", "sample"), ("y", "label")
R_KEYS, T_KEYS = ("r", "ret", "return", "fwd_return"), ("t", "time", "timestamp")


class SampleFileError(ValueError):
  """A packed sample file that cannot be trusted (corrupt, truncated, newer, foreign)."""


def read_file(path):
  """The bytes of an input file; IngestError (one line) if it cannot be read."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise bar_checks.IngestError(f"{path}: no such file or directory") from None
  except IsADirectoryError:
    raise bar_checks.IngestError(f"{path}: is a directory") from None
  except OSError as e:
    raise bar_checks.IngestError(f"{path}: cannot read ({e.strerror or e})") from None


# YYYYMMDD, optionally followed ('_', '-', 'T', ' ' or nothing) by HHMM or HHMMSS.
_NAME_DATE = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?:[_T\- ]?(\d{2})(\d{2})(\d{2})?)?(?!\d)")
# Epoch seconds (10 digits) or milliseconds (13 digits).
_NAME_EPOCH = re.compile(r"(?<!\d)(\d{13}|\d{10})(?!\d)")


def _epoch_ns(v):
  """An epoch number in s, ms, us or ns (told apart by magnitude, as 2001..2286 dates) as ns."""
  for bound, scale in ((1e11, 10**9), (1e14, 10**6), (1e17, 10**3)):
    if abs(v) < bound:
      return int(round(float(v) * scale)) if isinstance(v, float) else int(v) * scale
  return int(v)


def name_time(name):
  """The time in a sample's file name, as int64 ns (naive: as written), or None.

  The first `YYYYMMDD[_HHMM[SS]]` field that is a valid date (separator `_`, `-`,
  `T`, space or none), else the first 10-digit (epoch seconds) or 13-digit (epoch
  ms) field; fields are runs of digits not inside longer runs. Examples:
  `rb_20210104_093000.zst`, `20210104T0931.zst`, `s_1609752600.zst`.

  Args:
    name: a file name (or path).

  Returns:
    int ns since the epoch, or None when the name holds no time.
  """
  stem = os.path.basename(name).split(".")[0]
  for m in _NAME_DATE.finditer(stem):
    y, mo, d, hh, mm, ss = (int(g) if g else 0 for g in m.groups())
    try:
      if 1900 <= y < 2200:
        return int(np.datetime64(datetime.datetime(y, mo, d, hh, mm, ss), "ns").astype(np.int64))
    except ValueError:
      continue  # Not a date (an 8-digit counter): look further.
  m = _NAME_EPOCH.search(stem)
  return None if m is None else _epoch_ns(int(m.group(1)))


def _file_time(path, key, v):
  """A time stored in a sample file (datetime64, epoch number or ISO string) as ns."""
  v = np.asarray(v)
  if v.size != 1:
    raise bar_checks.IngestError(f"{path}: {key} must hold one time, got shape {list(v.shape)}")
  v = v.reshape(())
  try:
    if v.dtype.kind == "M":
      ns = v.astype("datetime64[ns]")
    elif v.dtype.kind in "US":
      ns = np.datetime64(str(v), "ns")
    elif v.dtype.kind in "iuf" and np.isfinite(v):
      return _epoch_ns(v.item())
    else:
      raise ValueError(f"dtype {v.dtype}")
  except ValueError as e:
    raise bar_checks.IngestError(f"{path}: {key}={v!s} is not a time ({e})") from None
  if np.isnat(ns):
    raise bar_checks.IngestError(f"{path}: {key} is NaT")
  return int(ns.astype(np.int64))


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def npy_kind(raw):
  """"npy" or "npz" by the payload's magic bytes, else None."""
  return "npy" if raw.startswith(_NPY_MAGIC) else "npz" if raw.startswith(_ZIP_MAGIC) else None


def zstd_decompress(path, data):
  """The decompressed bytes of a loose `.zst` file; IngestError naming `path` if corrupt."""
  try:
    # stream_reader handles frames without a content size and several frames.
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
      return r.read()
  except zstandard.ZstdError as e:
    raise bar_checks.IngestError(f"{path}: cannot decompress ({e})") from None


def _one(path, z, keys, what):
  found = [k for k in keys if k in z.files]
  if len(found) > 1:
    raise bar_checks.IngestError(f"{path}: .npz holds more than one {what} "
                                 f"({', '.join(found)}); keep one")
  return (found[0], z[found[0]]) if found else (None, None)


def load_sample(path, raw):
  """Decode one loose sample (.npy or .npz payload).

  Args:
    path: the file (for messages).
    raw: its decompressed bytes.

  Returns:
    (x, label, ret, t): the sample array; its class (int) or None; its trade
    return (float) or None; its time in the file (int64 ns) or None.

  Raises:
    bar_checks.IngestError: not a sample, or a label / return / time that is not one.
  """
  kind = npy_kind(raw)
  if kind is None:
    raise bar_checks.IngestError(f"{path}: decompressed payload is neither .npy nor .npz")
  y = r = t = None
  try:
    if kind == "npz":
      with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        xk, x = _one(path, z, X_KEYS, "sample (x/sample)")
        if xk is None:
          raise bar_checks.IngestError(f"{path}: .npz has no x or sample array, found "
                                       f"{sorted(z.files)}")
        yk, y = _one(path, z, Y_KEYS, "label (y/label)")
        rk, r = _one(path, z, R_KEYS, "return (r/ret/return/fwd_return)")
        tk, t = _one(path, z, T_KEYS, "time (t/time/timestamp)")
    else:
      x = np.load(io.BytesIO(raw), allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise bar_checks.IngestError(f"{path}: cannot load the .{kind} payload ({e})") from None
  if x.dtype.kind not in "biuf" or x.ndim not in (1, 2):
    raise bar_checks.IngestError(f"{path}: sample must be a real [T, F] (or [T]) array, got "
                                 f"shape {list(x.shape)} dtype {x.dtype}")
  if y is not None:
    if y.size != 1 or y.dtype.kind not in "biuf" or not np.isfinite(y).all() \
            or float(y.reshape(())) != int(y.reshape(())) or int(y.reshape(())) < 0:
      raise bar_checks.IngestError(f"{path}: {yk} must be one integer class >= 0, got "
                                   f"{y.reshape(-1)[:3].tolist()} shape {list(y.shape)}")
    y = int(y.reshape(()))
  if r is not None:
    if r.size != 1 or r.dtype.kind not in "iuf" or not np.isfinite(r).all():
      raise bar_checks.IngestError(f"{path}: {rk} must be one finite return, got shape "
                                   f"{list(r.shape)} dtype {r.dtype}")
    r = float(r.reshape(()))
  if t is not None:
    t = _file_time(path, tk, t)
  return x, y, r, t



def _le(dt):
  """Little-endian version of a numeric dtype (files are little-endian)."""
  return dt.newbyteorder("<") if dt.byteorder in (">", "=") and dt.itemsize > 1 else dt


def _schema(nbytes, shape, dtype):
  meta = {"version": SAMPLE_FORMAT_VERSION, "shape": list(shape), "dtype": dtype.str}
  return pa.schema([("name", pa.string()), ("timestamp", pa.int64()),
                    ("time_from", pa.string()), ("label", pa.int64()),
                    ("return", pa.float64()), ("x", pa.binary(nbytes))],
                   metadata={_META_KEY: json.dumps(meta, sort_keys=True).encode()})


class SampleBuilder:
  """Packs samples into Parquet bytes, a row group at a time (memory: one row group)."""

  def __init__(self, rows_per_group=None):
    self.rows_per_group = rows_per_group
    self.shape = self.dtype = None
    self.num_samples = self.num_labels = self.num_timed = 0
    self._rows, self._sink, self._writer = [], None, None

  def problem(self, x):
    """Why x cannot join these samples (shape/dtype differ from the first), or None."""
    if self.shape is not None and (x.shape != self.shape or _le(x.dtype) != self.dtype):
      return (f"sample has shape {list(x.shape)} dtype {x.dtype}, expected "
              f"{list(self.shape)} {self.dtype} like the first sample")
    return None

  def add(self, name, x, label=None, ret=None, t=None):
    """Appends one sample; its time is `t` (from the file), else the time in `name`.

    Args:
      name: the source file's base name.
      x: the sample (shape and dtype of the first; see `problem`).
      label, ret, t: its class, return and time (ns), each None when unknown.
    """
    if self.shape is None:
      self.shape, self.dtype = x.shape, _le(x.dtype)
      self.rows_per_group = self.rows_per_group or max(1, _ROW_GROUP_BYTES // max(1, x.nbytes))
      self._sink = pa.BufferOutputStream()
      # Statistics of 20 KB binary values would bloat the footer: keep them off x.
      self._schema = _schema(x.nbytes, self.shape, self.dtype)
      self._writer = pq.ParquetWriter(
          self._sink, self._schema, compression="zstd",
          compression_level=_ZSTD_LEVEL, write_page_checksum=True,
          use_dictionary=["time_from"], write_statistics=["timestamp", "label"])
    time_from = "file" if t is not None else None
    if t is None:
      t = name_time(name)
      time_from = None if t is None else "name"
    self._rows.append((name, t, time_from, label, ret,
                       np.ascontiguousarray(x, dtype=self.dtype).tobytes()))
    self.num_samples += 1
    self.num_labels += label is not None
    self.num_timed += t is not None
    if len(self._rows) == self.rows_per_group:
      self._flush()

  def _flush(self):
    if self._rows:
      cols = list(zip(*self._rows))
      self._writer.write_table(pa.Table.from_arrays(
          [pa.array(c, type=f.type) for c, f in zip(cols, self._schema)], schema=self._schema))
      self._rows = []

  def build(self):
    """The complete file's bytes (a pure function of the samples added)."""
    if self._writer is None:
      raise ValueError("no samples to pack")
    self._flush()
    self._writer.close()
    return self._sink.getvalue().to_pybytes()


def write_packed(out_dir, name, builder, sample_files, sample_skipped):
  """Writes ingest's `name` (samples.parquet) from `builder`, atomically.

  Returns:
    (its entry in ingest's summary, its entry in manifest.json), or (None, None)
    when there were no sample files.
  """
  skipped = dict(sorted(sample_skipped.items()))
  if not name:
    entry = {"shard": None, "num_samples": 0, "num_labels": 0, "skipped": skipped}
    return (entry, entry) if sample_skipped else (None, None)
  path = os.path.join(out_dir, name)
  data = builder.build()
  io_utils.atomic_write_bytes(path, data)
  # How data.source="samples" will order them (sample_set): by time only if all have one.
  entry = {"shard": path, "sha256": hashlib.sha256(data).hexdigest(),
           "num_samples": builder.num_samples, "num_labels": builder.num_labels,
           "num_timed": builder.num_timed,
           "order": "time" if builder.num_timed == builder.num_samples else "name",
           "shape": list(builder.shape), "dtype": builder.dtype.str, "skipped": skipped}
  return entry, {**entry, "shard": name, "sources": sample_files}


def describe_packed(entry):
  """The lines of ingest's summary about the samples (entry from write_packed, or None)."""
  out = []
  if entry and entry["shard"]:
    out.append(f"samples: {entry['num_samples']} x {entry['shape']} {entry['dtype']}, "
               f"{entry['num_labels']} labelled, {entry['num_timed']} with a time -> "
               f"{entry['shard']}")
    if entry["order"] == "name":
      out.append(f"    warning: {entry['num_samples'] - entry['num_timed']} samples have no "
                 "time (in the file as t/time/timestamp, or in the name as "
                 "YYYYMMDD[_HHMM[SS]] or epoch seconds/ms): training orders and splits them "
                 "by file name")
  if entry and entry["skipped"]:
    out.append("    skipped files: " + ", ".join(f"{k}={v}" for k, v in entry["skipped"].items()))
  return out


def write_samples(path, x, labels=None, *, names=None, timestamps=None, returns=None):
  """Writes `[n, T, F]` samples (with optional per-sample columns) to `path` atomically.

  Args:
    path: destination, conventionally `DIR/samples.parquet`.
    x: `[n, T, F]` (or `[n, T]`) real array.
    labels, returns, timestamps: None, or `[n]` (None entries: unknown).
    names: `[n]` names (default `s000000`, ...).

  Returns:
    The sha256 hex digest of the file written (what manifest.json records).
  """
  x = np.asarray(x)
  n = x.shape[0]
  b = SampleBuilder()
  for i in range(n):
    col = lambda c: None if c is None or c[i] is None else c[i]
    b.add(names[i] if names is not None else f"s{i:06d}", x[i],
          None if col(labels) is None else int(col(labels)),
          None if col(returns) is None else float(col(returns)),
          None if col(timestamps) is None else int(col(timestamps)))
  data = b.build()
  io_utils.atomic_write_bytes(path, data)
  return hashlib.sha256(data).hexdigest()


def read_samples(path, sha256=None):
  """Reads and verifies `samples.parquet`.

  Args:
    path: the file.
    sha256: the digest manifest.json records for it (None: not compared).

  Returns:
    A dict: "names" [n] str, "timestamps" [n] int64 ns (NaT where unknown),
    "time_from" [n] ("file" / "name" / None), "labels" [n] int64 (-1: none),
    "returns" [n] float64 (NaN: none), "x" [n, *shape] array.

  Raises:
    SampleFileError: missing, corrupt (sha256, page checksum, decoding), truncated,
      of a newer format or not a sample file; one line naming the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise SampleFileError(f"{path}: no such file (ingest the sample folder into this "
                          "directory: python -m jaxquant.data.ingest --out=DIR FOLDER)")
  # The digest is computed beside the read (hashlib releases the GIL), checked first.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    digest = None if sha256 is None else pool.submit(io_utils.file_sha256, path, 16 << 20)
    try:
      table, x = _read_table(path)
    except SampleFileError:
      _check_digest(path, digest, sha256)
      raise
    _check_digest(path, digest, sha256)
  col = lambda k: table.column(k).combine_chunks()
  return {"names": col("name").to_pylist(),
          "timestamps": col("timestamp").fill_null(np.iinfo(np.int64).min).to_numpy()
          .astype(np.int64),
          "time_from": col("time_from").to_pylist(),
          "labels": col("label").fill_null(-1).to_numpy().astype(np.int64),
          "returns": col("return").to_numpy(zero_copy_only=False).astype(np.float64),
          "x": x}


def _check_digest(path, digest, sha256):
  if digest is not None and digest.result() != sha256:
    raise SampleFileError(f"{path}: sha256 {digest.result()[:16]}... differs from "
                          f"manifest.json's {sha256[:16]}... (file corrupt or replaced); "
                          "ingest again")


def _read_table(path):
  """(the columns but x, x as [n, *shape]) of a sample file; SampleFileError if it cannot be.

  Row group by row group, copied into one array: memory is x plus one row group."""
  try:
    pf = pq.ParquetFile(path, page_checksum_verification=True)
    meta = (pf.metadata.metadata or {}).get(_META_KEY)  # The footer's, not ARROW:schema's.
    if meta is None:
      raise SampleFileError(f"{path}: not a jaxquant sample file (no {_META_KEY.decode()} "
                            "metadata)")
    meta = json.loads(meta)
    if int(meta["version"]) > SAMPLE_FORMAT_VERSION:
      raise SampleFileError(f"{path}: sample format version {meta['version']} is newer than "
                            f"this jaxquant reads ({SAMPLE_FORMAT_VERSION}); upgrade jaxquant")
    shape, dtype = tuple(int(d) for d in meta["shape"]), np.dtype(meta["dtype"])
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if pf.schema_arrow.field("x").type != pa.binary(nbytes):
      raise SampleFileError(f"{path}: column x does not hold {list(shape)} {dtype} samples")
    n = pf.metadata.num_rows
    x = np.empty((n,) + shape, dtype)
    flat, pos, rest = x.reshape(-1).view(np.uint8), 0, []
    for g in range(pf.num_row_groups):
      t = pf.read_row_group(g)
      for c in t.column("x").chunks:
        if c.null_count or pos + len(c) > n:
          raise SampleFileError(f"{path}: column x has a missing sample or too many rows")
        flat[pos * nbytes:(pos + len(c)) * nbytes] = np.frombuffer(
            c.buffers()[1], np.uint8)[c.offset * nbytes:][:len(c) * nbytes]
        pos += len(c)
      rest.append(t.drop_columns(["x"]))
    if pos != n:
      raise SampleFileError(f"{path}: footer declares {n} rows, row groups hold {pos}")
    return pa.concat_tables(rest), x
  except SampleFileError:
    raise
  except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise SampleFileError(f"{path}: corrupt or truncated sample file ({msg})") from None
