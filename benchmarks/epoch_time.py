"""One training epoch of the original's ResNet-18 setting, end to end.

    python benchmarks/epoch_time.py --dtype=bfloat16        # on a GPU: the whole epoch
    python benchmarks/epoch_time.py --steps=30              # a CPU smoke: 30 steps, scaled

The original (PyTorch, one GPU) trained ResNet-18 on 50,347 windows (T=500) at batch 16
at 2.1 iterations/s: 12.6 minutes an epoch (../shared/SPEC.md). This runs the same
setting with jaxquant's own pieces, as `jaxquant.main` does: configs/resnet.py, a
synthetic market with just enough days for 50,347 training windows, its zstd shards
read by `loader.train_batches`, the run `steps.setup_run` builds for `jaxquant.main`
(its jitted step on every device), metrics kept on device. Timed: 3,147 steps of 16 (50,352 windows), from the first batch read
to the last step finished (`jax.block_until_ready`), after one untimed step that
compiles (its time is reported as the compile). Validation is not included (the
original's 12.6 minutes is its training iterations alone).

With `--steps=N` only the first N steps are timed and the epoch is scaled from them
(marked "scaled" in the table): for a CPU, where the full epoch takes an hour.

The result is printed and written as the section "## ResNet-18 epoch (original
setting)" of `--out` (default docs/performance.md; one subsection per device and
dtype; other sections kept).
"""

import argparse
import math
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

ORIGINAL_WINDOWS = 50_347
ORIGINAL_BATCH = 16
ORIGINAL_MINUTES = 12.6
EPOCH_STEPS = math.ceil(ORIGINAL_WINDOWS / ORIGINAL_BATCH)  # 3,147.
SECTION = "## ResNet-18 epoch (original setting)"


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def config_for(days, dtype):
  from configs import resnet
  config = resnet.get_config()
  config.data.synth.days = days
  config.train.dtype = dtype
  assert config.train.batch_size == ORIGINAL_BATCH and config.model.depth == 18
  return config


def dataset_with_windows(dtype, windows=ORIGINAL_WINDOWS):
  """(config, dataset) of the smallest synthetic market (in whole days, from an
  estimate upwards) whose training split holds `windows` windows."""
  from jaxquant.data import dataset as dataset_lib
  days = math.ceil(windows / 939)  # ~939 training windows a day at T=500 (4 instruments).
  while True:
    config = config_for(days, dtype)
    data_dir = dataset_lib.ensure_data(config.data, log=log)
    ds = dataset_lib.build_dataset(config.data, data_dir)
    if len(ds.splits["train"]) >= windows:
      return config, ds
    days += 1


def measure(config, ds, steps):
  """(compile seconds, seconds of the first `steps` steps of the epoch)."""
  from jaxquant import parallel
  from jaxquant import steps as steps_lib
  from jaxquant.data import loader
  mesh = parallel.make_mesh(config.mesh)
  plan = loader.train_plan(ds, config.data, config.train.batch_size, config.train.seed, 0,
                           shards=mesh.size)
  if plan.shape[0] < EPOCH_STEPS + 1:
    raise ValueError(f"{plan.shape[0]} batches in the training split; need {EPOCH_STEPS + 1}")
  # The run jaxquant.main would set up for this data (its steps/epoch: the whole split).
  run = steps_lib.setup_run(config, ds, mesh, plan.shape[0])
  runner = run.steps
  state = runner.place_state(run.state)
  rng = jax.random.key(config.train.seed + 1)
  rows = parallel.process_slice(config.train.batch_size)

  # The warm-up step uses the plan's last batch; the timed ones its first `steps`.
  warm = next(iter(loader.train_batches(ds, plan[-1:], rows=rows)))
  t0 = time.perf_counter()
  state, m = runner.train_step(state, runner.put_batch(warm), rng)
  jax.block_until_ready((state, m))
  compile_s = time.perf_counter() - t0

  from tqdm import tqdm
  t0 = time.perf_counter()
  metrics = []
  batches = loader.train_batches(ds, plan[:steps], rows=rows, workers=config.data.workers)
  for batch in tqdm(batches, total=steps, leave=False, mininterval=1.0, desc="epoch"):
    state, m = runner.train_step(state, runner.put_batch(batch), rng)
    metrics.append(m)  # On device, as in jaxquant.main: no sync per step.
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - t0
  skipped = int(np.sum(jax.device_get([m["skipped"] for m in metrics])))
  if skipped:
    raise RuntimeError(f"{skipped} of {steps} steps had a non-finite loss or gradient")
  return compile_s, seconds


def report(args, config, ds, compile_s, seconds, steps):
  scaled = steps < EPOCH_STEPS
  epoch_s = seconds / steps * EPOCH_STEPS
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  original_s = ORIGINAL_MINUTES * 60
  head = ("| device | dtype | steps timed | epoch (3,147 × 16) | samples/s | compile s | "
          "vs the original's 12.6 min |")
  row = (f"| {kind} × {jax.device_count()} | {config.train.dtype} | {steps:,} | "
         f"{epoch_s:,.1f} s{' (scaled)' if scaled else ''} | "
         f"{steps * config.train.batch_size / seconds:,.1f} | {compile_s:.1f} | "
         f"{original_s / epoch_s:,.1f}× |")
  table = "\n".join([head, "|---|---|---|---|---|---|---|", row])
  command = "python benchmarks/epoch_time.py " + " ".join(sys.argv[1:])
  from benchmarks import train_step
  cpu, cores = train_step.machine()
  train = ds.splits["train"]
  text = f"""\
Command: `{command.strip()}`.
Machine: {kind} × {jax.device_count()} (host: {cpu}, {cores} cores); jax {jax.__version__}.
Data: the synthetic market over {config.data.synth.days} days × {config.data.synth.instruments} instruments: {len(train):,}
training windows (T={ds.window}). The epoch: its first {EPOCH_STEPS:,} batches of
{config.train.batch_size} ({config.data.sampler} sampler), read from the zstd shards by `loader.train_batches`.

{table}

- epoch: seconds from the first batch read to the last step finished, over {steps:,}
  steps{'' if not scaled else f', scaled to {EPOCH_STEPS:,}'}; compile s: the first
  (untimed) step, compile included. The original: 2.1 iterations/s at batch 16
  (12.6 min = 756 s an epoch).
"""
  print(table)
  if args.out:
    title = f"### {kind}, {config.train.dtype}{', scaled from a partial epoch' if scaled else ''}"
    train_step.write_section(args.out, text, title, section=SECTION, order=())
    log(f"wrote section '{SECTION}' of {args.out}")
  print(f"epoch_s={epoch_s:.1f} scaled={int(scaled)} original_over_jaxquant="
        f"{original_s / epoch_s:.2f}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype (train.dtype); parameters stay float32")
  p.add_argument("--steps", type=int, default=0,
                 help="time only this many steps and scale to the epoch (0 = the whole epoch)")
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"),
                 help=f"markdown file whose section '{SECTION}' is (re)written; '' = none")
  args = p.parse_args(argv)
  if args.steps < 0 or args.steps > EPOCH_STEPS:
    p.error(f"--steps={args.steps}: use 1..{EPOCH_STEPS}, or 0 for the whole epoch")
  from jaxquant import host_memory
  host_memory.keep_freed_memory()
  config, ds = dataset_with_windows(args.dtype)
  steps = args.steps or EPOCH_STEPS
  log(f"{len(ds.splits['train']):,} training windows ({config.data.synth.days} days); "
      f"timing {steps:,} of {EPOCH_STEPS:,} steps on {jax.device_count()} "
      f"{jax.default_backend()} device(s)")
  compile_s, seconds = measure(config, ds, steps)
  report(args, config, ds, compile_s, seconds, steps)


if __name__ == "__main__":
  main()
