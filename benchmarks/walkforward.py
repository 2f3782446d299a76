"""The walk-forward runs of the README's default config, into docs/walkforward.md.

    python benchmarks/walkforward.py                   # both runs (tens of minutes on 2 cores)
    python benchmarks/walkforward.py --only=expanding  # or --only=cpcv
    python benchmarks/walkforward.py --out=            # print only

Runs, each in a fresh workdir and timed end to end (data, every fold's training and
evaluation, the pooled results):
    python -m jaxquant.walkforward --config=configs/moe.py:quick --folds=5
    python -m jaxquant.walkforward --config=configs/moe.py:quick --folds=6 --scheme=cpcv \
        --test_groups=2
and writes each walkforward.md (and its stability plot) under a section of
docs/walkforward.md, with the wall time and the machine's CPU count.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

RUNS = {
    "expanding": ["--folds=5"],
    "cpcv": ["--folds=6", "--scheme=cpcv", "--test_groups=2"],
}
HEADINGS = {"expanding": "## 5-fold expanding walk-forward of the README's default run",
            "cpcv": "## CPCV (N=6, K=2) of the README's default run"}


def run(name, workdir, config="configs/moe.py:quick"):
  """Runs one walk-forward from scratch; returns (walkforward.md text, wall seconds)."""
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "-m", "jaxquant.walkforward", f"--config={config}",
         f"--workdir={workdir}", *RUNS[name]]
  t0 = time.time()
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  seconds = time.time() - t0
  if p.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
  with open(os.path.join(workdir, "walkforward.md")) as f:
    return f.read(), seconds, " ".join(["python -m jaxquant.walkforward",
                                        f"--config={config}", *RUNS[name]])


def section(md, seconds, command, figure):
  """The docs section: the command, its wall time, then walkforward.md one level down."""
  body = md.split("\n", 1)[1].strip()  # Without its own title.
  body = body.replace("](walkforward.png)", f"]({figure})").replace("\n## ", "\n### ")
  return (f"`{command}`: {seconds / 60:.1f} min wall time end to end on {os.cpu_count()} "
          f"CPU cores (load average {os.getloadavg()[0]:.1f} at the end; the compilation "
          f"cache as it was) (`python benchmarks/walkforward.py`).\n\n{body}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=sorted(RUNS), default=None)
  parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench-walkforward"))
  parser.add_argument("--out", default=os.path.join(ROOT, "docs", "walkforward.md"))
  args = parser.parse_args()
  from jaxquant import io_utils
  for name in [args.only] if args.only else list(RUNS):
    workdir = os.path.join(args.workdir, name)
    md, seconds, command = run(name, workdir)
    figure = f"images/walkforward-{name}.png"
    body = section(md, seconds, command, figure)
    print(body, flush=True)
    if args.out:
      target = os.path.join(os.path.dirname(args.out), figure)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copyfile(os.path.join(workdir, "walkforward.png"), target)
      io_utils.replace_markdown_section(args.out, HEADINGS[name], body, title="Walk-forward")


if __name__ == "__main__":
  main()
