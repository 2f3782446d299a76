"""Train several configs (x several seeds), or a grid of one config's settings, and tabulate.

python -m jaxquant.compare --configs=configs/recipes/focal_pl.py:quick,configs/recipes/dice.py:quick \
    --workdir=runs/compare --seeds=3 [--set=data.synth.signal=0]
python -m jaxquant.compare --config=configs/gru.py:quick --grid='loss.alpha=["1,4","1,8"]' \
    --grid='loss.gamma=[0,1,2]' --seeds=2 --workdir=runs/sweep [--ensemble=3] [--nopopulation]

A grid trains every combination × seeds; members that share model shapes and data train
together as one population in one compiled step (jaxquant/sweep.py). compare.json then lists
every member and the one `selected` on validation F1 alone (its test figures are the
result), the Probability of Backtest Overfitting over the members (`pbo`), and with
--ensemble=K the top-K members averaged and evaluated like one run (DIR/ensemble/).

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
flags.DEFINE_string("config", None, "One config file (with :variant) whose --grid settings "
                    "are swept.")
flags.DEFINE_multi_string("grid", [], "KEY=JSON_LIST, e.g. loss.gamma=[0,1,2] (repeatable): "
                          "every combination of the values x --seeds is trained.")
flags.DEFINE_integer("ensemble", 0, "--grid: also average the probabilities of the top K "
                     "members by validation F1 and evaluate them as one run.")
flags.DEFINE_bool("population", True, "--grid: train members that share model shapes and data "
                  "together in one compiled step (--nopopulation: one run after another).")
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


def compare_grid(spec, grid_specs, workdir, seeds, overrides=(), ensemble=0,
                 use_populations=True):
  """Trains the grid × seeds (populations where they can be) and writes compare.json/.md,
  the sweep plots and, with `ensemble`, DIR/ensemble/."""
  from jaxquant import selection
  from jaxquant import sweep
  from jaxquant import sweep_plots
  base = load_config_file(spec)
  for o in overrides:
    apply_override(base, o)
  config_check.validate(base)
  grid = sweep.parse_grid(grid_specs)
  entries = sweep.member_configs(base, grid, seeds)
  configs = [c for _, c, _ in entries]
  workdirs = [os.path.join(workdir, name) for name, _, _ in entries]
  t0 = time.time()
  summaries, seconds, where = sweep.train_members(configs, workdirs, use_populations)
  members = [sweep.member_record(n, st, s, wd, sec, g) for (n, _, st), s, wd, sec, g
             in zip(entries, summaries, workdirs, seconds, where)]
  table = {}
  for i, (name, _, settings) in enumerate(entries):
    point = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "train.seed") or spec
    table.setdefault(point, []).append(summarize_run(summaries[i], seconds[i]))
  table = {point: aggregate(rows) for point, rows in table.items()}
  selected = selection.select_member(members)
  pbo = sweep.probability_of_overfitting(workdirs, [m["threshold"] for m in members])
  ens = (sweep.build_ensemble(members, ensemble, configs, os.path.join(workdir, "ensemble"))
         if ensemble else None)
  figures = sweep_plots.plot_sweeps(members, workdir) if len(members) > 1 else []
  result = {"config": spec, "grid": dict(grid), "seeds": seeds, "overrides": list(overrides),
            "populations": max(where) + 1, "seconds": round(time.time() - t0, 1),
            "members": members, "selected": selected, "pbo": pbo, "table": table,
            "ensemble": {k: ens[k] for k in ("ensemble", "threshold", "val", "test")}
            if ens else None}
  io_utils.atomic_write_json(os.path.join(workdir, "compare.json"), result)
  md = grid_markdown(result, seeds, figures)
  io_utils.atomic_write_text(os.path.join(workdir, "compare.md"), md)
  print(md, flush=True)
  return result


def grid_markdown(result, seeds, figures):
  """compare.md of a grid sweep: the table per setting, the selection, PBO, plots."""
  from jaxquant import selection
  sel, pbo = result["selected"], result["pbo"]
  m = result["members"]
  lines = [f"# Sweep of {result['config']}: {len(m)} members in {result['populations']} "
           f"compiled population(s) or runs, {result['seconds'] / 60:.1f} min", "",
           to_markdown(result["table"], seeds), "## Selected on validation F1 alone", "",
           f"**{m[sel['index']]['name']}** ({sel['reason']}): val F1 {sel['val']['f1']:.3f}; "
           f"its test figures are the result: ROC-AUC {sel['test']['roc_auc']:.3f}, PR-AUC "
           f"{sel['test']['pr_auc']:.3f} (prior {sel['test']['prior']:.3f}), F1 "
           f"{sel['test']['f1']:.3f}, precision {sel['test']['precision']:.3f}; Deflated "
           f"Sharpe {_fmt(sel['test'].get('dsr'))} with {len(m)} trials.", "",
           selection.rank_markdown(m), ""]
  if pbo.get("pbo") is None:
    lines.append(f"Probability of Backtest Overfitting: not measured ({pbo['reason']}).")
  else:
    lines.append(f"Probability of Backtest Overfitting (CSCV, {pbo['n_splits']} blocks, "
                 f"{pbo['combinations']} combinations; {pbo['performance']}): "
                 f"**{pbo['pbo']:.2f}** (0.5 is what picking among equals by luck gives).")
  if result["ensemble"]:
    e = result["ensemble"]
    lines += ["", f"Ensemble of the top {e['ensemble']['k']} by validation F1 "
              f"({', '.join(e['ensemble']['members'])}): test ROC-AUC {e['test']['roc_auc']:.3f}"
              f", PR-AUC {e['test']['pr_auc']:.3f}, F1 {e['test']['f1']:.3f}; "
              "ensemble/report.md."]
  lines += [""] + [f"![{f}]({f})" for f in figures]
  return "\n".join(lines) + "\n"


def _fmt(x):
  return "—" if x is None or x != x else f"{x:.3f}"


def main(argv):
  del argv
  if FLAGS.seeds < 1:
    cli.fail(f"--seeds={FLAGS.seeds} must be >= 1")
  if not FLAGS.workdir or not (FLAGS.configs or FLAGS.config):
    cli.fail("--workdir=DIR and --configs=A,B,... (or --config=A --grid=KEY=[...]) are "
             "required")
  if FLAGS.configs and (FLAGS.config or FLAGS.grid):
    cli.fail("--configs compares whole configs; --config with --grid sweeps one: not both")
  if FLAGS.ensemble and not FLAGS.config:
    cli.fail("--ensemble=K needs a sweep: --config=FILE --grid=KEY=[...]")
  from jaxquant import train
  try:
    if FLAGS.config:
      compare_grid(FLAGS.config, FLAGS.grid, FLAGS.workdir, FLAGS.seeds, FLAGS.set,
                   FLAGS.ensemble, FLAGS.population)
    else:
      compare(FLAGS.configs, FLAGS.workdir, FLAGS.seeds, FLAGS.set)
  except train.Preempted:
    return  # The interrupted run saved its checkpoint and said so: re-run to go on.


if __name__ == "__main__":
  cli.run(main)
