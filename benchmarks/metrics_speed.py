"""How long the binary metrics take on validation/test-sized score vectors.

    python benchmarks/metrics_speed.py                 # 1e4, 1e5, 1e6 scores, best of 5
    python benchmarks/metrics_speed.py --sizes=1000000 --repeats=3

Times `jaxquant.metrics` on imbalanced labels (7 % positives) with weakly informative
scores, the shape of a real validation split: `best_f1_threshold` (the threshold search
run after every epoch), `roc_auc`, `pr_auc` and `summarize` at a fixed threshold. Each
cell is the best of `--repeats` wall-clock runs (the least disturbed by other work on
shared cores). Prints a markdown table; `--out=FILE` also replaces that file's
"## Metrics speed" section with it. (The wall-clock bound used to be an assertion in
tests/test_metrics.py, where shared CI cores made it either loose or flaky.)
"""

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from jaxquant import metrics as M  # noqa: E402


def _data(n, seed=0):
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < 0.07).astype(int)
  return y, rng.random(n) + 0.3 * y


def _best_of(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


FUNCTIONS = {
    "best_f1_threshold": lambda y, s: M.best_f1_threshold(y, s, min_rate=0.001),
    "roc_auc": M.roc_auc,
    "pr_auc": M.pr_auc,
    "summarize": lambda y, s: M.summarize(y, s, 0.5),
}


def measure(sizes, repeats):
  """{n: {function name: best seconds}}."""
  out = {}
  for n in sizes:
    y, s = _data(n)
    out[n] = {name: _best_of(lambda f=f: f(y, s), repeats) for name, f in FUNCTIONS.items()}
  return out


def to_markdown(table, repeats, command):
  lines = [f"`{command}`: best of {repeats} runs, {platform.machine()}, {os.cpu_count()} cores, "
           f"load average {os.getloadavg()[0]:.1f}. Seconds per call.", "",
           "| scores | " + " | ".join(f"`{k}`" for k in FUNCTIONS) + " |",
           "|---:|" + "---:|" * len(FUNCTIONS)]
  for n, row in table.items():
    lines.append(f"| {n:,} | " + " | ".join(f"{row[k]:.4f}" for k in FUNCTIONS) + " |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="10000,100000,1000000",
                      help="comma-separated numbers of scores")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="",
                      help="markdown file whose '## Metrics speed' section is replaced")
  args = parser.parse_args()
  sizes = [int(x) for x in args.sizes.split(",") if x]
  command = "python benchmarks/metrics_speed.py" + "".join(
      f" --{k}={getattr(args, k)}" for k in ("sizes", "repeats")
      if getattr(args, k) != parser.get_default(k))
  md = to_markdown(measure(sizes, args.repeats), args.repeats, command)
  print(md)
  if args.out:
    from jaxquant import io_utils
    io_utils.replace_markdown_section(args.out, "## Metrics speed", md, title="Performance")


if __name__ == "__main__":
  main()
