"""How far a test ROC-AUC wanders from 0.5 when there is nothing to find.

    python benchmarks/null_auc.py            # three test-split sizes, 8 markets each
    python benchmarks/null_auc.py --markets=4 --out=

On `signal=0` synthetic markets (i.i.d. fat-tailed returns: no feature carries
any information about the label) every fixed scorer has an expected test AUC of
exactly 0.5; what it scores on one test split is 0.5 plus noise. This measures
that noise without training anything: for each of N independent markets
(synth seeds 0..N-1) and each of 12 fixed scorers (every feature's last value
and its mean over the last 16 bars, in the window of the GRU quick config), the
test-split AUC. The spread over markets is the honest error bar of a single
test AUC. Labels of neighbouring windows overlap (horizon 15) and features are
persistent, so it is far wider than the i.i.d. formula suggests, and it shrinks
only with the length of the test period.

Use it to size a test split: a "no skill" check with a tolerance of ±0.03 needs
a spread (standard deviation) of at most ~0.01.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

# (trading days, test fraction): the default market, the 120-day one, and 240 days
# with half of them held out for test (the no-signal check of the recipe table).
SETTINGS = ((30, 0.15), (120, 0.15), (240, 0.5))


def test_aucs(days, test_fraction, seed, root):
  """AUC of each fixed scorer on the test split of one signal=0 market."""
  from configs import gru
  from jaxquant.data import dataset as dataset_lib
  c = gru.get_config("quick")
  c.data.synth.signal, c.data.synth.days, c.data.synth.seed = 0.0, days, seed
  c.data.test_fraction = test_fraction
  c.data.dir = os.path.join(root, f"d{days}-s{seed}")
  ds = dataset_lib.build_dataset(c.data, dataset_lib.ensure_data(c.data, log=lambda *a: None))
  test = ds.splits["test"]
  w = ds.windows("test", np.arange(len(test)))
  scores = [w[:, -1, k] for k in range(w.shape[2])] + [w[:, -16:, k].mean(1)
                                                       for k in range(w.shape[2])]
  return len(test), [roc_auc_score(test.labels, s) for s in scores]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--markets", type=int, default=8, help="independent markets per size")
  parser.add_argument("--out", default=os.path.join(ROOT, "docs", "evaluation.md"),
                      help="markdown file whose '## Chance AUC' section is replaced")
  args = parser.parse_args()
  t0 = time.time()
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for days, fraction in SETTINGS:
      aucs, n = [], 0
      for seed in range(args.markets):
        n, a = test_aucs(days, fraction, seed, root)
        aucs.append(a)
      a = np.asarray(aucs)  # [markets, scorers]
      dev = np.abs(a - 0.5)
      rows.append((days, fraction, n, a.std(ddof=1, axis=0).max(), a.std(ddof=1),
                   dev.max(), (dev > 0.03).mean()))
      print(rows[-1], flush=True)
  lines = [f"`python benchmarks/null_auc.py{'' if args.markets == 8 else f' --markets={args.markets}'}` "
           f"({time.time() - t0:.0f} s): {args.markets} independent signal=0 markets per row, "
           "12 fixed scorers (each feature's last value and 16-bar mean), no training.", "",
           "| days | test fraction | test windows | SD of test AUC (worst scorer) | SD (all scorers) "
           "| largest abs(AUC - 0.5) | share beyond 0.5 ± 0.03 |", "|---:|---:|---:|---:|---:|---:|---:|"]
  lines += [f"| {d} | {f:.2f} | {n:,} | {s1:.4f} | {s2:.4f} | {m:.3f} | {p:.1%} |"
            for d, f, n, s1, s2, m, p in rows]
  lines += ["", "A test AUC is a sample: on the default 30-day market a model with no skill at "
            "all can score 0.45 or 0.55. Read it with its block-bootstrap interval "
            "(report.json, `eval.bootstrap`), and size the test period so that the spread "
            "is small against the effect you look for."]
  body = "\n".join(lines) + "\n"
  print(body)
  if args.out:
    from jaxquant import io_utils
    io_utils.replace_markdown_section(args.out, "## Chance AUC on data with no signal", body,
                                      title="Evaluation")


if __name__ == "__main__":
  main()
