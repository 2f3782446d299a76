"""Restore a checkpoint and evaluate it: report.json, a printed summary, curves.

The decision threshold is the one chosen on validation and saved with the
checkpoint; the test split only ever has it applied.
"""

import json
import os

import jax
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from jaxquant import checkpoints as checkpoints_lib
from jaxquant import io_utils
from jaxquant import metrics as metrics_lib
from jaxquant import train as train_lib
from jaxquant.data import dataset as dataset_lib


def load_config(workdir):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no config.json: not a jaxquant run directory")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate(workdir, config=None, step=None, stop_reason=None, train_seconds=None):
  """Evaluates the best checkpoint (or `step`) of a run on validation and test.

  Args:
    workdir: the run directory (holds config.json and checkpoints/).
    config: the run's config; read from workdir/config.json when None.
    step: checkpoint step to evaluate; None = best by validation F1.
    stop_reason, train_seconds: recorded in the report when called after training.

  Returns:
    The report dict, also written atomically to workdir/report.json.
  """
  config = config or load_config(workdir)
  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"))
  if store.latest_step() is None:
    raise ValueError(f"{workdir}/checkpoints holds no checkpoint to evaluate")
  all_collapsed = False
  if step is None:
    step = store.best_step()
    meta = store.restore_meta(step)
    all_collapsed = meta["val"]["collapsed"]
  elif step not in store.all_steps():
    raise ValueError(f"--step={step} is not a kept checkpoint; kept: {store.all_steps()}")
  meta = store.restore_meta(step)

  data_dir = dataset_lib.ensure_data(config.data)
  ds = dataset_lib.build_dataset(config.data, data_dir, normalizer=meta["normalizer"])
  model = train_lib.build_model(config, ds.num_classes)
  tx, _ = train_lib.make_optimizer(config.train, 1)
  abstract = jax.eval_shape(lambda: train_lib.create_train_state(
      model, tx, ds.num_features, ds.window, config.train.seed))
  state, meta = store.restore(step, abstract)
  store.close()
  predict_fn = train_lib.make_predict_step(model)
  threshold = meta["threshold"]

  results = {}
  for split in ("val", "test"):
    probs, _ = train_lib.predict_split(predict_fn, state, ds, split, config.eval.batch_size)
    labels = ds.splits[split].labels
    r = metrics_lib.summarize(labels, probs[:, 1], threshold)
    collapsed, reason = metrics_lib.is_collapsed(probs[:, 1], threshold,
                                                 config.eval.min_positive_rate)
    r["collapsed"], r["collapse_reason"] = bool(collapsed), reason if collapsed else ""
    results[split] = r
    if split == "test":
      _plot_curves(labels, probs[:, 1], workdir)

  report = {
      "config_name": config.name,
      "workdir": os.path.abspath(workdir),
      "data": {"dir": data_dir, **ds.summary()},
      "best_step": int(step), "best_epoch": int(meta["epoch"]) + 1,
      "threshold": threshold,
      "threshold_chosen_on": "val",
      "all_checkpoints_collapsed": bool(all_collapsed),
      "stop_reason": stop_reason,
      "train_seconds": train_seconds,
      "val": results["val"], "test": results["test"],
  }
  io_utils.atomic_write_json(os.path.join(workdir, "report.json"), report)
  print(format_summary(report), flush=True)
  return report


def format_summary(report):
  """A readable summary of report.json."""
  lines = [f"== {report['config_name']}: checkpoint of epoch {report['best_epoch']} "
           f"(step {report['best_step']}), threshold {report['threshold']:.4f} chosen on val"]
  if report["all_checkpoints_collapsed"]:
    lines.append("!! Every epoch's model collapsed to one class: there is no usable model. "
                 "The numbers below are the least-bad checkpoint's.")
  for name, s in report["data"]["splits"].items():
    lines.append(f"   {name:5s} {s['windows']:7,d} windows, {s['positive_rate']:.2%} positive, "
                 f"{s['start']} .. {s['end']}")
  lines.append(f"   {'split':5s} {'ROC-AUC':>8s} {'PR-AUC':>7s} {'prior':>6s} {'F1':>6s} "
               f"{'F1 all+':>7s} {'prec':>6s} {'recall':>6s} {'acc':>6s} {'acc base':>8s}")
  for split in ("val", "test"):
    r = report[split]
    lines.append(f"   {split:5s} {r['roc_auc']:8.3f} {r['pr_auc']:7.3f} {r['prior']:6.3f} "
                 f"{r['f1']:6.3f} {r['f1_baseline']:7.3f} {r['precision']:6.3f} "
                 f"{r['recall']:6.3f} {r['accuracy']:6.3f} {r['accuracy_baseline']:8.3f}")
    if r["collapsed"]:
      lines.append(f"   !! {split}: collapsed — {r['collapse_reason']}")
  (tn, fp), (fn, tp) = report["test"]["confusion"]
  lines.append(f"   test confusion: TN {tn}  FP {fp}  FN {fn}  TP {tp}")
  lines.append(f"   report: {os.path.join(report['workdir'], 'report.json')}")
  return "\n".join(lines)


def _save_figure(fig, path):
  """Renders to memory, then writes atomically (a crash never leaves a torn PNG)."""
  import io
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  io_utils.atomic_write_bytes(path, buf.getvalue())


def plot_history(history, workdir):
  """training_curves.png: train/val loss and val F1 / ROC-AUC per epoch, with baselines."""
  if not history:
    return
  ep = [h["epoch"] for h in history]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
  a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
  a1.plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
  a1.set(xlabel="epoch", ylabel="loss", title="Loss")
  a1.legend()
  a2.plot(ep, [h["val_f1"] for h in history], "o-", label="val F1 (best threshold)")
  a2.plot(ep, [h["val_f1_baseline"] for h in history], "--", label="F1 of always-positive")
  a2.plot(ep, [h["val_roc_auc"] for h in history], "s-", label="val ROC-AUC")
  a2.axhline(0.5, color="grey", lw=0.8, ls=":", label="ROC-AUC of chance")
  for h in history:
    if h["val_collapsed"]:
      a2.axvline(h["epoch"], color="red", alpha=0.3)
  a2.set(xlabel="epoch", title="Validation (red: collapsed epochs)")
  a2.legend(fontsize=8)
  _save_figure(fig, os.path.join(workdir, "training_curves.png"))


def _plot_curves(labels, scores, workdir):
  """test_roc_pr.png: ROC and precision-recall curves on test, with the chance/prior lines."""
  if labels.min() == labels.max():
    return
  fpr, tpr, _ = metrics_lib.roc_curve(labels, scores)
  prec, rec, _ = metrics_lib.pr_curve(labels, scores)
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
  a1.plot(fpr, tpr, label=f"ROC-AUC {metrics_lib.roc_auc(labels, scores):.3f}")
  a1.plot([0, 1], [0, 1], "--", color="grey", label="chance")
  a1.set(xlabel="false positive rate", ylabel="true positive rate", title="Test ROC")
  a1.legend()
  a2.plot(rec, prec, label=f"PR-AUC {metrics_lib.pr_auc(labels, scores):.3f}")
  a2.axhline(labels.mean(), ls="--", color="grey", label=f"prior {labels.mean():.3f}")
  a2.set(xlabel="recall", ylabel="precision", title="Test precision-recall")
  a2.legend()
  _save_figure(fig, os.path.join(workdir, "test_roc_pr.png"))
