"""Bar shards, old `.jqs` against Parquet: on-disk size, write time and `load_dir` time.

Both hold the same synthetic market (`jaxquant.data.synth.generate_market`, default
4 instruments x 30 days, the default market of every config). Old: the `.jqs`
writer as it was before Parquet (copied below, for this comparison only: the
package reads `.jqs` only to convert it) and its reading as `load_dir` did it (every
chunk's crc32 and zstd checksum; `legacy_shards.read_jqs` is that reader). New:
`shards.write_shard` and `list(shards.load_dir(d))`, with the manifest's sha256 of
every file checked first, and without a manifest (Parquet's page checksums alone).
Each time is the best of --repeats runs from a warm page cache.

Usage:
  python benchmarks/shards.py [--instruments=4 --days=30 --repeats=20] [--out=]
The table goes to stdout and (default) into docs/performance.md's "## Bar shards"
section; the last line is `size_ratio=<new/old bytes> load_speedup=<old/new seconds>`.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import zstandard  # noqa: E402

from jaxquant import io_utils  # noqa: E402
from jaxquant.data import legacy_shards  # noqa: E402
from jaxquant.data import shards  # noqa: E402
from jaxquant.data import synth  # noqa: E402

DOC = os.path.join(ROOT, "docs", "performance.md")


def write_jqs(path, instrument, ts, bars, chunk_rows=4096, meta=None):
  """The `.jqs` writer before Parquet (format v1, zstd level 3, 4096-row chunks)."""
  pre, u32, crc32 = legacy_shards.PREAMBLE, legacy_shards.U32, legacy_shards.crc32
  cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
  ts, bars = np.asarray(ts, "<i8"), np.ascontiguousarray(bars, "<f8")
  blobs, rows = [], []
  for a in range(0, ts.shape[0], chunk_rows):
    z = min(a + chunk_rows, ts.shape[0])
    blobs.append(cctx.compress(ts[a:z].tobytes() + bars[a:z].tobytes()))
    rows.append(z - a)

  def header(start):
    chunks, off = [], start
    for blob, n in zip(blobs, rows):
      chunks.append({"offset": off, "length": len(blob), "rows": n, "crc32": crc32(blob)})
      off += len(blob)
    return json.dumps({"instrument": instrument, "num_rows": int(ts.shape[0]),
                       "columns": list(legacy_shards.JQS_COLUMNS), "chunk_rows": chunk_rows,
                       "chunks": chunks, "meta": meta or {}}, sort_keys=True,
                      separators=(",", ":")).encode()
  length, hdr = -1, b""
  while len(hdr) != length:  # The offsets depend on the header's length.
    length, hdr = len(hdr), header(pre.size + len(hdr) + u32.size)
  io_utils.atomic_write_bytes(path, b"".join(
      [pre.pack(legacy_shards.JQS_MAGIC, legacy_shards.JQS_VERSION, len(hdr)), hdr,
       u32.pack(crc32(hdr)), *blobs]))


def load_jqs_dir(directory):
  """What `load_dir` did with `.jqs` shards: every file read and checked, by instrument."""
  out = [legacy_shards.read_jqs(os.path.join(directory, n))
         for n in sorted(os.listdir(directory)) if n.endswith(legacy_shards.JQS_SUFFIX)]
  return sorted((inst, ts, bars) for inst, ts, bars, _ in out)


def best(fn, repeats):
  """(best seconds, last result) of `repeats` calls."""
  times, result = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
  return min(times), result


def dir_bytes(directory, suffix):
  return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)
             if n.endswith(suffix))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--instruments", type=int, default=4)
  p.add_argument("--days", type=int, default=30)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--out", default=DOC, help="markdown file for the table ('' = none)")
  args = p.parse_args()
  market = synth.generate_market(args.instruments, args.days)
  rows = sum(ts.size for _, ts, _ in market)
  tmp = tempfile.mkdtemp(prefix="jq-shards-bench-")
  try:
    old, new, bare = (os.path.join(tmp, d) for d in ("old", "new", "bare"))
    for d in (old, new, bare):
      os.makedirs(d)
    write_old = best(lambda: [write_jqs(os.path.join(old, n + ".jqs"), n, ts, b)
                              for n, ts, b in market], args.repeats)[0]
    write_new, digests = best(lambda: {n + ".parquet": shards.write_shard(
        os.path.join(new, n + ".parquet"), n, ts, b) for n, ts, b in market}, args.repeats)
    io_utils.atomic_write_json(os.path.join(new, "manifest.json"),
                               {shards.MANIFEST_KEY: digests})
    for n in digests:
      shutil.copy(os.path.join(new, n), bare)
    load_old, got_old = best(lambda: load_jqs_dir(old), args.repeats)
    load_new, got_new = best(lambda: list(shards.load_dir(new)), args.repeats)
    load_bare, got_bare = best(lambda: list(shards.load_dir(bare)), args.repeats)
    for a, b, c in zip(got_old, got_new, got_bare):  # The same bars from all three.
      assert a[0] == b[0] == c[0] and all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k])
                                          for k in (1, 2))
    size_old, size_new = dir_bytes(old, ".jqs"), dir_bytes(new, ".parquet")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  raw = rows * (8 + 8 * len(shards.BAR_COLUMNS))
  mib = lambda n: n / 2**20
  cmd = "python benchmarks/shards.py" + "".join(
      f" --{k}={getattr(args, k)}" for k in ("instruments", "days", "repeats")
      if getattr(args, k) != p.get_default(k))
  lines = [
      f"`{cmd}` on {platform.machine()}, {os.cpu_count()} cores (load average "
      f"{os.getloadavg()[0]:.1f}): the synthetic market of {args.instruments} instruments x "
      f"{args.days} days = {rows:,} bars ({mib(raw):.2f} MiB as int64 time + 6 float64 "
      f"columns), one file per instrument, best of {args.repeats} runs, warm page cache.", "",
      "| format | on disk (MiB) | of raw | write (s) | `load_dir` (s) | bars/s loaded |",
      "|---|---:|---:|---:|---:|---:|",
      f"| `.jqs` (before; zstd chunks, crc32 each) | {mib(size_old):.2f} | "
      f"{size_old / raw:.0%} | {write_old:.3f} | {load_old:.3f} | {rows / load_old:,.0f} |",
      f"| Parquet, manifest sha256 + page checksums (now) | {mib(size_new):.2f} | "
      f"{size_new / raw:.0%} | {write_new:.3f} | {load_new:.3f} | {rows / load_new:,.0f} |",
      f"| Parquet, page checksums only (no manifest) | {mib(size_new):.2f} | "
      f"{size_new / raw:.0%} | - | {load_bare:.3f} | {rows / load_bare:,.0f} |", "",
      f"Parquet is {size_new / size_old:.2f}x the size of `.jqs` (delta-coded times, byte-split "
      f"floats, zstd level {shards.ZSTD_LEVEL}) and loads {load_old / load_new:.2f}x as fast "
      f"with every file's sha256 checked ({load_old / load_bare:.2f}x without).", ""]
  md = "\n".join(lines)
  print(md)
  if args.out:
    io_utils.replace_markdown_section(args.out, "## Bar shards", md, title="Performance")
  print(f"size_ratio={size_new / size_old:.3f} load_speedup={load_old / load_new:.2f}")


if __name__ == "__main__":
  main()
