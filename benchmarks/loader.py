"""Loader throughput: our in-memory window gather vs the original's per-sample files.

Both layouts hold the SAME synthetic feature series and are read in the same
run, as shuffled batches of 256 windows [T=500, F=10] float32:

  (a) ours: the [N, F] feature matrix is one zstd-compressed .npy file; it is
      decompressed once into memory and every batch gathers its windows by
      index (rows end-T+1 .. end) through the real training loader,
      `jaxquant.data.loader.train_batches` (grain MapDataset, 2 threads). The
      one-time load is amortised over one epoch (every window once).
  (b) the original: one `.zst` file per sample holding the `.npy` bytes of its
      [T, F] window, label in the file name; each sample is opened, read,
      decompressed and `np.load`ed, and a batch stacks 256 of them. Run through
      the same grain pipeline (2 threads) and, for reference, a plain loop.

The per-sample files were just written, so they are read from the page cache:
the best case for (b). `--cold` evicts them first (posix_fadvise DONTNEED),
which measures the disk instead.

It also measures (not estimates) the resident memory of a loader process
holding a 5-million-bar x 10-feature dataset, in a fresh subprocess.

Usage:
  python benchmarks/loader.py [--quick] [--cold] [--no-docs]
  python benchmarks/loader.py --scale-only   # only the 20M-bar subsection
  python benchmarks/loader.py --device-gather [--quick]   # only the device-gather section

--device-gather: windows/s of the device gather (data.device_windows: the feature matrix
placed on the device once, each batch's windows gathered inside the jit from their end
rows) against today's grain path, and the share of a real quick GRU train step the input
takes on each (see device_gather_bench).
The last line printed is exactly `loader_speedup=<ratio>` ((a) amortised / (b),
both through grain).
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import zstandard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

T, F, BATCH = 500, 10, 256
DOC = os.path.join(ROOT, "docs", "performance.md")
SECTION = "## Loader"


# ----------------------------------------------------------------------------
# Data and layouts
# ----------------------------------------------------------------------------


def make_series(num_bars, seed=0):
  """[num_bars, F] float32 features (standardised, like the normalised features) and labels."""
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((num_bars, F), dtype=np.float32)
  labels = (rng.random(num_bars) < 0.1).astype(np.int32)
  return feats, labels


def write_matrix(path, array, threads=0):
  """One zstd frame of the array's .npy bytes, streamed (no second copy in memory)."""
  cctx = zstandard.ZstdCompressor(level=3, threads=threads)
  with open(path, "wb") as f, cctx.stream_writer(f) as w:
    np.lib.format.write_array_header_1_0(
        w, np.lib.format.header_data_from_array_1_0(array))
    w.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def load_matrix(path):
  """Decompresses a write_matrix file straight into a fresh array (one copy in memory)."""
  with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
    if np.lib.format.read_magic(r) != (1, 0):
      raise IOError(f"{path}: not written by write_matrix")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(r)
    out = np.empty(shape, dtype, order="F" if fortran else "C")
    view, got = memoryview(out).cast("B"), 0
    while got < len(view):
      n = r.readinto(view[got:])
      if not n:
        raise IOError(f"{path}: truncated")
      got += n
  return out


def make_dataset(features, labels):
  """A real data.dataset.Dataset whose train split is every full window of `features`."""
  from jaxquant.data import dataset as dataset_lib

  ends = np.arange(T, features.shape[0], dtype=np.int64)  # Row 0 has no predecessor.
  # Filled (not np.zeros, whose untouched pages would not count as resident).
  split = dataset_lib.Split(
      "train", ends=ends, labels=labels[ends], fwd_returns=features[ends, 0].astype(np.float64),
      instrument=np.full(len(ends), 0, np.int32), timestamps=ends * 60_000_000_000)
  return dataset_lib.Dataset(features=features, splits={"train": split}, instruments=["X"],
                             normalizer={}, window=T, horizon=1)


def write_samples(out_dir, features, labels, ends):
  """The original layout: <i>_<label>.npy.zst per window (rows end-T+1 .. end)."""
  cctx = zstandard.ZstdCompressor(level=3)
  paths = []
  for i, end in enumerate(ends):
    buf = io.BytesIO()
    np.save(buf, features[end - T + 1:end + 1])
    path = os.path.join(out_dir, f"{i:07d}_{labels[end]}.npy.zst")
    with open(path, "wb") as f:
      f.write(cctx.compress(buf.getvalue()))
    paths.append(path)
  return paths


def read_sample(path, dctx):
  """open + read + decompress + np.load of one sample, label from the name."""
  with open(path, "rb") as f:
    raw = dctx.decompress(f.read())
  label = int(os.path.basename(path).split("_")[1].split(".")[0])
  return np.load(io.BytesIO(raw)), label


def evict(paths):
  """Drops the files from the page cache (they were fsync'ed, so the pages are clean)."""
  for p in paths:
    fd = os.open(p, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


# ----------------------------------------------------------------------------
# Timed readers
# ----------------------------------------------------------------------------


def train_iter(ds):
  """The training loader's batches of one shuffled epoch.

  Works with both loader APIs: train_batches(dataset, plan, ...) with a plan of
  indices [steps, B] (here a plain shuffle, the uniform sampler), and the older
  train_batches(dataset, batch_size, seed, epoch).
  """
  import inspect

  from jaxquant.data import loader

  if "plan" in inspect.signature(loader.train_batches).parameters:
    n = len(ds.splits["train"])
    steps = n // BATCH
    plan = np.random.default_rng(0).permutation(n)[:steps * BATCH].reshape(steps, BATCH)
    return loader.train_batches(ds, plan)
  return loader.train_batches(ds, BATCH, seed=0, epoch=0)


def time_ours_grain(ds):
  t0 = time.perf_counter()
  windows = 0
  for batch in train_iter(ds):
    assert batch["x"].shape == (BATCH, T, F)
    windows += len(batch["x"])
  return windows, time.perf_counter() - t0


def time_ours_loop(ds, max_windows):
  order = np.random.default_rng(0).permutation(len(ds.splits["train"]))[:max_windows]
  t0 = time.perf_counter()
  windows = 0
  for a in range(0, len(order) - BATCH + 1, BATCH):
    idx = order[a:a + BATCH]
    x = ds.windows("train", idx)
    ds.splits["train"].labels[idx]  # (gathered, as a batch holds them)
    windows += len(x)
  return windows, time.perf_counter() - t0


def time_samples_grain(paths):
  import grain

  def read_batch(idx):
    dctx = zstandard.ZstdDecompressor()
    xs, ys = zip(*(read_sample(paths[i], dctx) for i in idx))
    return {"x": np.stack(xs), "y": np.asarray(ys, np.int32)}

  ds = (grain.MapDataset.range(len(paths)).shuffle(seed=0)
        .batch(BATCH, drop_remainder=True).map(read_batch))
  t0 = time.perf_counter()
  windows = 0
  for batch in ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)):
    assert batch["x"].shape == (BATCH, T, F)
    windows += len(batch["x"])
  return windows, time.perf_counter() - t0


def time_samples_loop(paths):
  order = np.random.default_rng(0).permutation(len(paths))
  dctx = zstandard.ZstdDecompressor()
  t0 = time.perf_counter()
  windows = 0
  for a in range(0, len(order) - BATCH + 1, BATCH):
    xs, ys = zip(*(read_sample(paths[i], dctx) for i in order[a:a + BATCH]))
    x = np.stack(xs)
    np.asarray(ys)  # (gathered, as a batch holds them)
    windows += len(x)
  return windows, time.perf_counter() - t0


# ----------------------------------------------------------------------------
# Memory of a loader process (subprocess, so nothing of this one is counted)
# ----------------------------------------------------------------------------


def _proc_status_kib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(path, num_bars):
  """Runs in the subprocess: load like a training run, gather batches, report RSS."""
  from jaxquant.data import loader  # noqa: F401  (imports grain and jax, as training does)

  mib = lambda kib: kib / 1024
  base = _proc_status_kib("VmRSS")
  features = load_matrix(path)
  labels = (features[:, 1] > 1.3).astype(np.int32)
  ds = make_dataset(features, labels)
  del labels  # Per bar; the Dataset keeps its per-window copy.
  loaded = _proc_status_kib("VmRSS")
  it = iter(train_iter(ds))
  for _ in range(50):  # Batches in flight: prefetch buffer + threads.
    next(it)
  serving = _proc_status_kib("VmRSS")
  split = ds.splits["train"]
  nbytes = features.nbytes + sum(getattr(split, k).nbytes for k in
                                 ("ends", "labels", "fwd_returns", "instrument", "timestamps"))
  print(json.dumps({"baseline_mib": mib(base), "loaded_mib": mib(loaded),
                    "serving_mib": mib(serving), "peak_mib": mib(_proc_status_kib("VmHWM")),
                    "features_mib": features.nbytes / 2**20, "arrays_mib": nbytes / 2**20}))


def measure_memory(tmp, num_bars):
  feats = np.random.default_rng(1).standard_normal((num_bars, F), dtype=np.float32)
  path = os.path.join(tmp, "memory.npy.zst")
  write_matrix(path, feats, threads=-1)
  del feats
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", path,
                        "--memory-bars", str(num_bars)], capture_output=True, text=True,
                       check=True)
  os.remove(path)
  return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# At scale: the real load path (shards -> build_dataset -> batches), fresh process
# ----------------------------------------------------------------------------

# The synthetic market's sessions (minutes of the day): 360 bars a day.
_SESSION_MINUTES = np.concatenate([np.arange(540, 690), np.arange(810, 900),
                                   np.arange(1260, 1380)])


def write_walks(out_dir, instruments, bars_each, seed=0):
  """`instruments` vectorised random walks of `bars_each` minute bars as shards.

  Close: a log random walk (0.1 % a minute); open: the previous close; high/low a
  little outside both; volume lognormal; open interest a positive walk. Bars lie
  in three sessions a day (the synthetic market's calendar).
  """
  from jaxquant.data import shards

  i = np.arange(bars_each, dtype=np.int64)
  day_ns = 86_400 * 10**9
  ts = (np.datetime64("2000-01-03", "ns").astype(np.int64) + (i // 360) * day_ns
        + _SESSION_MINUTES[i % 360] * 60 * 10**9)
  for k in range(instruments):
    rng = np.random.default_rng([seed, k])
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, bars_each)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0.0, 5e-4, (2, bars_each)))
    bars = np.stack([open_, np.maximum(open_, close) * (1 + wick[0]),
                     np.minimum(open_, close) * (1 - wick[1]),
                     close, np.round(rng.lognormal(4.0, 1.0, bars_each)),
                     1e4 + np.abs(np.cumsum(rng.normal(0.0, 10.0, bars_each)))], axis=1)
    del close, open_, wick
    shards.write_shard(os.path.join(out_dir, f"W{k}{shards.SHARD_SUFFIX}"), f"W{k}", ts, bars)


def scale_child(data_dir, spec, batches, malloc):
  """Runs in the subprocess: build_dataset like a training run, serve batches, report."""
  import resource

  from jaxquant import host_memory
  from jaxquant import config_defaults
  from jaxquant.data import dataset as dataset_lib
  from jaxquant.data import loader

  mib = lambda kib: kib / 1024
  base = _proc_status_kib("VmRSS")
  cfg = config_defaults.get_config().data
  cfg.source, cfg.dir, cfg.features, cfg.window = "shards", data_dir, spec, T
  t0 = time.perf_counter()
  ds = dataset_lib.build_dataset(cfg, data_dir)
  build_s = time.perf_counter() - t0
  if malloc == "keep":  # As a run sets it up once the data is loaded (steps.ShardedSteps).
    assert host_memory.keep_freed_memory(), "JAXQUANT_MALLOC=default is set"
  loaded = _proc_status_kib("VmRSS")
  train = len(ds.splits["train"])
  plan = np.random.default_rng(0).integers(0, train, (batches, BATCH))
  it = iter(loader.train_batches(ds, plan))
  next(it)  # The first batch starts the threads; timed from the second.
  t0 = time.perf_counter()
  served = 0
  for batch in it:
    served += len(batch["x"])
  serve_s = time.perf_counter() - t0
  n, f = ds.features.shape
  split_bytes = sum(a.nbytes for s in ds.splits.values() for a in
                    (s.ends, s.labels, s.fwd_returns, s.instrument, s.timestamps, s.exit_offsets))
  print(json.dumps({
      "bars": n, "features": f, "feature_names": ds.summary()["feature_names"],
      "windows": sum(len(s) for s in ds.splits.values()), "build_s": build_s,
      "served": served, "serve_s": serve_s, "baseline_mib": mib(base),
      "loaded_mib": mib(loaded), "serving_mib": mib(_proc_status_kib("VmRSS")),
      "peak_mib": mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
      "matrix_mib": n * f * 4 / 2**20, "splits_mib": split_bytes / 2**20}))


def measure_scale(data_dir, spec, batches, malloc):
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--scale-child", data_dir,
                        "--scale-features", spec, "--scale-batches", str(batches),
                        "--scale-malloc", malloc], capture_output=True, text=True, cwd=ROOT)
  if out.returncode:
    raise RuntimeError(f"scale child ({spec}) failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


SCALE_FEATURES = ("default", "original")
MALLOC = {"default": "returned (glibc default)",
          "keep": "kept after the load (host_memory, as in a run)"}


def run_scale(args, bars_each):
  """Writes the walks, measures build_dataset + batches for each feature set."""
  tmp = tempfile.mkdtemp(prefix="jq-loader-scale-")
  start = time.perf_counter()
  try:
    write_walks(tmp, args.scale_instruments, bars_each)
    _log(start, f"wrote {args.scale_instruments} x {bars_each:,} bars of shards")
    runs = []
    for spec in SCALE_FEATURES:
      for malloc in ("default", "keep"):
        runs.append((spec, malloc, measure_scale(tmp, spec, args.scale_batches, malloc)))
        _log(start, f"measured data.features={spec}, malloc {malloc}")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return runs, args.scale_instruments


def scale_table(runs, instruments, bars_each):
  rows = ["| data.features | F | freed memory | windows | build_dataset s | windows/s served | "
          "raw [N, F] float32 MiB | split arrays MiB | after imports MiB | peak RSS MiB | "
          "peak / raw | (peak - imports) / raw | floor / raw |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for spec, malloc, r in runs:
    rows.append(
        f"| `{spec}` | {r['features']} | {MALLOC[malloc]} | {r['windows']:,} | "
        f"{r['build_s']:.1f} | "
        f"{r['served'] / r['serve_s']:,.0f} | {r['matrix_mib']:,.0f} | "
        f"{r['splits_mib']:,.0f} | {r['baseline_mib']:,.0f} | {r['peak_mib']:,.0f} | "
        f"{r['peak_mib'] / r['matrix_mib']:.2f}x | "
        f"{(r['peak_mib'] - r['baseline_mib']) / r['matrix_mib']:.2f}x | "
        f"{(r['matrix_mib'] + r['splits_mib'] + r['baseline_mib']) / r['matrix_mib']:.2f}x |")
  return rows


def scale_section(args, bars_each, runs):
  """The lines of the at-scale subsection (its heading first), as docs/performance.md has it."""
  r = runs[0][2]
  per_window = r["splits_mib"] * 2**20 / r["windows"]
  return [
      scale_heading(args.scale_instruments * bars_each),
      "",
      f"`python benchmarks/loader.py --scale-only` (also part of the full run) on "
      f"{len(os.sched_getaffinity(0))} CPU cores, load average {os.getloadavg()[0]:.1f} "
      f"(other work slows the timings, not the memory): {args.scale_instruments} instruments x {bars_each:,} one-minute bars "
      "(vectorised random walks in three sessions a day, written with `shards.write_shard`), "
      "loaded by `dataset.build_dataset` (window 500, horizon 15, binary labels, pooled "
      f"normalisation) in a fresh process that then serves {args.scale_batches} shuffled "
      f"batches of {BATCH} windows through `loader.train_batches`; peak RSS is the process's "
      "`ru_maxrss`, imports (numpy, grain, jax) included. Raw = the [N, F] float32 feature "
      "matrix; split arrays = the per-window index, label, return, instrument, timestamp and "
      f"exit columns ({per_window:.0f} bytes a window: `split_columns.column_dtypes`, int8 labels, "
      "instrument and exit offset, int32 index, float64 return, int64 timestamp). The load "
      "reads the shards three times, one series in memory at a time (`data/feature_pass.py`: "
      "each layer drops a series before the next is read, and the heap's freed pages go back "
      "to the OS between series, `feature_pass.return_freed_memory`). `freed memory kept` is how "
      "every run's process is set up once its data is loaded (`jaxquant/host_memory.py`: "
      "glibc keeps freed blocks for XLA's scratch). Floor = what a loaded dataset must hold "
      "(matrix + split arrays + imports); the rest of the peak is the last series of the "
      "last pass: its float64 bars [n, 6] and timestamps (133 MiB at 2,500,000 bars) and one "
      "feature column's temporaries. Goal: peak <= 3x raw.",
      "",
      *scale_table(runs, args.scale_instruments, bars_each),
      "",
  ]


def scale_heading(bars):
  return f"### {bars:,} bars through the real load path"


# ----------------------------------------------------------------------------
# Windows gathered on the device (--device-gather): indices in, [B, T, F] out
# ----------------------------------------------------------------------------

DEVICE_SECTION = "## Windows gathered on the device"


def _best_interleaved(fns, rounds):
  """{name: best of `rounds` timings of fn()} (seconds), the functions taking turns in each
  round, so that other work on the cores slows them alike (it can only slow a timing)."""
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def device_gather_bench(quick, log=print):
  """The quick GRU's data and step (configs/gru.py:quick on the default market): windows/s
  of today's host path (loader.train_batches, grain 2 threads, then put on the mesh) and
  of the device gather (loader.train_ends, put, gathered by device_windows.gather_windows),
  each blocked until the batch is ready; then a real train step fed by each path against
  the same step on the same batches put on the device beforehand. Returns a dict of
  figures."""
  import jax

  from configs import gru
  from jaxquant import device_windows
  from jaxquant import parallel
  from jaxquant import steps as steps_lib
  from jaxquant.data import dataset as dataset_lib
  from jaxquant.data import loader

  config = gru.get_config("quick")
  ds = dataset_lib.build_dataset(config.data, dataset_lib.ensure_data(config.data, log=log))
  mesh = parallel.make_mesh(config.mesh)
  b, window = config.train.batch_size, ds.window
  plan = loader.train_plan(ds, config.data, b, config.train.seed, 0, shards=mesh.size)
  plan = plan[:40] if quick else plan
  rounds = 3 if quick else 5
  bsh, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  put = lambda batch: parallel.global_batch(batch, bsh)
  placed = device_windows.place(ds.features, mesh)
  gather = jax.jit(lambda f, e: device_windows.gather_windows(f, e, window),
                   in_shardings=(repl, bsh), out_shardings=bsh)
  first_ends = next(iter(loader.train_ends(ds, plan)))["ends"]
  assert np.array_equal(np.asarray(gather(placed, put(first_ends))),
                        next(iter(loader.train_batches(ds, plan)))["x"])  # Bitwise.

  def host_only():
    for batch in loader.train_batches(ds, plan):
      jax.block_until_ready(put(batch)["x"])

  def device_only():
    for batch in loader.train_ends(ds, plan):
      jax.block_until_ready(gather(placed, put(batch)["ends"]))

  out = {"steps": len(plan), "rounds": rounds, "batch": b, "window": window,
         "features": ds.num_features,
         "bars": ds.features.shape[0], "matrix_mib": ds.features.nbytes / 2**20,
         "devices": f"{mesh.size} {jax.devices()[0].platform}"}
  fns = {"host_gather_s": host_only, "device_gather_s": device_only}
  windows = device_windows.DeviceWindows(placed, ds.features, window)
  runs = {"host": steps_lib.setup_run(config, ds, mesh, len(plan)),
          "device": steps_lib.setup_run(config, ds, mesh, len(plan), windows=windows)}
  rng = jax.random.key(0)
  for name, run in runs.items():
    state = run.steps.place_state(run.state)
    feed = ((lambda: loader.train_ends(ds, plan)) if name == "device"
            else (lambda: loader.train_batches(ds, plan)))
    ready = [put(batch) for batch in feed()]  # The epoch's inputs, already on the device.
    state, _ = run.steps.train_step(state, ready[0], rng)  # Compiled outside the timings.
    holder = {"state": state}

    def fed(run=run, feed=feed, holder=holder):
      st = holder["state"]
      for batch in feed():
        st, _ = run.steps.train_step(st, put(batch), rng)
      holder["state"] = jax.block_until_ready(st)

    def bare(run=run, ready=ready, holder=holder):
      st = holder["state"]
      for batch in ready:
        st, _ = run.steps.train_step(st, batch, rng)
      holder["state"] = jax.block_until_ready(st)

    fns.update({f"{name}_fed_s": fed, f"{name}_bare_s": bare})
  out.update(_best_interleaved(fns, rounds))
  log("timed the gathers and the steps")
  return out


def device_section(r, quick):
  """The '## Windows gathered on the device' section's lines for device_gather_bench's `r`."""
  n, b = r["steps"], r["batch"]
  ms = lambda s: 1e3 * s / n
  bare = r["host_bare_s"]  # The step alone, on a batch of windows already on the device.
  share = lambda fed: max(fed - bare, 0.0) / fed
  rows = [
      ("today: `loader.train_batches` (grain, 2 threads) → `put_batch` of x [B, T, F]",
       r["host_gather_s"], r["host_fed_s"], r["host_bare_s"]),
      ("device: `loader.train_ends` → `put_batch` of ends [B] → gather in the jit",
       r["device_gather_s"], r["device_fed_s"], r["device_bare_s"]),
  ]
  table = ["| input path | windows/s (input only) | input alone, ms/batch | ms/step fed by "
           "it | ms/step, input ready on the device | input's share of the fed step | "
           "input alone / fed step |", "|---|---:|---:|---:|---:|---:|---:|"]
  table += [f"| {name} | {n * b / g:,.0f} | {ms(g):.2f} | {ms(fed):.2f} | {ms(ready):.2f} | "
            f"{share(fed):.0%} | {g / fed:.1%} |" for name, g, fed, ready in rows]
  cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
  busy = (f" **This run's load average ({load:.1f}) exceeded its {cores} cores: its step "
          "timings (ms/step and both shares) are mostly other work's; only the input-only "
          "columns compare the paths. Rerun on an idle machine for the step's share.**"
          if load > cores else "")
  return [
      DEVICE_SECTION,
      "",
      f"`python benchmarks/loader.py --device-gather{' --quick' if quick else ''}` (also "
      f"part of the default and `--quick` runs) on {r['devices']} device(s), "
      f"{cores} CPU cores, load average {load:.1f}: the "
      f"quick GRU's data and step (`configs/gru.py:quick` on the default market: "
      f"{r['bars']:,} bars x {r['features']} features, {r['matrix_mib']:.1f} MiB, windows "
      f"T={r['window']}, B={b}), {n} batches of the epoch's plan, best of "
      f"{r['rounds']} rounds (the six timings take turns in each round). Windows/s: each "
      "batch made and put on the mesh, blocked until its [B, T, F] windows are ready (the device path gathers them with "
      "`device_windows.gather_windows` from the matrix placed once, `device_windows.place`; "
      "bitwise the host's windows). Then the real train step (`steps.setup_run`, and with "
      "`windows=` for the device path, as `data.device_windows` makes it) fed by each path, "
      "against the same step on the same batches put on the device beforehand; the "
      "input's share is (fed − the host step on ready batches) / fed (0 where the input hides entirely "
      "behind the step), so the device path's in-step gather counts as input; the last "
      "column is the share the input would take were it not overlapped with the step at "
      "all (its time alone / the fed step). Step timings differing by less than ~10 % are "
      "within this machine's noise at that load. On a CPU "
      "the device is the host's memory: the gain is the numpy gather, grain's threads and "
      "the copy into the device buffer." + busy,
      "",
      *table,
      "",
  ]


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def write_section(text, path=DOC):
  """Replaces the '## Loader' section of docs/performance.md (atomically; the file is
  created if missing)."""
  from jaxquant import io_utils

  body = text.split(SECTION + "\n", 1)[1].lstrip("\n").rstrip("\n") + "\n"
  io_utils.replace_markdown_section(path, SECTION, body, title="Performance")


def write_subsection(lines, path=DOC):
  """Replaces the at-scale subsection of the '## Loader' section (up to the next '## '),
  if the docs have one with this heading; leaves the file alone otherwise."""
  from jaxquant import io_utils

  with open(path, encoding="utf-8") as f:
    text = f.read()
  loader = text.split(SECTION + "\n", 1)[-1].split("\n## ", 1)[0]
  # replace_markdown_section replaces up to the next '## ': this must be the last '###'.
  if lines[0] + "\n" not in loader or "\n### " in loader.split(lines[0] + "\n", 1)[1]:
    print(f"{path} has no '{lines[0]}' subsection at the end of '{SECTION}': not written")
    return
  io_utils.replace_markdown_section(path, lines[0], "\n".join(lines[2:]).rstrip("\n") + "\n")
  print(f"wrote the '{lines[0]}' subsection of {path}")


def write_device_section(args, figures):
  """Prints the device-gather section and replaces it in the docs (not with --no-docs)."""
  from jaxquant import io_utils

  lines = device_section(figures, args.quick)
  print("\n".join(lines))
  if not args.no_docs:
    io_utils.replace_markdown_section(DOC, DEVICE_SECTION, "\n".join(lines[2:]),
                                      title="Performance")
    print(f"wrote the '{DEVICE_SECTION}' section of {DOC}")


def _log(start, what):
  print(f"[{time.perf_counter() - start:6.1f} s] {what}", file=sys.stderr, flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true",
                 help="60k bars, 3,000 sample files: finishes in < 1 min on 2 cores")
  p.add_argument("--bars", type=int, default=None, help="bars of the series (a)")
  p.add_argument("--samples", type=int, default=None, help="per-sample files (b)")
  p.add_argument("--memory-bars", type=int, default=5_000_000)
  p.add_argument("--cold", action="store_true", help="evict (b)'s files from the page cache")
  p.add_argument("--no-docs", action="store_true", help=f"do not update {DOC}")
  p.add_argument("--scale-bars", type=int, default=None,
                 help="bars of the at-scale dataset (default 20,000,000; 2,000,000 --quick)")
  p.add_argument("--scale-instruments", type=int, default=8)
  p.add_argument("--scale-batches", type=int, default=200)
  p.add_argument("--scale-only", action="store_true",
                 help="only the at-scale measurement: printed, and its subsection of the "
                 "docs replaced when the docs have one of that many bars (not with --no-docs)")
  p.add_argument("--device-gather", action="store_true",
                 help="only the device-gather comparison (its section of the docs; also "
                 "part of the default and --quick runs)")
  p.add_argument("--memory-child", help=argparse.SUPPRESS)
  p.add_argument("--scale-child", help=argparse.SUPPRESS)
  p.add_argument("--scale-features", default="default", help=argparse.SUPPRESS)
  p.add_argument("--scale-malloc", default="default", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.memory_child:
    memory_child(args.memory_child, args.memory_bars)
    return
  if args.scale_child:
    scale_child(args.scale_child, args.scale_features, args.scale_batches, args.scale_malloc)
    return
  if args.device_gather:
    write_device_section(args, device_gather_bench(args.quick, log=print))
    return
  scale_bars = args.scale_bars or (2_000_000 if args.quick else 20_000_000)
  bars_each = scale_bars // args.scale_instruments
  if args.scale_only:
    lines = scale_section(args, bars_each, run_scale(args, bars_each)[0])
    print("\n".join(lines))
    if not args.no_docs:
      write_subsection(lines)
    return

  num_bars = args.bars or (60_000 if args.quick else 200_000)
  num_samples = args.samples or (3_000 if args.quick else 20_000)
  tmp = tempfile.mkdtemp(prefix="jq-loader-bench-")
  start = time.perf_counter()
  try:
    feats, labels = make_series(num_bars)
    # (a) one compressed matrix on disk.
    matrix = os.path.join(tmp, "features.npy.zst")
    write_matrix(matrix, feats)
    # (b) per-sample files of a random subset of the same windows.
    sample_dir = os.path.join(tmp, "samples")
    os.makedirs(sample_dir)
    ends = np.random.default_rng(2).choice(np.arange(T, num_bars), num_samples, replace=False)
    t0 = time.perf_counter()
    paths = write_samples(sample_dir, feats, labels, ends)
    write_s = time.perf_counter() - t0
    disk_b = sum(os.path.getsize(q) for q in paths)
    del feats
    _log(start, f"wrote (a) and {num_samples:,} sample files (b)")

    t0 = time.perf_counter()
    loaded = load_matrix(matrix)
    ds = make_dataset(loaded, labels)
    load_s = time.perf_counter() - t0
    import grain  # noqa: F401  (import time outside every timing)
    _log(start, "imported grain")
    a_n, a_s = time_ours_grain(ds)
    al_n, al_s = time_ours_loop(ds, a_n)
    _log(start, "timed (a)")
    if args.cold:
      evict(paths)
    b_n, b_s = time_samples_grain(paths)
    if args.cold:
      evict(paths)
    bl_n, bl_s = time_samples_loop(paths)
    _log(start, "timed (b)")
    mem = measure_memory(tmp, args.memory_bars)
    _log(start, "measured memory")
    scale_runs, _ = run_scale(args, bars_each)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # Thousands of small files: takes a while.
    _log(start, f"removed {tmp}")

  a_rate = a_n / (load_s + a_s)
  b_rate = b_n / b_s
  speedup = a_rate / b_rate
  cache = "evicted (cold, --cold)" if args.cold else "warm page cache (best case for b)"
  rows = [
      ("(a) ours: one matrix, gather by index, grain 2 threads, load amortised over 1 epoch",
       a_n, f"{load_s:.2f} + {a_s:.2f}", a_rate),
      ("(a) ours, steady state (load not counted)", a_n, f"{a_s:.2f}", a_n / a_s),
      ("(a) ours, plain loop, 1 thread, steady state", al_n, f"{al_s:.2f}", al_n / al_s),
      ("(b) original: one .npy.zst per sample, grain 2 threads", b_n, f"{b_s:.2f}", b_rate),
      ("(b) original, plain loop, 1 thread", bl_n, f"{bl_s:.2f}", bl_n / bl_s),
  ]
  table = ["| layout / reader | windows | seconds | windows/s |", "|---|---:|---:|---:|"]
  table += [f"| {name} | {n:,} | {sec} | {rate:,.0f} |" for name, n, sec, rate in rows]
  cpus = len(os.sched_getaffinity(0))
  load = os.getloadavg()[0]
  text = "\n".join([
      SECTION,
      "",
      f"`python benchmarks/loader.py{' --quick' if args.quick else ''}"
      f"{' --cold' if args.cold else ''}` on {cpus} CPU cores: shuffled batches of {BATCH} "
      f"windows [T={T}, F={F}] float32, both layouts holding the same synthetic "
      f"{num_bars:,}-bar series. (a) decompresses the one zstd matrix once "
      f"({load_s:.2f} s, counted in its first row: amortised over one epoch of "
      f"{a_n:,} windows) and gathers every batch by index through "
      "`jaxquant.data.loader.train_batches`. (b) is the original's layout: "
      f"{num_samples:,} files, one zstd-compressed `.npy` [T, F] per sample "
      f"({disk_b / num_samples / 1024:.1f} KiB each, {disk_b / 2**20:.0f} MiB in all; "
      f"written in {write_s:.1f} s, not counted), each opened, read, decompressed and "
      f"`np.load`ed per sample; files read from a {cache}. Load average during the run: "
      f"{load:.1f} (other work on the same cores slows both layouts alike, not the ratio "
      "exactly: rerun for stable numbers).",
      "",
      *table,
      "",
      f"**Speedup (a) amortised / (b), both through grain: {speedup:.1f}x.**",
      "",
      f"Resident memory of a loader process holding {args.memory_bars:,} bars x {F} "
      "features (measured from /proc/self/status in a fresh process that imports the "
      "loader — grain and jax —, decompresses the matrix, builds the Dataset and serves "
      "50 batches):",
      "",
      "| | MiB |",
      "|---|---:|",
      f"| after imports (interpreter, numpy, grain, jax) | {mem['baseline_mib']:,.0f} |",
      f"| dataset loaded (features + per-window index arrays) | {mem['loaded_mib']:,.0f} |",
      f"| serving batches | {mem['serving_mib']:,.0f} |",
      f"| peak (VmHWM) | {mem['peak_mib']:,.0f} |",
      f"| of which the arrays themselves: features {mem['features_mib']:,.0f} + index "
      f"arrays {mem['arrays_mib'] - mem['features_mib']:,.0f} | {mem['arrays_mib']:,.0f} |",
      "",
      f"The per-sample layout stores every bar T = {T} times: the same "
      f"{args.memory_bars:,} bars as per-sample windows would be "
      f"{args.memory_bars * T * F * 4 / 2**30:,.0f} GiB raw (arithmetic, not measured).",
      "",
      *scale_section(args, bars_each, scale_runs),
      "",
  ])
  print(text)
  if not args.no_docs:
    write_section(text)
    print(f"wrote the '{SECTION}' section of {DOC}")
  write_device_section(args, device_gather_bench(args.quick, log=lambda m: _log(start, m)))
  print(f"loader_speedup={speedup:.2f}")


if __name__ == "__main__":
  main()
