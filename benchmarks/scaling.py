"""Train-step throughput on 1, 2, 4, 8 simulated CPU devices (data parallel).

python benchmarks/scaling.py [--model=gru] [--quick]

Each device count runs in its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N
must be set before jax is imported). On a 2-core CPU the devices share the same cores, so this
shows the overhead of sharding and collectives, not a speed-up; on GPUs run the same config
with ./launch.sh. Writes the table to docs/performance.md under "## Data-parallel scaling".
"""

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json, sys, time
sys.path.insert(0, ROOT)
import jax, numpy as np
from configs import {model} as cfg
from jaxquant import losses, parallel
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
c = cfg.get_config("quick")
c.train.batch_size = {batch}
mesh = parallel.make_mesh(c.mesh)
model = state_lib.make_model(c, 2)
tx, schedule = state_lib.make_optimizer(c.train, 100)
loss_fn = losses.make_loss_fn(c.loss, np.array([0.55, 7.0], np.float32))
state = state_lib.create_train_state(model, tx, 6, c.data.window, 0)
steps = steps_lib.ShardedSteps(model, mesh, state, steps_lib.make_train_step(model, tx, loss_fn, schedule, c, 2, 100))
state = steps.place_state(state)
rng = np.random.default_rng(0)
batch = {{"x": rng.normal(size=({batch}, c.data.window, 6)).astype(np.float32),
         "y": (rng.random({batch}) < 0.07).astype(np.int32), "r": np.zeros({batch}, np.float32)}}
t0 = time.perf_counter()
state, m = steps.train_step(state, steps.put_batch(batch), jax.random.key(0))
jax.block_until_ready(m["loss"])
compile_s = time.perf_counter() - t0
times = []
for _ in range({repeats}):
  gb = steps.put_batch(batch)
  t = time.perf_counter()
  for _ in range({steps}):
    state, m = steps.train_step(state, gb, jax.random.key(0))
  jax.block_until_ready(m["loss"])
  times.append((time.perf_counter() - t) / {steps})
print(json.dumps({{"devices": jax.device_count(), "step_s": float(np.median(times)),
                  "compile_s": compile_s}}))
'''


def measure(model, devices, batch, steps, repeats):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  code = "ROOT = " + repr(ROOT) + "\n" + WORKER.format(model=model, batch=batch, steps=steps,
                                                       repeats=repeats)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=ROOT, timeout=900)
  if out.returncode:
    raise RuntimeError(out.stderr[-2000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="gru")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  steps, repeats = (5, 3) if args.quick else (20, 5)
  rows = []
  for n in (1, 2, 4, 8):
    r = measure(args.model, n, args.batch, steps, repeats)
    rows.append(r)
    print(f"{n} device(s): {args.batch / r['step_s']:.0f} samples/s "
          f"(step {r['step_s'] * 1e3:.1f} ms, compile {r['compile_s']:.1f} s)", flush=True)
  base = rows[0]["step_s"]
  load = os.getloadavg()[0]
  lines = [f"`python benchmarks/scaling.py --model={args.model}{' --quick' if args.quick else ''}`"
           f": configs/{args.model}.py:quick, global batch {args.batch}, {os.cpu_count()} CPU "
           f"cores shared by all simulated devices (load average {load:.1f} at the end). "
           "The devices share the same cores, so this measures the overhead of sharding the "
           "batch and all-reducing gradients, not a speed-up.", "",
           "| devices | samples/s | step (ms) | relative to 1 device | compile (s) |",
           "|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['devices']} | {args.batch / r['step_s']:,.0f} | {r['step_s'] * 1e3:.1f} | "
                 f"{base / r['step_s']:.2f}x | {r['compile_s']:.1f} |")
  section = "## Data-parallel scaling (simulated CPU devices)\n\n" + "\n".join(lines) + "\n"
  print(section)
  doc = os.path.join(ROOT, "docs", "performance.md")
  text = open(doc).read() if os.path.exists(doc) else "# Performance\n"
  pattern = r"## Data-parallel scaling \(simulated CPU devices\)\n.*?(?=\n## |\Z)"
  if re.search(pattern, text, flags=re.S):
    text = re.sub(pattern, section.rstrip("\n") + "\n", text, flags=re.S)
  else:
    text = text.rstrip("\n") + "\n\n" + section
  sys.path.insert(0, ROOT)
  from jaxquant import io_utils
  io_utils.atomic_write_text(doc, text)


if __name__ == "__main__":
  main()
