"""CSV reading speed and memory: the pyarrow reader vs the hand-written one it replaced.

    python benchmarks/ingest.py            # 1,000,000 one-minute bars, best of 3
    python benchmarks/ingest.py --quick    # 200,000 bars, best of 2 (< 1 min on 2 cores)

Writes one generated one-minute bar CSV (`datetime,open,high,low,close,volume`,
`YYYY-MM-DD HH:MM:SS`, prices on a 0.01 grid, about 53 bytes a row), then reads it with
`read_csv_bars` of each reader, each run in a fresh subprocess:

* new: `jaxquant.data.csv_bars` as ingest runs it (a clean file goes through
  `csv_fast`, pyarrow reading it in 8 MiB pieces);
* new, exact path: the same with `csv_bars.FAST = False`, the path every file
  with a problem takes (`csv_table` keeps all text to name each bad row);
* old: the hand-written reader of `git show 6bac7c5^:jaxquant/data/ingest.py`
  (standard `csv` module, regex numbers and times), kept in
  benchmarks/legacy_ingest.py for this comparison only.

Each child imports its reader and reads a 1,000-row slice of the file (warm-up),
then resets the kernel's peak resident size (`/proc/self/clear_refs`, VmHWM) and
records its resident size (VmRSS: the baseline of interpreter, numpy, pyarrow,
code), reads the whole file timed with perf_counter, and reports the peak (VmHWM)
minus that baseline: the memory the read added at its peak. (Without clear_refs:
ru_maxrss of the whole process.) It also reports a digest of the timestamps and
bars, which must agree between readers. Seconds are the best of --repeats children (the least
disturbed by other work on shared cores); memory is the largest.

The table goes to the "## CSV ingest" section of docs/performance.md (--no-docs:
only printed). The last line printed is
`ingest_speedup=<rows/s new / old> memory_ratio=<peak memory new / old>`.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

DOC = os.path.join(ROOT, "docs", "performance.md")
SECTION = "## CSV ingest"
READERS = {
    "new": "new: csv_bars (clean file: csv_fast, pyarrow in pieces)",
    "exact": "new, exact path (csv_bars.FAST = False: files with a problem)",
    "old": "old: hand-written (csv module + regex), benchmarks/legacy_ingest.py",
}


def write_csv(path, rows, seed=0):
  """A random-walk one-minute bar CSV of `rows` rows (prices on a 0.01 grid)."""
  import pyarrow as pa
  import pyarrow.compute as pc
  rng = np.random.default_rng(seed)
  close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 4e-4, rows))), 2)
  opn = np.round(np.concatenate([[close[0]], close[:-1]]), 2)
  high = np.round(np.maximum(opn, close) + rng.integers(0, 5, rows) * 0.01, 2)
  low = np.round(np.minimum(opn, close) - rng.integers(0, 5, rows) * 0.01, 2)
  vol = rng.integers(1, 5000, rows)
  minutes = np.datetime64("2020-01-02T00:00", "s") + np.arange(rows) * np.timedelta64(60, "s")
  cols = [pc.strftime(pa.array(minutes), "%Y-%m-%d %H:%M:%S")]
  cols += [pc.cast(pa.array(c), pa.string()) for c in (opn, high, low, close, vol)]
  body = pc.binary_join_element_wise(*cols, ",")
  with open(path, "wb") as f:
    f.write(b"datetime,open,high,low,close,volume\n")
    f.write("\n".join(body.to_pylist()).encode() + b"\n")


def _status(key):
  """A /proc/self/status figure in KiB."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _reset_peak():
  """Resets VmHWM to the current resident size (Linux clear_refs); returns it, KiB."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    return None
  return _status("VmRSS")


def child(reader, path, warm):
  """Runs in a fresh process: JSON with seconds, peak KiB over the baseline, digest."""
  if reader == "old":
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import legacy_ingest as mod
  else:
    from jaxquant.data import csv_bars as mod
    mod.FAST = reader == "new"
  mod.read_csv_bars(warm)
  base = _reset_peak()
  t0 = time.perf_counter()
  got = mod.read_csv_bars(path)
  sec = time.perf_counter() - t0
  peak = _status("VmHWM") - base if base is not None else None
  if base is None:  # No clear_refs: the process's high-water mark, imports included.
    base, peak = 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  ((ts, bars, skipped),) = got.values()
  digest = hashlib.sha256(np.ascontiguousarray(ts, np.int64).tobytes()
                          + np.ascontiguousarray(bars, np.float64).tobytes()).hexdigest()
  print(json.dumps({"seconds": sec, "peak_kib": peak, "base_kib": base, "rows": int(ts.size),
                    "skipped": skipped, "digest": digest}))


def run_child(reader, path, warm):
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", reader, path, warm],
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="200,000 rows, best of 2")
  p.add_argument("--rows", type=int, default=None)
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--no-docs", action="store_true", help=f"do not update {DOC}")
  p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    child(*args.child)
    return
  rows = args.rows or (200_000 if args.quick else 1_000_000)
  repeats = args.repeats or (2 if args.quick else 3)
  tmp = tempfile.mkdtemp(prefix="jq-ingest-bench-")
  try:
    path, warm = os.path.join(tmp, "bars.csv"), os.path.join(tmp, "warm.csv")
    write_csv(path, rows)
    with open(path, "rb") as f:
      head = b"".join(f.readline() for _ in range(1001))
    with open(warm, "wb") as f:
      f.write(head)
    size = os.path.getsize(path)
    results = {}
    for reader in READERS:
      runs = [run_child(reader, path, warm) for _ in range(repeats)]
      results[reader] = {"seconds": min(r["seconds"] for r in runs),
                         "peak_mib": max(r["peak_kib"] for r in runs) / 1024,
                         "base_mib": max(r["base_kib"] for r in runs) / 1024,
                         "rows": runs[0]["rows"], "digests": {r["digest"] for r in runs},
                         "skipped": runs[0]["skipped"]}
      print(f"{reader}: {results[reader]['seconds']:.2f} s, "
            f"{results[reader]['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  digests = set().union(*(r["digests"] for r in results.values()))
  if len(digests) != 1 or any(r["rows"] != rows or r["skipped"] for r in results.values()):
    raise SystemExit(f"the readers disagree: {results}")
  new, old = results["new"], results["old"]
  speedup = old["seconds"] / new["seconds"]
  memory_ratio = new["peak_mib"] / old["peak_mib"]
  table = ["| reader | rows | seconds | rows/s | peak memory added (MiB) | baseline (MiB) |",
           "|---|---:|---:|---:|---:|---:|"]
  for reader, name in READERS.items():
    r = results[reader]
    table.append(f"| {name} | {r['rows']:,} | {r['seconds']:.2f} | {r['rows'] / r['seconds']:,.0f}"
                 f" | {r['peak_mib']:,.0f} | {r['base_mib']:,.0f} |")
  cpus = len(os.sched_getaffinity(0))
  body = "\n".join([
      f"`python benchmarks/ingest.py{' --quick' if args.quick else ''}` on {cpus} CPU cores "
      f"(load average {os.getloadavg()[0]:.1f} at the end): `read_csv_bars` of a generated "
      f"{rows:,}-row one-minute bar CSV ({size / 2**20:.0f} MiB, "
      "`datetime,open,high,low,close,volume`), each reader in a fresh process. Seconds: "
      f"best of {repeats} runs (perf_counter around the read); memory: the peak resident "
      "size during the read (VmHWM, reset with /proc/self/clear_refs just before it) minus "
      "the resident size before it (after the imports and a 1,000-row warm-up read), the "
      "largest of the runs. All readers return the same timestamps and bars "
      "(sha256 compared).",
      "",
      *table,
      "",
      f"**New / old: {speedup:.1f}x the rows per second, {memory_ratio:.2f} of the peak "
      "memory.** The baselines differ (the new reader's imports hold pyarrow and its "
      "compute kernels); the ratio compares only what each read adds.",
      "",
  ])
  print(SECTION + "\n\n" + body)
  if not args.no_docs:
    from jaxquant import io_utils
    io_utils.replace_markdown_section(DOC, SECTION, body, title="Performance")
    print(f"(section {SECTION!r} of {DOC} updated)")
  print(f"ingest_speedup={speedup:.2f} memory_ratio={memory_ratio:.2f}")


if __name__ == "__main__":
  main()
