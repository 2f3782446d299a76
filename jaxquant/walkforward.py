"""Walk-forward and combinatorial purged cross-validation of one config.

python -m jaxquant.walkforward --config=configs/moe.py:quick --workdir=runs/wf --folds=5 \
    [--scheme=expanding|rolling|cpcv] [--test_groups=2] [--config.KEY=VALUE ...]

Each fold is an ordinary run in DIR/fold_NN (config.data.fold names its groups: see
data/folds.py for the geometry, purge and embargo): its own normaliser, best-F1 checkpoint
and validation threshold, its test predictions. Then the folds' test predictions are pooled
(DIR/oos_predictions.csv) and summarised in DIR/walkforward.json, walkforward.md and
walkforward.png. Re-running the same command after an interruption skips finished folds and
resumes the interrupted one at its batch; the results equal an uninterrupted run's.
"""

import json
import math
import os
import time

from absl import flags
from ml_collections import config_flags
import numpy as np
from tqdm import tqdm

from jaxquant import cli
from jaxquant import config_check
from jaxquant import io_utils
from jaxquant import walkforward_report as report
from jaxquant.data import folds as folds_lib

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs as a program: jaxquant.main and
  jaxquant.compare define flags of the same names, and a process may import all three."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/moe.py:quick; override fields with "
      "--config.train.epochs=3 (as jaxquant.main).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where the folds' runs and the walk-forward results go.")
  flags.DEFINE_integer("folds", 5, "Test periods (expanding, rolling) or groups (cpcv).")
  flags.DEFINE_enum("scheme", "expanding", list(folds_lib.SCHEMES),
                    "expanding or rolling walk-forward, or cpcv (combinatorial purged CV).")
  flags.DEFINE_integer("test_groups", 2, "cpcv: K test groups per fold (every choice of K).")
  flags.DEFINE_bool("force", False, "Go on in a workdir whose walk-forward had other "
                    "settings (normally refused).")


WARM_STARTS = ("none", "full", "heads", "lora")
PLAN_FILE = "walkforward_plan.json"
BACKTEST_KEYS = ("trades", "win_rate", "profit_loss_ratio", "expectancy", "net_return",
                 "sharpe", "sharpe_ci", "max_drawdown", "dsr")


def fold_dir(workdir, i):
  return os.path.join(workdir, f"fold_{i:02d}")


def fold_configs(config, scheme, n, k, workdir):
  """One config per fold: (run directory, config, plan entry) in fold order.

  Raises:
    ValueError: bad scheme/folds/test_groups, or a warm start that would leak or cannot
      be built (cpcv folds train on each other's test groups; lora needs adapters).
  """
  warm = config.walkforward.warm_start
  if warm not in WARM_STARTS:
    raise ValueError(f"config.walkforward.warm_start={warm!r}: use one of "
                     f"{', '.join(WARM_STARTS)}")
  if warm != "none" and scheme == "cpcv":
    raise ValueError(f"config.walkforward.warm_start={warm!r} with --scheme=cpcv would leak: "
                     "a cpcv fold's predecessor trained on this fold's test groups; use 'none'")
  if warm == "lora" and not config.model.get("lora_rank", 0):
    raise ValueError("config.walkforward.warm_start='lora' needs adapters: set "
                     "--config.model.lora_rank=R (R > 0; transformer and moe models)")
  if config.data.source == "samples":
    raise ValueError("jaxquant.walkforward needs bars: data.source='samples' has no "
                     "timeline to cut into folds")
  if config.train.init_from and warm != "none":
    raise ValueError(f"config.train.init_from={config.train.init_from!r} and "
                     f"walkforward.warm_start={warm!r}: choose one")
  out = []
  for i, f in enumerate(folds_lib.plan(scheme, n, k, config.walkforward.train_groups)):
    c = config.copy_and_resolve_references()
    c.data.fold = json.dumps({"groups": f["groups"], "test": f["test"], "train": f["train"]})
    c.name = f"{config.name}-fold{i:02d}"
    if warm != "none" and i > 0:  # From the previous fold's best checkpoint.
      c.train.init_from = fold_dir(workdir, i - 1)
      c.train.trainable = {"full": c.train.trainable, "heads": "heads", "lora": "lora"}[warm]
    config_check.validate(c)
    out.append((fold_dir(workdir, i), c, f))
  return out


def _check_plan(workdir, plan, force):
  """Refuses to mix two walk-forwards in one workdir; records this one's settings."""
  path = os.path.join(workdir, PLAN_FILE)
  if os.path.exists(path) and not force:
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
    if diff:
      raise ValueError(f"{workdir} holds a walk-forward with other settings ({', '.join(diff)} "
                       "differ); use another --workdir, or --force to go on under these")
  io_utils.atomic_write_json(path, plan)


def _fold_record(i, f, summary, seconds):
  d, t = summary["data"], summary["test"]
  boot = t.get("bootstrap") or {}
  ci = lambda m: [boot[m]["lo"], boot[m]["hi"]] if m in boot else None
  bt = t.get("backtest")
  return {"fold": i, "test_groups": f["test"], "train_groups": f["train"],
          **{s: d["fold"]["periods"][s] for s in ("train", "val", "test")},
          "windows": {s: d["splits"][s]["windows"] for s in ("train", "val", "test")},
          "positive_rate": {s: d["splits"][s]["positive_rate"] for s in ("train", "val", "test")},
          "threshold": summary["threshold"], "best_epoch": summary["best_epoch"],
          "collapsed": bool(summary["all_checkpoints_collapsed"] or t["collapsed"]),
          "roc_auc": t["roc_auc"], "roc_auc_ci": ci("roc_auc"), "pr_auc": t["pr_auc"],
          "f1": t["f1"], "precision": t["precision"], "precision_ci": ci("precision"),
          "mcc": t["mcc"], "backtest": {k: bt[k] for k in BACKTEST_KEYS if k in bt} if bt else None,
          "seconds": round(seconds, 1)}


def _load_predictions(run_dir, i, edges):
  from jaxquant import evaluate  # (JAX loads after the flags are checked.)
  z = evaluate.load_split_predictions(run_dir, "test")
  cols = {k: z[k] for k in ("instrument", "timestamp", "probability", "label",
                            "forward_return")}
  threshold = float(z["threshold"])
  cols["fold"] = np.full(len(cols["label"]), i, np.int64)
  cols["decision"] = (cols["probability"] >= threshold).astype(np.int64)
  cols["group"] = np.searchsorted(np.asarray(edges, np.int64), cols["timestamp"], "right") - 1
  return cols


def _concat(parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _figures(cols, config, copies=1):
  """`copies`: predictions per window (cpcv tests each window in several folds): they are
  sorted next to each other and bootstrapped in blocks that many times longer, so the
  interval is not narrowed by counting one window several times."""
  if copies > 1:
    order = np.lexsort((cols["fold"], cols["timestamp"], cols["instrument"]))
    cols = {k: v[order] for k, v in cols.items()}
  return report.oos_figures(cols["label"], cols["probability"], cols["decision"],
                            copies * (config.data.window + config.data.horizon),
                            config.eval.bootstrap, config.train.seed)


def summarize_folds(config, scheme, n, k, runs, preds, seconds):
  """walkforward.json's content from the folds' records and test predictions."""
  records = [r for r, _ in runs]
  pooled = _concat(preds)
  result = {"config_name": config.name, "scheme": scheme, "folds_requested": n,
            "groups": folds_lib.num_groups(scheme, n), "test_groups": k if scheme == "cpcv"
            else 1, "warm_start": config.walkforward.warm_start,
            "embargo": config.data.embargo, "seconds": round(seconds, 1),
            "folds": records,
            "oos": _figures(pooled, config, math.comb(n - 1, k - 1) if scheme == "cpcv" else 1)}
  above = [r["roc_auc_ci"][0] > 0.5 for r in records if r["roc_auc_ci"]]
  result["folds_above_chance"] = sum(above) if len(above) == len(records) else None
  if scheme == "cpcv":
    per_path = []
    for path in folds_lib.cpcv_paths(n, k):
      parts = [{c: v[(p["group"] == g)] for c, v in p.items()}
               for g, fold in enumerate(path) for p in [preds[fold]]]
      per_path.append(_figures(_concat(parts), config))
    result["paths"] = report.path_distribution(per_path)
    result["paths"]["n"] = len(per_path)
  return result, pooled


def walk_forward(config, workdir, scheme="expanding", n=5, k=2, force=False, log=print):
  """Trains and evaluates every fold (skipping finished ones), then writes the results.

  Returns:
    The walkforward.json dict.
  Raises:
    train.Preempted: a signal stopped a fold; it saved its place (re-run to go on).
  """
  from jaxquant import train  # JAX loads after the flags are checked.
  fold_list = fold_configs(config, scheme, n, k, workdir)
  os.makedirs(workdir, exist_ok=True)
  _check_plan(workdir, {"scheme": scheme, "folds": n, "test_groups": k if scheme == "cpcv"
                        else None, "config": json.loads(config.to_json_best_effort())}, force)
  t0, runs, preds = time.time(), [], []
  bar = tqdm(fold_list, desc="folds", unit="fold", disable=None)
  for i, (run_dir, c, f) in enumerate(bar):
    path = os.path.join(run_dir, "report.json")
    if os.path.exists(path):  # Finished earlier: never retrained.
      with open(path) as fh:
        summary = json.load(fh)
    else:
      log(f"=== fold {i + 1}/{len(fold_list)} (test groups {f['test']} of {f['groups']}) "
          f"→ {run_dir}")
      try:
        summary = train.train_and_evaluate(c, run_dir)
      except ValueError as e:  # Which fold, with its own reason.
        raise ValueError(f"fold {i + 1}/{len(fold_list)} (test groups {f['test']} of "
                         f"{f['groups']}, {run_dir}): {e}") from None
      except cli.Interrupted as e:  # The earlier folds are kept all the same.
        raise cli.Interrupted(e.signame, f"fold {i + 1}/{len(fold_list)}: {e}; the {i} "
                              "finished fold(s) are kept: re-run the same command to go on"
                              ) from None
    runs.append((_fold_record(i, f, summary, summary.get("train_seconds") or 0.0), summary))
    preds.append(_load_predictions(run_dir, i, summary["data"]["fold"]["edges"]))
    bar.write(report.fold_line(runs[-1][0], len(fold_list)))
  # The folds' own training time (a resumed fold's too), not this invocation's.
  seconds = sum(r["seconds"] for r, _ in runs) or time.time() - t0
  result, pooled = summarize_folds(config, scheme, n, k, runs, preds, seconds)
  report.write_oos_csv(os.path.join(workdir, "oos_predictions.csv"), pooled)
  log(report.write(workdir, result))
  return result


def main(argv):
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  if len(argv) > 1 + len(overrides):
    cli.fail(f"unexpected arguments {[a for a in argv[1:] if a not in overrides]}")
  if not FLAGS.workdir:
    cli.fail("--workdir=DIR is required")
  config = config_check.loaded(FLAGS.config)
  from jaxquant import train
  try:
    walk_forward(config, FLAGS.workdir, FLAGS.scheme, FLAGS.folds, FLAGS.test_groups,
                 FLAGS.force)
  except train.Preempted:
    return  # The fold saved its place and said so: re-run the same command to go on.


if __name__ == "__main__":
  define_flags()
  cli.run(main, positional=True)
