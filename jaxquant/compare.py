"""Train several configs (x several seeds) on the same data and tabulate the results.

python -m jaxquant.compare --configs=configs/recipes/focal_pl.py:quick,configs/recipes/dice.py:quick \
    --workdir=runs/compare --seeds=3 [--set=data.synth.signal=0]

Writes DIR/compare.json and DIR/compare.md: val/test ROC-AUC, PR-AUC, MCC and
F1/precision/recall at the validation-chosen threshold, as mean ± std over seeds,
wall time per run, and how many runs collapsed. Results that don't reproduce
across seeds are the commonest complaint about published model zoos: show the spread.
Re-running the same command after an interruption resumes: finished runs are
re-evaluated, not retrained, and an interrupted one continues where it stopped.
"""

import json
import os
import time

from absl import flags
from ml_collections import config_flags
import numpy as np

from jaxquant import cli
from jaxquant import config_check
from jaxquant import io_utils

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Comma-separated config files (with :variant).")
flags.DEFINE_string("workdir", None, "Where each run and the comparison table go.")
flags.DEFINE_integer("seeds", 1, "Runs per config, with train.seed = 0..seeds-1.")
flags.DEFINE_multi_string("set", [], "Override for every config: key=value, e.g. "
                          "data.synth.signal=0 (repeatable).")

METRICS = ("roc_auc", "pr_auc", "mcc", "f1", "precision", "recall")


def load_config_file(spec):
  """A config from 'path.py[:variant]', as --config=... would load it."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ValueError(f"--configs: {path} does not exist")
  module = config_flags.config_flags._LoadConfigModule(f"compare_{abs(hash(spec))}", path)
  return module.get_config(arg) if arg else module.get_config()


def apply_override(config, assignment):
  """Applies one --set=key=value to a config."""
  key, sep, value = assignment.partition("=")
  if not sep:
    raise ValueError(f"--set={assignment!r}: expected key=value")
  try:
    config_check.set_value(config, key, value)
  except config_check.ConfigError as e:
    raise ValueError(f"--set={assignment!r}: {e}") from None


def summarize_run(summary, seconds):
  row = {"seconds": round(seconds, 1), "collapsed": bool(summary["all_checkpoints_collapsed"]),
         "stop_reason": summary.get("stop_reason")}
  for split in ("val", "test"):
    r = summary[split]
    for m in METRICS:
      row[f"{split}_{m}"] = r[m]  # MCC too: metrics.summarize puts it in every report.
    row[f"{split}_prior"] = r["prior"]
  ci = summary["test"].get("bootstrap", {}).get("roc_auc")
  row["test_roc_auc_ci"] = [ci["lo"], ci["hi"]] if ci else None
  return row


def aggregate(rows):
  out = {"runs": len(rows), "collapsed_runs": sum(r["collapsed"] for r in rows),
         "seconds_mean": float(np.mean([r["seconds"] for r in rows]))}
  cis = [r["test_roc_auc_ci"] for r in rows if r.get("test_roc_auc_ci")]
  out["test_roc_auc_cis"] = cis
  # Runs whose test AUC interval excludes chance (0.5) from below: evidence of skill.
  out["runs_above_chance"] = sum(lo > 0.5 for lo, _ in cis) if cis else None
  for key in rows[0]:
    if key.startswith(("val_", "test_")) and key != "test_roc_auc_ci":
      values = np.asarray([r[key] for r in rows], np.float64)
      # One run has no spread to show: None (— in the table), not a reassuring 0.
      out[key] = {"mean": float(np.nanmean(values)),
                  "std": float(np.nanstd(values, ddof=1)) if len(values) > 1 else None}
  return out


def to_markdown(table, seeds):
  cols = [f"{s}_{m}" for s in ("val", "test") for m in METRICS]
  head = ["config", "runs", "collapsed", "s/run"] + [c.replace("_", " ") for c in cols]
  head += ["test ROC-AUC 95% CI per run", "runs above chance"]
  lines = [f"Mean ± std over {seeds} seed(s); F1, precision and recall at the threshold "
           "chosen on validation; MCC from the same confusion matrix. Test ROC-AUC intervals: "
           "block bootstrap of each run's test split; a run is above chance when its whole "
           "interval is above 0.5.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, agg in table.items():
    cells = [name, str(agg["runs"]), str(agg["collapsed_runs"]), f"{agg['seconds_mean']:.0f}"]
    cells += [f"{agg[c]['mean']:.3f} ± {agg[c]['std']:.3f}" if agg[c]["std"] is not None
              else f"{agg[c]['mean']:.3f} ± —" for c in cols]
    cis = agg.get("test_roc_auc_cis") or []
    cells.append(" ".join(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in cis) or "n/a (eval.bootstrap=0)")
    above = agg.get("runs_above_chance")
    cells.append("n/a" if above is None else f"{above}/{agg['runs']}")
    lines.append("| " + " | ".join(cells) + " |")
  prior = next(iter(table.values()))
  lines += ["", f"Test prior (the PR-AUC and precision of a random model): "
            f"{prior['test_prior']['mean']:.3f}; ROC-AUC of a random model: 0.5."]
  return "\n".join(lines) + "\n"


def compare(specs, workdir, seeds, overrides=()):
  from jaxquant import train
  configs = {}
  for spec in specs:
    c = load_config_file(spec)
    for o in overrides:
      apply_override(c, o)
    config_check.validate(c)
    configs[spec] = c
  table, runs = {}, {}
  for spec, base in configs.items():
    rows = []
    for seed in range(seeds):
      c = base.copy_and_resolve_references()
      c.train.seed = seed
      c.eval.trials = len(configs) * seeds  # The Deflated Sharpe's N: every run compared.
      run_dir = os.path.join(workdir, f"{c.name}-seed{seed}")
      print(f"=== {spec} seed {seed} → {run_dir}", flush=True)
      t0 = time.time()
      # A run finished by an earlier (e.g. interrupted) comparison is only re-evaluated
      # (train_and_evaluate resumes it): keep its original training time.
      previous = os.path.join(run_dir, "report.json")
      seconds = None
      if os.path.exists(previous):
        with open(previous) as f:
          seconds = json.load(f).get("train_seconds")
      summary = train.train_and_evaluate(c, run_dir)
      rows.append(summarize_run(summary, seconds or time.time() - t0))
    runs[spec] = rows
    table[spec] = aggregate(rows)
  io_utils.atomic_write_json(os.path.join(workdir, "compare.json"),
                             {"seeds": seeds, "overrides": list(overrides), "table": table,
                              "runs": runs})
  md = to_markdown(table, seeds)
  io_utils.atomic_write_text(os.path.join(workdir, "compare.md"), md)
  print(md, flush=True)
  return table


def main(argv):
  del argv
  if not FLAGS.configs or not FLAGS.workdir:
    cli.fail("--configs=A,B,... and --workdir=DIR are required")
  if FLAGS.seeds < 1:
    cli.fail(f"--seeds={FLAGS.seeds} must be >= 1")
  from jaxquant import train
  try:
    compare(FLAGS.configs, FLAGS.workdir, FLAGS.seeds, FLAGS.set)
  except train.Preempted:
    return  # The interrupted run saved its checkpoint and said so: re-run to go on.


if __name__ == "__main__":
  cli.run(main)
