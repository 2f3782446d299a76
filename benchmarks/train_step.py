"""Train-step throughput: jaxquant's JAX step against the PyTorch original, same process.

    python benchmarks/train_step.py --quick                   # quick shapes, < 3 min on 2 cores
    python benchmarks/train_step.py                           # quick + full-scale shapes
    python benchmarks/train_step.py --models=gru,lstm --out=/tmp/perf.md
    python benchmarks/train_step.py --device=gpu --dtype=bfloat16   # on a GPU machine

What it measures, for each model (gru, lstm, resnet, transformer, moe) and shape:
samples/s of one full training step — forward, backward, optimizer update — as
the median over repeats of timed runs of consecutive steps (warm-up and compile
excluded; JAX synchronised with `jax.block_until_ready`, torch with
`torch.cuda.synchronize()` on a GPU; on a CPU its ops return finished tensors):

- JAX: `jaxquant.steps.make_train_step` on the config's model (the step we ship:
  focal loss, clip by global norm, AdamW on warmup + cosine, the non-finite
  guard), `jax.jit(..., donate_argnums=0)` with the Runner's compiler options
  (`jaxquant.xla_options.step_options()`), compiled ahead of time; the compile
  time is reported (JAX's persistent compilation cache is on, so a second run
  mostly loads it: "(cached)" marks those).
- PyTorch eager: the twin from `benchmarks/torch_reference.py` (same layers, same
  parameter count) with the original's step: AdamW (lr, weight decay of the
  config) + clip_grad_norm_ + focal loss + cosine annealing, at the faster of 1
  and all-cores intra-op threads (picked per model in the warm-up: on a loaded
  shared machine torch's multi-threaded small ops can be ~10x slower).
- PyTorch `torch.compile` (inductor) of the model + loss, optimizer eager; "n/a"
  when it fails on this machine. Not run under --quick by default (a cold
  inductor compile takes 0.5-6 min per model on 2 cores; `--torch_compile=all`
  forces it), nor for GRU/LSTM at full shape (inductor unrolls T=500 steps).
JAX and torch run on the same random batch, in alternation (one timed run of
each per repeat), so a busy shared machine slows both alike.

Shapes: "quick" = the `:quick` configs (T=64, batch 128, small widths);
"full" = configs/<model>.py (T=500, original widths) at a small batch on a CPU
(`--full_batch`, default 4; full shapes are slow there) and the config's own batch
(the original's) on a GPU; skipped under --quick.

`--device=gpu` runs both frameworks on the GPU (JAX's default backend must be one
and torch must see it through CUDA; `auto` picks it when both do); `--dtype=bfloat16`
computes in bfloat16 with float32 parameters and optimizer in both: JAX's
`train.dtype`, torch's `autocast`. The GPU results go to their own subsection.

FLOPs of a step come from XLA's cost analysis of the compiled JAX step
(`compiled.cost_analysis()["flops"]`), except for GRU/LSTM: XLA counts the body
of the time loop (a while loop) once, so their FLOPs are counted analytically
(3 × forward matmul FLOPs). The matmul peak is an n³ `jnp.dot` (and `torch.mm`) in
the run's dtype, measured in the same run (n = 2048 on a CPU, 8192 on a GPU).

The results go to stdout as a markdown table and into `--out` (default
docs/performance.md) as the section "## Train step: JAX vs PyTorch" (other
sections of the file are kept), rewritten after every row, so a run stopped part-way
keeps what it measured (marked "Partial: n of m rows"). The last line printed is
`min_jax_over_torch=<min JAX/eager ratio> geomean=<geometric mean of the ratios>`.
"""

import argparse
import math
import os

# On a GPU both frameworks share the device's memory: JAX takes what it needs
# instead of 75 % up front. Set before JAX starts its backend.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import platform
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

MODELS = ("gru", "lstm", "resnet", "transformer", "moe")
SECTION = "## Train step: JAX vs PyTorch"
from jaxquant.data import features as _features  # noqa: E402

NUM_FEATURES = len(_features.FEATURE_NAMES)  # What the pipeline feeds the models.


_T0 = time.time()


def log(*a):
  print(f"[{time.time() - _T0:6.1f}s]", *a, file=sys.stderr, flush=True)


def get_config(model, shape):
  """configs/<model>.py, `:quick` for shape "quick"."""
  import importlib
  module = importlib.import_module(f"configs.{model}")
  config = module.get_config("quick" if shape == "quick" else None)
  assert config.model.name == model, (model, config.model.name)
  return config


# --------------------------------------------------------------------------- FLOPs


def rnn_flops(config, batch):
  """Analytic FLOPs of a GRU/LSTM train step: 3 × forward matmul FLOPs."""
  m, t = config.model, config.data.window
  gates = 3 if m.name == "gru" else 4
  fwd = 0
  for i in range(m.num_layers):
    f_in = NUM_FEATURES if i == 0 else m.hidden
    fwd += 2 * t * gates * m.hidden * (f_in + m.hidden)
  fwd += 2 * m.hidden * 3  # Heads.
  return 3 * fwd * batch


def cost_flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def matmul_size(device):
  return 8192 if device == "gpu" else 2048


def matmul_peak(device="cpu", dtype="float32", repeats=5):
  """GFLOP/s of an n³ matmul in `dtype` (n = `matmul_size`): (jnp.dot, torch.mm), medians.

  On a CPU torch is timed at 1 and all-cores threads (the faster counts); on a GPU
  each timed run is 10 back-to-back products (one takes ~1 ms), synchronised.
  """
  import torch
  n = matmul_size(device)
  gpu = device == "gpu"
  inner = 10 if gpu else 1
  rng = np.random.default_rng(0)
  a = rng.normal(size=(n, n)).astype(np.float32)
  b = rng.normal(size=(n, n)).astype(np.float32)
  ja, jb = (jnp.asarray(v, dtype) for v in (a, b))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(ja, jb))
  tdev = "cuda" if gpu else "cpu"
  ta, tb = (torch.from_numpy(v).to(tdev, getattr(torch, dtype)) for v in (a, b))
  torch.mm(ta, tb)
  sync = torch.cuda.synchronize if gpu else (lambda: None)
  sync()
  threads = [0] if gpu else sorted({1, os.cpu_count() or 1})
  tj, tt = [], {k: [] for k in threads}
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = dot(ja, jb)
    jax.block_until_ready(out)
    tj.append((time.perf_counter() - t0) / inner)
    for k in threads:
      if k:
        torch.set_num_threads(k)
      t0 = time.perf_counter()
      for _ in range(inner):
        torch.mm(ta, tb)
      sync()
      tt[k].append((time.perf_counter() - t0) / inner)
  if not gpu:
    torch.set_num_threads(os.cpu_count() or 1)
  flops = 2.0 * n**3
  return (flops / statistics.median(tj) / 1e9,
          max(flops / statistics.median(v) / 1e9 for v in tt.values()))


def resolve_device(name):
  """"cpu" or "gpu" for --device; auto = gpu when JAX's backend and torch both have one."""
  import torch
  jax_gpu, torch_gpu = jax.default_backend() == "gpu", torch.cuda.is_available()
  if name == "auto":
    name = "gpu" if jax_gpu and torch_gpu else "cpu"
  if name == "gpu" and not (jax_gpu and torch_gpu):
    raise SystemExit(f"--device=gpu: JAX's default backend is {jax.default_backend()!r} and "
                     f"torch.cuda.is_available() is {torch_gpu}; both must see the GPU "
                     "(install jax[cuda12] and a CUDA build of torch)")
  if name == "cpu" and jax.default_backend() != "cpu":
    raise SystemExit(f"--device=cpu: JAX's default backend is {jax.default_backend()!r}; "
                     "run with JAX_PLATFORMS=cpu")
  return name


# --------------------------------------------------------------------------- steps


def make_batch(config, batch, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, config.data.window, NUM_FEATURES)).astype(np.float32)
  y = (rng.random(batch) < 0.07).astype(np.int32)
  y[0] = 1  # At least one positive.
  r = (rng.normal(size=batch) * 0.005).astype(np.float32)
  return {"x": x, "y": y, "r": r}


def cache_entries(cache_dir):
  if not cache_dir or not os.path.isdir(cache_dir):
    return 0
  return sum(len(files) for _, _, files in os.walk(cache_dir))


def jax_setup(config, host_batch, cache_dir):
  """Compiled JAX step, its state, compile seconds, cache hit, params and FLOPs."""
  from jaxquant import losses
  from jaxquant import state as state_lib
  from jaxquant import steps as steps_lib
  from jaxquant import xla_options
  model = state_lib.make_model(config, 2)
  tx, schedule = state_lib.make_optimizer(config.train, steps_per_epoch=100)
  alpha = losses.class_weights(config.loss, host_batch["y"], host_batch["r"], 2)
  loss_fn = losses.make_loss_fn(config.loss, alpha)
  state = state_lib.create_train_state(model, tx, NUM_FEATURES, config.data.window,
                                       config.train.seed)
  step = steps_lib.make_train_step(model, tx, loss_fn, schedule, config, 2,
                               config.train.epochs * 100)
  batch = jax.device_put(host_batch)
  rng = jax.random.key(1)
  before = cache_entries(cache_dir)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0, compiler_options=xla_options.step_options()
                     ).lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  cached = bool(cache_dir) and cache_entries(cache_dir) == before
  params = sum(x.size for x in jax.tree.leaves(state.params))
  if config.model.name in ("gru", "lstm"):
    flops, source = rnn_flops(config, len(host_batch["y"])), "analytic"
  else:
    flops, source = cost_flops(compiled), "XLA"
  return {"step": compiled, "state": state, "batch": batch, "rng": rng, "alpha": alpha,
          "compile_s": compile_s, "cached": cached, "params": params, "flops": flops,
          "flops_source": source}


def run_jax(j, steps):
  """Runs `steps` steps; returns the seconds they took (synchronised)."""
  state = j["state"]
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = j["step"](state, j["batch"], j["rng"])
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t0
  j["state"] = state
  return dt


def torch_setup(config, host_batch, alpha, compile, device="cpu"):
  import torch
  from benchmarks import torch_reference
  if compile:
    # A fresh dynamo cache per model: the loss function's code object is shared, and a
    # second shape would otherwise be recompiled with dynamic shapes.
    torch._dynamo.reset()
  torch.manual_seed(0)
  tdev = "cuda" if device == "gpu" else "cpu"
  model = torch_reference.build_torch_model(config, 2, NUM_FEATURES).to(tdev)
  autocast = None if config.train.dtype == "float32" else getattr(torch, config.train.dtype)
  step = torch_reference.make_torch_train_step(model, config, alpha, compile=compile,
                                               autocast_dtype=autocast)
  tb = tuple(torch.from_numpy(host_batch[k]).to(tdev) for k in ("x", "y", "r"))
  tb = (tb[0], tb[1].long(), tb[2])
  return {"step": step, "batch": tb, "params": torch_reference.count_params(model),
          "sync": torch.cuda.synchronize if tdev == "cuda" else None}


def run_torch(t, steps):
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = t["step"](*t["batch"])
  if t["sync"]:
    t["sync"]()  # CUDA launches are asynchronous: wait for the last step's kernels.
  loss.item()  # On a CPU the ops are done; this just reads the value.
  return time.perf_counter() - t0


def steps_for(seconds_per_step, target):
  return max(1, int(round(target / max(seconds_per_step, 1e-9))))


def compile_policy(model, shape, args):
  """None if torch.compile runs for this model/shape, else why it does not."""
  if args.torch_compile == "none":
    return "not run"
  if args.torch_compile == "auto":
    if args.quick:
      return "not run (--quick)"
    if model in ("gru", "lstm") and shape == "full":
      return "skipped (unrolls T)"
  return None


def pick_torch_threads(runner, options):
  """The faster torch intra-op thread count for this model (min of 2 single steps)."""
  import torch
  best = None
  for n in options:
    torch.set_num_threads(n)
    run_torch(runner, 1)
    sec = min(run_torch(runner, 1) for _ in range(2))
    if best is None or sec < best[1]:
      best = (n, sec)
  torch.set_num_threads(best[0])
  return best


def compile_policy_text(args):
  return {"none": "--torch_compile=none: not run",
          "all": "--torch_compile=all: every model",
          "auto": "--torch_compile=auto: not under --quick, where cold inductor compiles "
                  "(0.5-6 min per model) would not fit; not GRU/LSTM at full shape, where "
                  "inductor unrolls the T=500 recurrence"}[args.torch_compile]


CPU_FULL_BATCH = 4  # Full shapes are slow on a CPU.


def full_batch(args, config):
  """The full shapes' batch: --full_batch if given (capped by the config's), else the
  config's own on a GPU and at most CPU_FULL_BATCH on a CPU."""
  cap = args.full_batch or (None if args.device == "gpu" else CPU_FULL_BATCH)
  return min(config.train.batch_size, cap or config.train.batch_size)


def bench_model(model, shape, args, cache_dir):
  import torch
  config = get_config(model, shape)
  config.train.dtype = args.dtype
  batch = config.train.batch_size if shape == "quick" else full_batch(args, config)
  host = make_batch(config, batch)
  row = {"model": model, "shape": shape, "T": config.data.window, "batch": batch}
  log(f"[{model}/{shape}] JAX: build + compile ...")
  j = jax_setup(config, host, cache_dir)
  row.update(params_jax=j["params"], compile_s=j["compile_s"], cached=j["cached"],
             flops=j["flops"], flops_source=j["flops_source"])
  log(f"[{model}/{shape}] JAX compile {j['compile_s']:.1f}s"
      f"{' (cached)' if j['cached'] else ''}; torch eager ...")
  runners = {"jax": (j, run_jax)}
  te = torch_setup(config, host, j["alpha"], compile=False, device=args.device)
  row["params_torch"], row["eager_note"] = te["params"], None
  try:
    run_torch(te, 1)
    runners["eager"] = (te, run_torch)
  except RuntimeError as e:  # A kernel this device/dtype lacks (CPU oneDNN LSTM in bf16).
    log(f"[{model}/{shape}] torch eager failed: {str(e).strip().splitlines()[0][:160]}")
    row["eager_note"] = f"n/a ({type(e).__name__})"
  if args.device == "gpu" or "eager" not in runners:
    row["threads"] = "GPU" if args.device == "gpu" else "-"
  else:
    options = [args.torch_threads] if args.torch_threads else sorted({1, os.cpu_count() or 1})
    row["threads"], eager_s = pick_torch_threads(te, options)
    log(f"[{model}/{shape}] torch threads {row['threads']} ({eager_s:.3f} s/step)")
  row["compile_torch"], row["compile_note"] = None, compile_policy(model, shape, args)
  if row["compile_note"] is None:
    log(f"[{model}/{shape}] torch.compile ...")
    try:
      tc = torch_setup(config, host, j["alpha"], compile=True, device=args.device)
      t0 = time.perf_counter()
      run_torch(tc, 1)  # Compiles (forward and backward) on the first call.
      row["compile_torch"] = time.perf_counter() - t0
      runners["compiled"] = (tc, run_torch)
    except Exception as e:  # noqa: BLE001 — any inductor/dynamo failure → "n/a".
      msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
      log(f"[{model}/{shape}] torch.compile failed: {type(e).__name__}: {msg}")
      row["compile_note"] = f"n/a ({type(e).__name__})"
      torch._dynamo.reset()

  # Warm-up (2 steps each), then pick the steps per timed run from the warm-up speed.
  per_step = {}
  for name, (obj, fn) in runners.items():
    fn(obj, 1)
    per_step[name] = fn(obj, 1)
  steps = {name: steps_for(s, args.target_s) for name, s in per_step.items()}
  times = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, (obj, fn) in runners.items():  # Alternate: shared-machine noise hits all.
      times[name].append(fn(obj, steps[name]) / steps[name])
  for name in ("jax", "eager", "compiled"):
    if name in times:
      sec = statistics.median(times[name])
      row[f"{name}_sps"] = batch / sec
      row[f"{name}_spread"] = (max(times[name]) - min(times[name])) / sec
    else:
      row[f"{name}_sps"] = None
  row["ratio"] = row["ratio_lo"] = row["ratio_hi"] = None
  if "eager" in times:
    row["ratio"] = row["jax_sps"] / row["eager_sps"]
    # Each repeat timed both back to back: its own ratio shows how far one run's
    # ratio can drift on a shared machine.
    paired = [e / j for j, e in zip(times["jax"], times["eager"], strict=True)]
    row["ratio_lo"], row["ratio_hi"] = min(paired), max(paired)
  row["gflops"] = row["flops"] * row["jax_sps"] / batch / 1e9
  log(f"[{model}/{shape}] JAX {fmt_sps(row['jax_sps'])}/s  eager {fmt_sps(row['eager_sps'])}/s"
      f"  compiled {fmt_sps(row['compiled_sps'])}/s  ratio {fmt_ratio(row)}")
  del runners, j
  torch.set_num_threads(os.cpu_count() or 1)
  return row


# --------------------------------------------------------------------------- report


def fmt_ratio(r):
  if r["ratio"] is None:
    return "n/a"
  return f"{r['ratio']:.2f} ({r['ratio_lo']:.2f}–{r['ratio_hi']:.2f})"


def fmt_sps(v):
  if v is None:
    return "n/a"
  return f"{v:,.0f}" if v >= 100 else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def table(rows, peak):
  head = ("| model | shape (T, batch) | params JAX / torch | JAX samples/s | torch eager "
          "samples/s (threads) | torch.compile samples/s (compile s) | JAX / eager | "
          "JAX compile s | GFLOP/step (source) | JAX GFLOP/s (% of jnp.dot peak) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    same = "" if r["params_jax"] == r["params_torch"] else " (differ!)"
    if r["compiled_sps"] is not None:
      compiled = f"{fmt_sps(r['compiled_sps'])} ({r['compile_torch']:.0f})"
    else:
      compiled = r["compile_note"] or "n/a"
    lines.append(
        f"| {r['model']} | {r['shape']} ({r['T']}, {r['batch']}) | "
        f"{r['params_jax']:,} / {r['params_torch']:,}{same} | {fmt_sps(r['jax_sps'])} | "
        f"{r['eager_note'] or fmt_sps(r['eager_sps'])} ({r['threads']}) | {compiled} | "
        f"{fmt_ratio(r)} | "
        f"{r['compile_s']:.1f}{' (cached)' if r['cached'] else ''} | "
        f"{r['flops'] / 1e9:.3g} ({r['flops_source']}) | "
        f"{r['gflops']:.1f} ({100 * r['gflops'] / peak:.0f} %) |")
  return "\n".join(lines)


def machine():
  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    if names:
      cpu = names[0].strip()
  except OSError:
    pass
  return cpu, os.cpu_count()


SUBSECTIONS = ("### Quick shapes (`--quick`)", "### Quick and full-scale shapes")


def subsection(args, gpu):
  """Where this run's table goes: one subsection per (CPU/GPU, quick/all, dtype)."""
  title = SUBSECTIONS[0] if args.quick else SUBSECTIONS[1]
  if gpu or args.dtype != "float32":
    title += f" on {'a GPU' if gpu else 'a CPU'}, {args.dtype}"
  return title


def write_section(path, text, subsection, section=SECTION, order=SUBSECTIONS):
  """Writes `text` as `subsection` of `section` in the markdown file `path`.

  Only that subsection changes: the section's other subsections (other modes'
  last runs) and the file's other sections are kept; subsections named in
  `order` come first. A missing file or section is created.
  """
  old = ""
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
  start = old.find(section + "\n") if old else -1
  if start < 0 and old.endswith(section):
    start = len(old) - len(section)
  subs = {}
  if start >= 0:
    nxt = re.search(r"^## ", old[start + len(section):], re.M)
    end = start + len(section) + nxt.start() if nxt else len(old)
    inner = old[start + len(section):end]
    for m in re.finditer(r"^(### .*)\n((?:(?!^### ).*\n?)*)", inner, re.M):
      subs[m.group(1).strip()] = m.group(2).strip()
    before, after = old[:start], old[end:]
  else:
    before = old.rstrip("\n") + "\n\n" if old else "# Performance\n\n"
    after = ""
  subs[subsection] = text.strip()
  titles = [t for t in order if t in subs] + [t for t in subs if t not in order]
  body = section + "\n\n" + "\n\n".join(f"{t}\n\n{subs[t]}" for t in titles) + "\n"
  new = before + body + ("\n" + after if after else "")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  from jaxquant import io_utils
  io_utils.atomic_write_text(path, new)


def report(args, rows, total, *, t_start, cpu, cores, gpu, load, peak_jax, peak_torch,
           kept, command):
  """(markdown notes, table, min ratio, geomean, rows without a ratio) of the rows so far
  (of `total`); the keywords describe the run (machine, matmul peaks, command)."""
  import flax
  import torch
  elapsed = time.time() - t_start
  load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

  ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
  lowest = min(ratios, default=float("nan"))
  geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
  missing = [f"{r['model']}/{r['shape']}" for r in rows if r["ratio"] is None]
  over = f" (over the rows with a ratio; none for {', '.join(missing)})" if missing else ""
  tab = table(rows, peak_jax)
  if gpu:
    jax_options, torch_threads = "none on a GPU", " (\"GPU\" in the threads column)"
    full_note = "Full shapes (T=500, original widths) run at the configs' own batch sizes."
  else:
    jax_options = ("`jaxquant.xla_options`: YNNPACK for dots only; XLA's default threads")
    torch_threads = (f", at the faster of 1 and {cores} intra-op threads for each model "
                     f"(picked in the warm-up; on a loaded machine torch's {cores}-thread "
                     "ops can be ~10x slower, XLA:CPU hardly changes)")
    full_note = (f"Full shapes (T=500, original widths) run at batch ≤ "
                 f"{args.full_batch or CPU_FULL_BATCH} on a CPU (GRU/LSTM at batch 4 are "
                 "latency-bound: `--full_batch=32` for the original's batch).")
  spreads = max(max(r["jax_spread"], r.get("eager_spread", 0)) for r in rows)
  n = matmul_size(args.device)
  on = (f"{gpu} (host: {cpu}, {cores} cores)" if gpu else f"{cpu}, {cores} cores")
  threads = "" if gpu else f" (the faster of 1 and {cores} threads)"
  notes = f"""\
Command: `{command.strip()}` ({elapsed:.0f} s).
Machine: {on} (load average {load:.1f} at the start, {load_end:.1f} at the
end: a shared machine; JAX and torch were timed in alternation so both saw the same load;
the widest spread of a framework's repeats was {100 * spreads:.0f} % of its median).
Versions: jax {jax.__version__} (backend {jax.default_backend()}), flax {flax.__version__},
torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}.
Compute dtype: {args.dtype} in both (parameters and optimizer float32).
Matmul peak ({n}³ {args.dtype}, same run, median of 5): jnp.dot {peak_jax:.1f} GFLOP/s,
torch.mm {peak_torch:.1f} GFLOP/s{threads}.
Host memory: {"freed memory kept in the process (`jaxquant.host_memory`, as `jaxquant.main` does), for both frameworks" if kept else "glibc's default (freed blocks over 32 MiB unmapped)"}.

{tab}

- samples/s: batch / median seconds per step over {args.repeats} timed runs (each of
  several consecutive steps, about {args.target_s:g} s), after 2 warm-up steps; compile excluded.
- JAX / eager: ratio of the medians; in parentheses the lowest and highest ratio of a
  single repeat (each repeat times both back to back), i.e. how far one short run's
  ratio drifts on this machine.
- JAX: `jaxquant.steps.make_train_step` under `jax.jit(donate_argnums=0)` with the
  Runner's compiler options ({jax_options}); torch: the twin in
  `benchmarks/torch_reference.py` (same layers and parameter count) with AdamW +
  clip_grad_norm_ + focal loss + cosine annealing{torch_threads};
  torch.compile = inductor on model + loss, optimizer eager, compile
  seconds in parentheses ({compile_policy_text(args)}).
- JAX compile s: lower + compile of the step; "(cached)" = loaded from the persistent
  compilation cache (`{args.cache_dir or 'off'}`), i.e. not a cold compile.
- GFLOP/step: XLA's cost analysis of the compiled JAX step (all of it: forward, backward,
  optimizer), or analytic (GRU/LSTM: 3 × forward matmul FLOPs, since XLA counts a
  while-loop body once). JAX GFLOP/s = GFLOP/step × steps/s; % of the jnp.dot peak.
- The torch Transformer/MoE twins compute dense T×T attention under a band mask (the
  original's way), the JAX models blockwise O(T·w) attention; the torch MoE runs every
  routed token (no capacity), the JAX MoE a capacity of 1.25 × the uniform share.
- {full_note}

min JAX/eager ratio {lowest:.2f}, geometric mean {geomean:.2f}{over}.
"""
  if len(rows) < total:
    notes = f"Partial: {len(rows)} of {total} rows measured so far.\n\n" + notes
  return notes, tab, lowest, geomean, missing


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="quick shapes only, fewer repeats (< 3 min on 2 cores)")
  p.add_argument("--models", default=",".join(MODELS),
                 help=f"comma-separated subset of {','.join(MODELS)}")
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"),
                 help="markdown file whose section '%s' is (re)written; '' = none" % SECTION)
  p.add_argument("--repeats", type=int, default=None,
                 help="timed runs per framework (default 11 with --quick, else 5)")
  p.add_argument("--target_s", type=float, default=None,
                 help="seconds per timed run (sets steps per run; default 0.4 quick, 1 full)")
  p.add_argument("--full_batch", type=int, default=0,
                 help="batch of the full-scale shapes (capped by the config's batch); "
                 "0 = 4 on a CPU, the config's batch on a GPU")
  p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                 help="where both frameworks run; auto = gpu when JAX and torch see one")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype of both (JAX train.dtype, torch autocast); "
                 "parameters and optimizer stay float32")
  p.add_argument("--torch_compile", choices=("auto", "all", "none"), default="auto",
                 help="time torch.compile too: auto = not under --quick (a cold inductor "
                 "compile takes 0.5-6 min per model on 2 cores) and not GRU/LSTM at full "
                 "shape (inductor unrolls the T=500 recurrence); all; none")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch intra-op threads; 0 = the faster of 1 and all cores, per model")
  p.add_argument("--cache_dir", default=os.path.join(
      os.path.expanduser("~"), ".cache", "jaxquant", "jax_compilation_cache"),
                 help="JAX persistent compilation cache ('' = off)")
  p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                 help="keep: freed memory stays in the process for both frameworks "
                 "(jaxquant.host_memory, as jaxquant.main does); default: glibc's own")
  args = p.parse_args(argv)
  from jaxquant import host_memory
  kept = args.malloc == "keep" and host_memory.keep_freed_memory()
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    p.error(f"unknown model(s) {unknown}; choose from {MODELS}")
  args.repeats = args.repeats or (11 if args.quick else 5)
  args.target_s = args.target_s or (0.25 if args.quick else 1.0)
  shapes = ["quick"] if args.quick else ["quick", "full"]
  args.device = resolve_device(args.device)

  if args.cache_dir:
    os.makedirs(args.cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  import torch

  t_start = time.time()
  cpu, cores = machine()
  gpu = torch.cuda.get_device_name() if args.device == "gpu" else None
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  log(f"{gpu + ' on ' if gpu else ''}{cpu}, {cores} cores, load {load:.1f}; "
      f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
      f"({torch.get_num_threads()} threads); {args.dtype}")
  peak_jax, peak_torch = matmul_peak(args.device, args.dtype)
  log(f"matmul peak: jnp.dot {peak_jax:.1f} GFLOP/s, torch.mm {peak_torch:.1f} GFLOP/s")

  command = "python benchmarks/train_step.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  run = {"t_start": t_start, "cpu": cpu, "cores": cores, "gpu": gpu, "load": load,
         "peak_jax": peak_jax, "peak_torch": peak_torch, "kept": kept, "command": command}
  todo = [(shape, model) for shape in shapes for model in models]
  rows = []
  for shape, model in todo:
    rows.append(bench_model(model, shape, args, args.cache_dir))
    notes, tab, lowest, geomean, missing = report(args, rows, len(todo), **run)
    if args.out:  # After every row: a run stopped part-way keeps what it measured.
      write_section(args.out, notes, subsection(args, gpu))
  print(tab)
  print()
  if args.out:
    log(f"wrote section '{SECTION}' of {args.out}")
  if missing:
    log(f"no JAX/eager ratio for {', '.join(missing)}: left out of min and geomean")
  print(f"min_jax_over_torch={lowest:.3f} geomean={geomean:.3f}")


if __name__ == "__main__":
  main()
