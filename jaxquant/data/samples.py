"""Loose per-sample `.zst` files, and the `.jqx` sample shard they are packed into.

A loose sample is a zstd-compressed `.npy` array, or `.npz` with
`x`/`sample` and optional `y`/`label`. `ingest` packs them into one
checksummed, random-access `samples.jqx` (see `SampleShardReader`;
the layout is in `docs/data-format.md`).
"""

import io
import json
import os
import zipfile

import numpy as np
import zstandard

from jaxquant import io_utils
from jaxquant.data import bar_checks
from jaxquant.data import shards


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


SAMPLE_MAGIC = b"JQSAMPL\0"
SAMPLE_FORMAT_VERSION = 1
SAMPLE_SUFFIX = ".jqx"
SAMPLE_FILE = "samples" + SAMPLE_SUFFIX
_SAMPLE_CHUNK_BYTES = 1 << 20  # ~1 MiB decompressed per chunk: cheap random access


def _le(dt):
  """Little-endian version of a numeric dtype (files are little-endian)."""
  return dt.newbyteorder("<") if dt.byteorder in (">", "=") and dt.itemsize > 1 else dt


class SampleBuilder:
  """Accumulates samples, compressing each full chunk as soon as it fills."""

  def __init__(self, chunk_samples=None):
    self.chunk_samples = chunk_samples
    self.shape = self.dtype = self.label_shape = self.label_dtype = None
    self.pending = []
    self.blobs = []
    self.counts = []
    self.labels = []
    self._cctx = zstandard.ZstdCompressor(level=shards.ZSTD_LEVEL, write_checksum=True,
                                          write_content_size=True)

  def problem(self, x, y):
    """Why (x, y) cannot join this shard (shape/dtype differ), or None."""
    if self.shape is not None and (x.shape != self.shape or _le(x.dtype) != self.dtype):
      return (f"sample has shape {list(x.shape)} dtype {x.dtype}, expected "
              f"{list(self.shape)} {self.dtype} like the first sample")
    if y is not None and self.label_shape is not None and \
            (y.shape != self.label_shape or _le(y.dtype) != self.label_dtype):
      return (f"label has shape {list(y.shape)} dtype {y.dtype}, expected "
              f"{list(self.label_shape)} {self.label_dtype} like the first label")
    return None

  def add(self, x, y):
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

  def _flush(self):
    if self.pending:
      self.blobs.append(self._cctx.compress(b"".join(p.tobytes() for p in self.pending)))
      self.counts.append(len(self.pending))
      self.pending = []

  def build(self, meta, path):
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

    def header(hlen):
      off = shards.PREAMBLE.size + hlen + shards.U32.size
      chunks = []
      for blob, k in zip(self.blobs, self.counts):
        chunks.append({"offset": off, "length": len(blob), "samples": k,
                       "crc32": shards.crc32(blob)})
        off += len(blob)
      labels = None
      if label_blob is not None:
        labels = {"offset": off, "length": len(label_blob), "crc32": shards.crc32(label_blob),
                  "count": int(has.sum()), "shape": list(self.label_shape),
                  "dtype": self.label_dtype.str}
      h = {"num_samples": n, "shape": list(self.shape or ()),
           "dtype": self.dtype.str if self.dtype is not None else "<f4",
           "chunk_samples": int(self.chunk_samples or 1), "chunks": chunks,
           "labels": labels, "meta": meta}
      try:
        return json.dumps(h, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False, default=io_utils.json_default).encode()
      except (TypeError, ValueError) as e:
        raise shards.ShardError(f"shard {path}: cannot write: meta is not "
                                f"JSON-serialisable ({e})") from e

    # Offsets depend on the header length and vice versa: iterate to the
    # fixed point, as write_shard does.
    hlen, hdr = 0, header(0)
    while len(hdr) != hlen:
      hlen = len(hdr)
      hdr = header(hlen)
    parts = [shards.PREAMBLE.pack(SAMPLE_MAGIC, SAMPLE_FORMAT_VERSION, len(hdr)), hdr,
             shards.U32.pack(shards.crc32(hdr)), *self.blobs]
    if label_blob is not None:
      parts.append(label_blob)
    return b"".join(parts)


def write_sample_shard(path, samples, labels=None, *, has_label=None, chunk_samples=None,
                       meta=None):
  """Write samples (and optional labels) to a `.jqx` file atomically.

  Args:
    path: destination, conventionally `samples.jqx`.
    samples: `[n, ...]` numeric array; every sample has the same shape.
    labels: None, or `[n, ...]` numeric array of per-sample labels.
    has_label: optional `[n]` bool; False marks samples without a label
      (their stored label is zeros).  Default: all True when `labels` is given.
    chunk_samples: samples per compressed chunk; default keeps chunks ~1 MiB.
    meta: JSON-serialisable dict stored in the header.

  Raises:
    ShardError: inconsistent inputs (nothing is written).
  """
  path = os.fspath(path)
  x = np.asarray(samples)
  if x.ndim < 1 or x.dtype.kind not in "biufc":
    raise shards.ShardError(f"shard {path}: cannot write: samples must be a numeric array "
                            f"[n, ...], got shape {x.shape} dtype {x.dtype}")
  if chunk_samples is not None and (not isinstance(chunk_samples, int) or chunk_samples < 1):
    raise shards.ShardError(f"shard {path}: cannot write: chunk_samples must be a positive int")
  y = None if labels is None else np.asarray(labels)
  if y is not None and (y.shape[:1] != x.shape[:1] or y.dtype.kind not in "biufc"):
    raise shards.ShardError(f"shard {path}: cannot write: labels must be numeric [n={x.shape[0]}, "
                            f"...], got shape {y.shape} dtype {y.dtype}")
  mask = np.ones(x.shape[0], dtype=bool) if has_label is None else \
      np.asarray(has_label, dtype=bool)
  if mask.shape != (x.shape[0],):
    raise shards.ShardError(f"shard {path}: cannot write: has_label must have shape [{x.shape[0]}]")
  b = SampleBuilder(chunk_samples)
  for i in range(x.shape[0]):
    b.add(x[i], y[i] if y is not None and mask[i] else None)
  if x.shape[0] == 0:
    b.shape, b.dtype = x.shape[1:], _le(x.dtype)
  io_utils.atomic_write_bytes(path, b.build({} if meta is None else meta, path))


class SampleShardReader(shards.CheckedFileReader):
  """Random-access reader for a `.jqx` sample shard.

  Opening checks magic, version, header crc32 and JSON, the chunk table
  against the file size, and loads and verifies the label block; each
  sample chunk is verified (crc32, size, zstd checksum) when first read.
  Every failure is a `jaxquant.data.shards.ShardError`.

  Attributes:
    path, num_samples, shape (per sample), dtype, chunk_samples, meta,
    num_labels, labels (`[n, ...]` array or None), has_label (`[n]` bool).
  """

  def _open(self):
    size = os.fstat(self._fd).st_size
    raw, end = self._read_header(SAMPLE_MAGIC, SAMPLE_FORMAT_VERSION, "sample shard")
    try:
      h = json.loads(raw.decode("utf-8"))
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
    self._cache = None
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

  def _verified(self, blob, crc, want, where):
    if shards.crc32(blob) != crc:
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

  def _chunk(self, c):
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

  def _index(self, i):
    i = int(i)
    if not -self.num_samples <= i < self.num_samples:
      raise IndexError(f"sample {i} out of range for {self.num_samples} samples")
    return i % self.num_samples

  def __len__(self):
    return self.num_samples

  def read(self, i):
    """Return `(sample, label)` of sample `i`; label is None if it has none.

    Args:
      i: sample index (negative counts from the end).
    """
    i = self._index(i)
    x = self._chunk(i // self.chunk_samples)[i % self.chunk_samples].copy()
    y = self.labels[i].copy() if self.has_label[i] else None
    return x, y

  def read_batch(self, idx):
    """Return `(samples[k, ...], labels[k, ...] or None)` for indices `idx`.

    Each needed chunk is decompressed once.  `labels` is None when the
    shard has no labels at all; samples without a label get zeros there
    (check `has_label[idx]`).
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


def npy_kind(raw):
  return "npy" if raw.startswith(_NPY_MAGIC) else "npz" if raw.startswith(_ZIP_MAGIC) else None


def zstd_decompress(path, data):
  try:
    # stream_reader handles frames without a content size and several frames.
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
      return r.read()
  except zstandard.ZstdError as e:
    raise bar_checks.IngestError(f"{path}: cannot decompress ({e})") from None


def load_sample(path, raw):
  """Decode one loose sample (.npy or .npz payload); IngestError if impossible."""
  kind = npy_kind(raw)
  if kind is None:
    raise bar_checks.IngestError(f"{path}: decompressed payload is neither .npy nor .npz")
  try:
    if kind == "npz":
      with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        keys = set(z.files)
        xk = [k for k in ("x", "sample") if k in keys]
        yk = [k for k in ("y", "label") if k in keys]
        if len(xk) != 1 or len(yk) > 1:
          raise bar_checks.IngestError(f"{path}: .npz must hold exactly one of x/sample and at "
                                       f"most one of y/label, found {sorted(keys)}")
        x, y = z[xk[0]], (z[yk[0]] if yk else None)
    else:
      x, y = np.load(io.BytesIO(raw), allow_pickle=False), None
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise bar_checks.IngestError(f"{path}: cannot load the .{kind} payload ({e})") from None
  if x.dtype.kind not in "biufc" or (y is not None and y.dtype.kind not in "biufc"):
    raise bar_checks.IngestError(f"{path}: sample/label must be numeric, got dtype {x.dtype}"
                                 + ("" if y is None else f" / {y.dtype}"))
  return x, y

