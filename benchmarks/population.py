"""Population step throughput: K members in one compiled step against K single steps.

    python benchmarks/population.py --quick           # minutes on 2 cores
    python benchmarks/population.py --no-sweep        # the step table only
    python benchmarks/population.py --strategies=vmap,loop,map --ks=1,4 --no-docs
    python benchmarks/population.py --lanes=1,2 --no-sweep --no-docs   # lanes' gain

For the quick GRU (configs/gru.py:quick) and the quick Transformer
(configs/transformer.py:quick), K = 1, 4, 16 members (each its own seed, learning rate,
class weights "1,w", focal gamma and return weight) on random batches of the quick
shape (T=64, batch 128, one batch per member):

- population: `jaxquant.population`'s step (member_step.make_member_step under
  make_population_step with the chosen strategy, default "auto": lax.map on a CPU,
  vmap elsewhere), jitted as setup_population jits it (the Runner's compiler options;
  on a CPU the members split into lanes, one per core, each lane the same program on
  its slice of the members called from its own thread: jaxquant/lanes.py; one lane
  donates the states);
- sequential: the single run's step (`jaxquant.steps.make_train_step`, jitted the same
  way), called K times one after another, member k on member k's batch. One compile
  serves all K: a step's time does not depend on its numbers.

Both are compiled ahead of time (compile excluded and reported), warmed up, then timed
in alternation (one timed run of each per repeat, so a busy shared machine slows both
alike); the figures are medians over the repeats. samples/s per member = batch / the
time one member's step takes inside each (population step / K single steps each).

Then the whole sweep (`sweep`): 16 class weights "1,w" (w = 1..32) x 2 seeds of the quick
GRU through `python -m jaxquant.compare --grid=loss.alpha=[...] --seeds=2`, end to end from
an empty workdir, as one population and with --nopopulation (32 runs one after another in
one process), 2 epochs each; --quick sweeps 4 weights x 2 seeds for one epoch on a 12-day
market.

The tables go to stdout and into docs/performance.md as the sections "## Population step"
and "## Population sweep" (--no-docs: stdout only). The last line printed is
`population_speedup_k16=<population / sequential samples/s, GRU, K=16>
sweep_speedup=<separate runs' wall time / the population's>`.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

SECTION = "## Population step"
DOC = os.path.join(ROOT, "docs", "performance.md")
MODELS = ("gru", "transformer")
STEPS_PER_EPOCH = 100
_SINGLE = {}  # model -> (the single run's compiled step, its compile seconds).
_T0 = time.time()


def log(*a):
  print(f"[{time.time() - _T0:6.1f}s]", *a, file=sys.stderr, flush=True)


def member_configs(model, k):
  """K quick configs that differ in every number a population traces."""
  import importlib
  base = importlib.import_module(f"configs.{model}")
  out = []
  for i in range(k):
    c = base.get_config("quick")
    c.train.seed = i
    c.train.lr = 2e-3 * (1 + i % 4) / 2
    c.loss.alpha = f"1,{4 + i}"
    c.loss.gamma = float(i % 3)
    c.loss.return_weight = 0.5 * (i % 2)
    out.append(c)
  return out


def batches(config, k, num_features, seed=0):
  rng = np.random.default_rng(seed)
  b, t = config.train.batch_size, config.data.window
  x = rng.normal(size=(k, b, t, num_features)).astype(np.float32)
  y = (rng.random((k, b)) < 0.07).astype(np.int32)
  y[:, 0] = 1
  r = (rng.normal(size=(k, b)) * 0.005).astype(np.float32)
  return {"x": x, "y": y, "r": r}


def setups(model, k, strategy, num_features, lanes=None):
  """(population runner, sequential runner, compile seconds of each, batch, lanes)."""
  from jaxquant import lanes as lanes_lib
  from jaxquant import losses
  from jaxquant import member_step as member_step_lib
  from jaxquant import population
  from jaxquant import state as state_lib
  from jaxquant import steps as steps_lib
  from jaxquant import xla_options
  configs = member_configs(model, k)
  c = configs[0]
  net = state_lib.make_model(c, 2)
  tx, schedule = state_lib.make_optimizer(c.train, STEPS_PER_EPOCH)
  host = batches(c, k, num_features)
  alphas = [losses.class_weights(m.loss, host["y"][i], host["r"][i], 2)
            for i, m in enumerate(configs)]
  states = population.initial_states(net, tx, num_features, c.data.window,
                                     [m.train.seed for m in configs])
  member_step = member_step_lib.make_member_step(net, c, 2, STEPS_PER_EPOCH)
  step = population.make_population_step(member_step, strategy)
  hp, rngs = population.member_hparams(configs, alphas), population.member_rngs(configs)
  opts = xla_options.step_options()
  dev = jax.device_put(host)
  if lanes is None:  # As setup_population chooses them: one per core on a CPU.
    lanes = lanes_lib.lane_count(k, jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]))
  t0 = time.perf_counter()
  if lanes > 1:
    pop = lanes_lib.Lanes(step, k, lanes, (True,) * 4, opts).compile(states, dev, rngs, hp)
  else:
    pop = jax.jit(step, donate_argnums=0, compiler_options=opts).lower(
        states, dev, rngs, hp).compile()
  pop_compile = time.perf_counter() - t0

  single = steps_lib.make_train_step(net, tx, losses.make_loss_fn(c.loss, alphas[0]),
                                     schedule, c, 2, c.train.epochs * STEPS_PER_EPOCH)
  member_batches = [jax.device_put({n: v[i] for n, v in host.items()}) for i in range(k)]
  member_states = [jax.tree.map(lambda a, i=i: a[i], states) for i in range(k)]
  if model not in _SINGLE:  # One compile per model serves every K.
    t0 = time.perf_counter()
    _SINGLE[model] = (jax.jit(single, donate_argnums=0, compiler_options=opts).lower(
        member_states[0], member_batches[0], rngs[0]).compile(), time.perf_counter() - t0)
  seq, seq_compile = _SINGLE[model]
  box = {"pop": states, "seq": member_states}

  def run_pop(n):
    s = box["pop"]
    t0 = time.perf_counter()
    for _ in range(n):
      s, m = pop(s, dev, rngs, hp)
    jax.block_until_ready((s, m))
    box["pop"] = s
    return (time.perf_counter() - t0) / n

  def run_seq(n):
    ss = box["seq"]
    t0 = time.perf_counter()
    for _ in range(n):
      for i in range(k):
        ss[i], m = seq(ss[i], member_batches[i], rngs[i])
    jax.block_until_ready((ss, m))
    return (time.perf_counter() - t0) / n

  return run_pop, run_seq, pop_compile, seq_compile, c.train.batch_size, lanes


def bench(model, k, strategy, repeats, num_features, lanes=None):
  run_pop, run_seq, pop_c, seq_c, batch, lanes = setups(model, k, strategy, num_features, lanes)
  run_pop(2)
  run_seq(2)
  one = max(run_pop(1), 1e-4)
  n = max(1, int(round(0.2 / one)))  # Each timed run about 0.2 s.
  pops, seqs = [], []
  for _ in range(repeats):
    pops.append(run_pop(n))
    seqs.append(run_seq(n))
  t_pop, t_seq = statistics.median(pops), statistics.median(seqs)
  if strategy == "auto":
    strategy = f"auto ({'map' if jax.default_backend() == 'cpu' else 'vmap'})"
  return {"model": model, "k": k, "strategy": strategy, "lanes": lanes, "pop_ms": 1e3 * t_pop,
          "seq_ms": 1e3 * t_seq, "pop_sps": batch * k / t_pop, "seq_sps": batch * k / t_seq,
          "ratio": t_seq / t_pop, "pop_compile": pop_c, "seq_compile": seq_c,
          "ratios": sorted(s / p for s, p in zip(seqs, pops))}


def cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def table(rows):
  lines = ["| model | K | strategy | lanes | population step (ms) | K single steps (ms) | "
           "samples/s per member: population | samples/s per member: sequential | "
           "population / sequential (range) | compile s: population / single |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['k']} | {r['strategy']} | {r['lanes']} | {r['pop_ms']:.1f} | "
        f"{r['seq_ms']:.1f} | "
        f"{r['pop_sps'] / r['k']:,.0f} | {r['seq_sps'] / r['k']:,.0f} | "
        f"{r['ratio']:.2f}x ({r['ratios'][0]:.2f}-{r['ratios'][-1]:.2f}) | "
        f"{r['pop_compile']:.1f} / {r['seq_compile']:.1f} |")
  return "\n".join(lines)


# The class-weight "tightrope": positive-class weights 1..32, geometric, as "1,w".
TIGHTROPE = ["1,1", "1,1.5", "1,2", "1,3", "1,4", "1,5", "1,6", "1,8", "1,10", "1,12",
             "1,14.6", "1,17", "1,20", "1,24", "1,28", "1,32"]
SWEEP_SECTION = "## Population sweep"


def sweep_command(workdir, weights, seeds, sets, population):
  return [sys.executable, "-m", "jaxquant.compare", "--config=configs/gru.py:quick",
          "--grid=loss.alpha=" + json.dumps(weights), f"--seeds={seeds}",
          f"--workdir={workdir}", *[f"--set={s}" for s in sets],
          *([] if population else ["--nopopulation"])]


def sweep(quick, keep=None):
  """Wall time of one whole sweep (data, compiles, training, evaluation, reports) as one
  population and as separate runs one after another (`--nopopulation`, one process: the
  compile cache serves the runs after the first), each from an empty workdir."""
  weights = TIGHTROPE[::4] if quick else TIGHTROPE
  seeds = 2
  # The full sweep trains 2 of the config's 8 epochs: 32 members x 8 epochs twice over
  # would take hours on a 2-core CPU.
  sets = (["data.synth.days=12", "train.epochs=1", "eval.bootstrap=100"] if quick
          else ["train.epochs=2"])
  root = keep or tempfile.mkdtemp(prefix="population-sweep-")
  out = {"members": len(weights) * seeds, "weights": weights, "seeds": seeds, "sets": sets}
  data = [f"data.dir={os.path.join(root, 'data')}"] if quick else []
  if quick:  # The data is made once, before either sweep is timed.
    subprocess.run(sweep_command(os.path.join(root, "warm"), weights[:1], 1,
                                 sets + data + ["train.epochs=1"], True), cwd=ROOT,
                   check=True, capture_output=True)
  for population in (True, False):
    workdir = os.path.join(root, "population" if population else "separate")
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    p = subprocess.run(sweep_command(workdir, weights, seeds, sets + data, population),
                       cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
      raise SystemExit(f"sweep failed:\n{p.stderr[-3000:]}")
    out["population_s" if population else "separate_s"] = time.time() - t0
    out["population_dir" if population else "separate_dir"] = workdir
    log(f"sweep of {out['members']} members, population={population}: "
        f"{time.time() - t0:.0f} s")
  out["speedup"] = out["separate_s"] / out["population_s"]
  return out


def sweep_section(s, quick):
  what = (f"{len(s['weights'])} class weights ({', '.join(s['weights'])}) x {s['seeds']} seeds"
          f" of configs/gru.py:quick" + (f" with {' '.join(s['sets'])}" if s["sets"] else ""))
  return (f"`python benchmarks/population.py{' --quick' if quick else ''}`: the whole sweep "
          f"of {what} ({s['members']} members), end to end from an empty workdir (data "
          "loading, compiles, training, evaluation, reports), on "
          f"{os.cpu_count()} cores:\n\n| | wall time | ratio |\n|---|---:|---:|\n"
          f"| one population (`jaxquant.compare --grid`) | {s['population_s']:.0f} s | "
          f"{s['speedup']:.2f}x |\n| {s['members']} separate runs (`--nopopulation`) | "
          f"{s['separate_s']:.0f} s | 1.00x |\n")


def write_sweep_doc(s):
  """docs/sweep.md: the population sweep's compare.md, and its tightrope plot."""
  from jaxquant import io_utils
  docs = os.path.join(ROOT, "docs")
  os.makedirs(os.path.join(docs, "images"), exist_ok=True)
  with open(os.path.join(s["population_dir"], "compare.md")) as f:
    md = f.read()
  for name in os.listdir(s["population_dir"]):
    if name.startswith("sweep_") and name.endswith(".png"):
      shutil.copyfile(os.path.join(s["population_dir"], name),
                      os.path.join(docs, "images", name))
      md = md.replace(f"]({name})", f"](images/{name})")
  command = shlex.join(["python"] + sweep_command("DIR", s["weights"], s["seeds"], s["sets"],
                                                True)[1:])
  head = ("# The class-weight sweep\n\nWritten by `python benchmarks/population.py` (its "
          f"population run: `{command}`); {s['population_s'] / 60:.1f} min as one population, "
          f"{s['separate_s'] / 60:.1f} min as {s['members']} separate runs.\n\n")
  io_utils.atomic_write_text(os.path.join(docs, "sweep.md"),
                             head + md.split("\n", 1)[1].lstrip("\n"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer repeats (< 90 s on 2 cores)")
  p.add_argument("--ks", default="1,4,16", help="population sizes")
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--strategies", default="auto",
                 help="population.STRATEGIES to time (the first is the one the last line reports)")
  p.add_argument("--lanes", default="auto",
                 help="lanes of the population step (jaxquant/lanes.py), e.g. 1,2; auto = "
                 "one per core on a CPU, as a run takes them")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--no-docs", action="store_true", help=f"do not update {DOC}")
  p.add_argument("--no-sweep", action="store_true", help="only the step table")
  p.add_argument("--out", default=DOC, help="the markdown file the sections go to")
  p.add_argument("--sweep-dir", default=None, help="keep the sweeps' workdirs here")
  args = p.parse_args(argv)
  from jaxquant import host_memory
  from jaxquant.data import features
  host_memory.keep_freed_memory()  # As a run's steps do.
  num_features = len(features.FEATURE_NAMES)
  repeats = args.repeats or (5 if args.quick else 11)
  ks = [int(k) for k in args.ks.split(",")]
  strategies = args.strategies.split(",")
  lane_options = [None] if args.lanes == "auto" else [int(n) for n in args.lanes.split(",")]
  load0, t_start = os.getloadavg()[0], time.time()
  rows = []
  for model in args.models.split(","):
    for k in ks:
      for strategy in strategies:
        for lanes in lane_options:
          rows.append(bench(model, k, strategy, repeats, num_features, lanes))
          log(f"{model} K={k} {strategy} lanes={rows[-1]['lanes']}: {rows[-1]['ratio']:.2f}x")
  text = table(rows)
  head = (f"`python benchmarks/population.py{' --quick' if args.quick else ''}"
          f"{'' if args.strategies == 'auto' else ' --strategies=' + args.strategies}"
          f"{'' if args.lanes == 'auto' else ' --lanes=' + args.lanes}` "
          f"({time.time() - t_start:.0f} s): {cpu_name()}, "
          f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), load "
          f"average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Quick "
          "shapes (T=64, batch 128 per member), float32; medians of "
          f"{repeats} alternating timed runs after warm-up, compile excluded; range = lowest "
          "and highest ratio of one repeat.\n\n"
          "- population: one jitted step of K members (jaxquant.population, each member its "
          "own seed, lr, class weights, focal gamma, return weight as traced arrays), run as "
          "`lanes` concurrent slices of the members, one thread each (jaxquant/lanes.py; on a "
          "CPU one per core, as a run takes them); "
          "sequential: the single run's jitted step (steps.make_train_step) K times.\n"
          "- samples/s per member = batch / (population step / K), or batch / single step.\n")
  print(text)
  if not args.no_docs:
    from jaxquant import io_utils
    section = SECTION + ("" if jax.default_backend() == "cpu" else " on a GPU")
    io_utils.replace_markdown_section(args.out, section, head + "\n" + text + "\n",
                                      title="Performance")
    log(f"wrote the '{section}' section of {args.out}")
  first = [r for r in rows if r["model"] == "gru" and r["k"] == 16
           and r["strategy"].startswith(strategies[0])
           and lane_options[0] in (None, r["lanes"])]
  last = (f"population_speedup_k16={first[0]['ratio']:.2f}" if first
          else "population_speedup_k16=n/a")
  if not args.no_sweep:
    s = sweep(args.quick, args.sweep_dir)
    body = sweep_section(s, args.quick)
    print(body)
    if not args.no_docs:
      from jaxquant import io_utils
      io_utils.replace_markdown_section(args.out, SWEEP_SECTION, body, title="Performance")
      if not args.quick:
        write_sweep_doc(s)
    last += f" sweep_speedup={s['speedup']:.2f}"
  print(last)


if __name__ == "__main__":
  main()
