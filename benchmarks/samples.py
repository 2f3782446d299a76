"""The original's per-sample folder as a data source: ingest files/s, training windows/s.

A folder of N loose files in the original's layout (one zstd-compressed `.npz` per
sample: an [T=500, F=10] float32 window `x`, its class `y`, return `r` and time `t`)
is written first (not timed), then:

  ingest   `python -m jaxquant.data.ingest` in-process (`ingest.ingest`): every file read,
           decompressed, decoded and checked, packed into `samples.parquet`. Against the
           original's 31.6 files/s scan (SPEC.md: 62,934 files in 33 minutes).
  packed   training batches of data.source="samples": `dataset.build_dataset` (read and
           verify the Parquet file, order, split, fit and apply the normaliser: counted
           once, amortised over one epoch) then one epoch of shuffled batches through
           `loader.train_batches` (grain, 2 threads), and the same gather in a plain loop.
  loose    the same batches read from the loose files directly: per sample open, read,
           decompress, `np.load` (the original's way), through the same grain pipeline
           (2 threads) and in a plain loop; a plain loop over every training sample.

The loose files were just written, so they come from the page cache: the best case for
reading them directly (the original's 31.6 files/s came from its disk).

Usage:
  python benchmarks/samples.py [--quick] [--files=N] [--no-docs]
The last line printed is `ingest_files_per_s=<x> batch_speedup=<packed/loose, grain>`.
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import zstandard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

T, F, BATCH = 500, 10, 256
ORIGINAL_FILES_PER_S = 31.6  # SPEC.md: the original's scan of its 62,934 files.
DOC = os.path.join(ROOT, "docs", "performance.md")
SECTION = "## Sample folders"


def write_folder(folder, n, seed=0):
  """n files of the original's layout; returns the seconds it took (not benchmarked)."""
  t0 = time.perf_counter()
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  cctx = zstandard.ZstdCompressor(level=3)
  start = np.datetime64("2021-01-04T09:00", "ns")
  for i in range(n):
    y = int(rng.random() < 0.07)
    buf = io.BytesIO()
    np.savez(buf, x=rng.standard_normal((T, F), dtype=np.float32), y=np.int64(y),
             r=np.float64(rng.normal(0, 0.004) + 0.008 * y), t=start + np.timedelta64(i, "m"))
    with open(os.path.join(folder, f"sample_{i:06d}.zst"), "wb") as f:
      f.write(cctx.compress(buf.getvalue()))
  return time.perf_counter() - t0


def read_loose(path):
  """One sample the original's way: open, read, decompress, np.load."""
  with open(path, "rb") as f:
    raw = zstandard.ZstdDecompressor().decompress(f.read())
  with np.load(io.BytesIO(raw)) as z:
    return z["x"], int(z["y"])


def loose_batches(paths, plan, threads):
  """Batches of the loose files following `plan` (grain, or a plain loop with threads=0)."""
  def gather(idx):
    xs, ys = zip(*(read_loose(paths[i]) for i in idx))
    return {"x": np.stack(xs), "y": np.asarray(ys, np.int32)}
  if not threads:
    return (gather(idx) for idx in plan)
  import grain
  ds = grain.MapDataset.source(list(plan)).map(gather)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4))


def timed(batches):
  t0, n = time.perf_counter(), 0
  for b in batches:
    n += len(b["y"])
  return n, time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="2,000 files (seconds)")
  p.add_argument("--files", type=int, default=None, help="loose files (default 20,000)")
  p.add_argument("--no-docs", action="store_true", help=f"do not update {DOC}")
  args = p.parse_args()
  n = args.files or (2000 if args.quick else 20000)

  from configs import default
  from jaxquant import io_utils
  from jaxquant.data import dataset
  from jaxquant.data import ingest
  from jaxquant.data import loader

  tmp = tempfile.mkdtemp(prefix="jq_samples_bench_")
  try:
    folder, out = os.path.join(tmp, "folder"), os.path.join(tmp, "data")
    write_s = write_folder(folder, n)
    folder_mib = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
    t0 = time.perf_counter()
    ingest.ingest([folder], out)
    ingest_s = time.perf_counter() - t0
    packed_mib = os.path.getsize(os.path.join(out, "samples.parquet")) / 2**20

    c = default.get_config()
    c.data.source, c.data.dir, c.data.window = "samples", out, T
    t0 = time.perf_counter()
    ds = dataset.build_dataset(c.data, out)
    load_s = time.perf_counter() - t0
    plan = loader.train_plan(ds, c.data, BATCH, 0, 0)
    rows = []
    k, s = timed(loader.train_batches(ds, plan))
    rows.append(("packed: samples.parquet, load amortised over 1 epoch, grain 2 threads", k,
                 f"{load_s:.2f} + {s:.2f}", k / (load_s + s)))
    packed_rate, epoch_s = k / (load_s + s), s
    rows.append(("packed, steady state (load not counted), grain 2 threads", k, f"{s:.2f}",
                 k / s))
    tr = ds.splits["train"]
    k, s = timed({"x": ds.windows("train", idx), "y": tr.labels[idx]} for idx in plan)
    rows.append(("packed, steady state, plain loop, 1 thread", k, f"{s:.2f}", k / s))
    # The loose files of the same training samples, in the same batches.
    paths = [os.path.join(folder, f"sample_{i:06d}.zst") for i in tr.ends]
    sub = plan[:max(1, min(len(plan), 4000 // BATCH))]  # Enough batches for a stable rate.
    k, s = timed(loose_batches(paths, sub, 2))
    loose_rate, loose_epoch_s = k / s, len(tr) / (k / s)
    rows.append(("loose: one .zst per sample, read + decompress + np.load, grain 2 threads",
                 k, f"{s:.2f}", k / s))
    k, s = timed(loose_batches(paths, sub, 0))
    rows.append(("loose, plain loop, 1 thread", k, f"{s:.2f}", k / s))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  ingest_rate = n / ingest_s
  cpus = len(os.sched_getaffinity(0))
  table = ["| reader | windows | seconds | windows/s |", "|---|---:|---:|---:|"]
  table += [f"| {name} | {k:,} | {sec} | {rate:,.0f} |" for name, k, sec, rate in rows]
  text = "\n".join([
      SECTION, "",
      f"`python benchmarks/samples.py{' --quick' if args.quick else ''}"
      f"{'' if args.files is None else f' --files={args.files}'}` on {cpus} CPU cores: "
      f"{n:,} loose files in the original's layout (one zstd-compressed `.npz` per sample: "
      f"[T={T}, F={F}] float32 `x`, class `y`, return `r`, time `t`; {folder_mib:,.0f} MiB, "
      f"written in {write_s:.1f} s, not counted), read from a warm page cache. Load average "
      f"at the end: {os.getloadavg()[0]:.1f}.", "",
      "| step | files | seconds | files/s |", "|---|---:|---:|---:|",
      f"| ingest into `samples.parquet` ({packed_mib:,.0f} MiB) | {n:,} | {ingest_s:.2f} | "
      f"{ingest_rate:,.0f} |",
      f"| the original's scan (SPEC.md: 62,934 files in 33 min) | 62,934 | 1,980 | "
      f"{ORIGINAL_FILES_PER_S} |", "",
      f"**Ingest {ingest_rate / ORIGINAL_FILES_PER_S:,.0f}x the original's scan** (a one-time "
      "step; afterwards a run opens one file).", "",
      f"Training batches of {BATCH} shuffled training samples (`data.source=\"samples\"`, "
      f"{len(tr):,} training samples of {n:,}); the load of the packed file (read, sha256, "
      "order, split, normaliser fit and apply) is counted once in the first row:", "",
      *table, "",
      f"**Packed (load amortised) / loose, both through grain: {packed_rate / loose_rate:,.1f}x.**",
      "",
      "A run loads the packed file once and serves every epoch from memory; over the "
      f"original's 50 epochs that is {load_s:.1f} + 50 x {epoch_s:.2f} s = "
      f"{load_s + 50 * epoch_s:,.0f} s of batches against 50 x {loose_epoch_s:.1f} s = "
      f"{50 * loose_epoch_s:,.0f} s read from the loose files at the rate above "
      f"({50 * loose_epoch_s / (load_s + 50 * epoch_s):,.0f}x; arithmetic on the measured "
      "rows, not a measured 50-epoch run).", ""])
  print(text)
  if not args.no_docs:
    io_utils.replace_markdown_section(DOC, SECTION, text.split("\n", 2)[2], title="Performance")
    print(f"(section {SECTION!r} of {DOC} updated)")
  print(f"ingest_files_per_s={ingest_rate:.1f} batch_speedup={packed_rate / loose_rate:.2f}")


if __name__ == "__main__":
  main()
