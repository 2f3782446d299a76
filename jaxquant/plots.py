"""The pictures of a run: ROC/PR, calibration, confusion, return head, threshold sweep,
training curves.

Each ``plot_*`` writes one PNG atomically and draws the line a trivial model
would give (chance, prior). Figures are built on their own Agg canvas (no
pyplot global state), so plotting is safe off the main thread.
"""

import io
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxquant import io_utils
from jaxquant import metrics as metrics_lib

# File names the pictures are written under (evaluate.py uses these); report.md
# embeds, in this order, those that exist.
FIGURES = (
    ("training_curves.png", "Training curves"),
    ("test_roc_pr.png", "ROC and PR"),
    ("threshold_sweep.png", "Threshold sweep"),
    ("test_calibration.png", "Calibration"),
    ("test_confusion.png", "Confusion matrix"),
    ("test_return_head.png", "Return head"),
    ("val_roc_pr.png", "Validation ROC and PR"),
    ("val_calibration.png", "Validation calibration"),
)
RUN_FIGURES = ("training_curves.png",)  # The run's own: not prefixed per evaluated data.
FEW_SIGNALS = 30  # Sweep points with fewer signals are marked: their win rate is mostly noise.


def new_figure(ncols=1, nrows=1, figsize=(6, 4), **kw):
  """A figure on its own Agg canvas: no pyplot global state, safe off the main thread."""
  fig = Figure(figsize=figsize, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, axes


def save_png(fig, path):
  """Renders to memory first, then replaces ``path`` atomically (never a torn PNG)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  io_utils.atomic_write_bytes(path, buf.getvalue())
  return os.fspath(path)


def plot_roc_pr(labels, scores, path, split="Test"):
  """ROC curve with the chance diagonal and precision-recall with the prior line.

  Args:
    labels: labels in {0, 1}, shape (n,).
    scores: scores, shape (n,).
    path: PNG to write.
    split: name used in the titles.

  Returns:
    The path written.
  """
  y, s = metrics_lib.validate_binary(labels, scores)
  prior = float(y.mean())
  fig, ((a1, a2),) = new_figure(2, figsize=(10, 4))
  a1.plot([0, 1], [0, 1], "--", color="grey", label="chance (AUC 0.5)")
  a2.axhline(prior, ls="--", color="grey", label=f"prior {prior:.3f} (random ranking)")
  if 0 < y.sum() < y.size:
    fpr, tpr, _ = metrics_lib.roc_curve(y, s)
    precision, recall, _ = metrics_lib.pr_curve(y, s)
    a1.plot(fpr, tpr, label=f"model, ROC-AUC {metrics_lib.roc_auc(y, s):.3f}")
    a2.step(recall, precision, where="post",
            label=f"model, PR-AUC {metrics_lib.pr_auc(y, s):.3f}")
  else:  # One class only: both curves are undefined; say so rather than draw nothing.
    for ax in (a1, a2):
      ax.text(0.5, 0.5, "undefined: only one class present", ha="center", transform=ax.transAxes)
  a1.set(xlabel="false positive rate", ylabel="true positive rate (recall)",
         title=f"{split} ROC", xlim=(0, 1), ylim=(0, 1.02))
  a2.set(xlabel="recall", ylabel="precision (win rate)", title=f"{split} precision-recall",
         xlim=(0, 1), ylim=(0, 1.02))
  a1.legend(loc="lower right", fontsize=8)
  a2.legend(loc="upper right", fontsize=8)
  return save_png(fig, path)


def calibration_table(labels, scores, bins=10, strategy="uniform"):
  """Per-bin mean predicted score and observed positive frequency.

  Args:
    labels: labels in {0, 1}, shape (n,).
    scores: probabilities, shape (n,).
    bins: number of bins.
    strategy: "uniform" (equal-width over [0, 1], or over the score range if
      scores leave [0, 1]) or "quantile" (equal counts; useful when most
      probabilities are small, as with 7 % positives).

  Returns:
    dict with ``edges`` (bins + 1), ``count``, ``mean_score``, ``observed``
    (nan for empty bins) and ``ece`` (count-weighted mean |observed - mean_score|).
  """
  y, s = metrics_lib.validate_binary(labels, scores)
  if int(bins) < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  if strategy == "quantile":
    edges = np.quantile(s, np.linspace(0, 1, int(bins) + 1))
  elif strategy == "uniform":
    lo, hi = (0.0, 1.0) if s.min() >= 0 and s.max() <= 1 else (s.min(), s.max())
    edges = np.linspace(lo, hi, int(bins) + 1)
  else:
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
  # The last bin is closed on the right so the maximum score is counted.
  which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, edges.size - 2)
  count = np.bincount(which, minlength=edges.size - 1)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_score = np.bincount(which, weights=s, minlength=edges.size - 1) / count
    observed = np.bincount(which, weights=y, minlength=edges.size - 1) / count
  gap = np.where(count > 0, np.abs(observed - mean_score), 0.0)
  return {"edges": edges.tolist(), "count": count.tolist(), "mean_score": mean_score.tolist(),
          "observed": observed.tolist(), "ece": float(np.dot(gap, count) / y.size)}


def plot_calibration(labels, scores, path, bins=10, strategy="uniform", split="Test"):
  """Reliability diagram over a histogram of the scores.

  Args:
    labels: labels in {0, 1}, shape (n,).
    scores: predicted probabilities of class 1, shape (n,).
    path: PNG to write.
    bins, strategy: as in :func:`calibration_table`.
    split: name used in the title.

  Returns:
    The path written.
  """
  y = np.asarray(labels)
  table = calibration_table(labels, scores, bins, strategy)
  prior = float(y.mean())
  fig, ((a1,), (a2,)) = new_figure(1, 2, figsize=(6, 6), sharex=True,
                                    gridspec_kw={"height_ratios": [3, 1]})
  lo, hi = table["edges"][0], table["edges"][-1]
  a1.plot([lo, hi], [lo, hi], "--", color="grey", label="perfectly calibrated")
  a1.axhline(prior, ls=":", color="grey", label=f"prior {prior:.3f}")
  a1.plot(table["mean_score"], table["observed"], "o-", label="model")
  a1.set(ylabel="observed positive frequency",
         title=f"{split} calibration (ECE {table['ece']:.3f})")
  a1.legend(loc="upper left", fontsize=8)
  edges = np.asarray(table["edges"])
  a2.bar(edges[:-1], table["count"], width=np.diff(edges), align="edge", color="C0",
         alpha=0.6, edgecolor="white")
  nonzero = [c for c in table["count"] if c > 0]
  if nonzero and max(nonzero) > 20 * min(nonzero):
    a2.set_yscale("log")  # Most scores pile up near 0 with rare positives.
  a2.set(xlabel="mean predicted probability (bin)", ylabel="windows")
  return save_png(fig, path)


def plot_return_head(predicted, realised, path, ic=None, bins=10):
  """Predicted vs realised forward return: a scatter and the mean realised return per
  quantile bin of the prediction, against the overall mean (what no skill gives).

  Args:
    predicted: predicted returns of the return head, shape (n,).
    realised: realised forward returns, shape (n,).
    path: PNG to write.
    ic: optional ``(ic, rank_ic)`` for the title.
    bins: quantile bins of the prediction.

  Returns:
    The path written.
  """
  p, r = np.asarray(predicted, np.float64), np.asarray(realised, np.float64)
  fig, ((a1, a2),) = new_figure(2, 1, figsize=(10, 4))
  a1.scatter(p, r, s=4, alpha=0.3, color="C0", rasterized=True)
  a1.axhline(0, color="grey", lw=0.8)
  a1.axvline(0, color="grey", lw=0.8)
  title = "Test return head" + (f" (IC {ic[0]:+.3f}, rank IC {ic[1]:+.3f})" if ic else "")
  a1.set(xlabel="predicted forward return", ylabel="realised forward return", title=title)
  # Equal-count bins; ties in the prediction may leave fewer, never empty, bins.
  edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
  which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
  used = np.unique(which)
  a2.plot([p[which == b].mean() for b in used], [r[which == b].mean() for b in used], "o-",
          label="mean realised, per bin of the prediction")
  a2.axhline(r.mean(), ls=":", color="grey", label=f"overall mean {r.mean():+.2e} (no skill)")
  a2.set(xlabel="predicted forward return (bin mean)", ylabel="mean realised forward return")
  a2.legend(loc="upper left", fontsize=8)
  return save_png(fig, path)


def plot_confusion(confusion, path, class_names=None, title="Test confusion matrix"):
  """Confusion matrix annotated with counts and row-normalised shares.

  Args:
    confusion: K x K counts, rows = true class, columns = predicted class.
    path: PNG to write.
    class_names: K tick labels; None = "0", "1", ...
    title: figure title.

  Returns:
    The path written.
  """
  cm = np.asarray(confusion, dtype=np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion must be square, got shape {cm.shape}")
  k = cm.shape[0]
  names = [str(c) for c in (class_names if class_names is not None else range(k))]
  if len(names) != k:
    raise ValueError(f"need {k} class names, got {len(names)}")
  # Row shares: recall of each true class; colour by share so the rare class is visible.
  share = metrics_lib.safe_div(cm, cm.sum(1, keepdims=True))
  fig, ((ax,),) = new_figure(figsize=(1.6 * k + 2, 1.4 * k + 1.5))
  im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{cm[i, j]:,}\n{share[i, j]:.1%}", ha="center", va="center",
              color="white" if share[i, j] > 0.5 else "black")
  ax.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names,
         xlabel="predicted class", ylabel="true class",
         title=f"{title}\n(colour and % = share of each true class)")
  fig.colorbar(im, ax=ax, fraction=0.046, label="share of row")
  return save_png(fig, path)


def _column(rows, key):
  return np.array([r.get(key, math.nan) for r in rows], dtype=np.float64)


def plot_threshold_sweep(sweep_val, sweep_test, path, chosen_threshold=None):
  """Precision and recall against threshold on val (dashed) and test (solid), signal
  share on a second axis; points of fewer than FEW_SIGNALS signals marked, legend below.

  Args:
    sweep_val: rows of :func:`jaxquant.trading.trading_sweep` on validation (or None).
    sweep_test: rows of :func:`jaxquant.trading.trading_sweep` on test (or None).
    path: PNG to write.
    chosen_threshold: threshold chosen on validation, drawn as a vertical line.

  Returns:
    The path written.
  """
  fig, ((ax,),) = new_figure(figsize=(8, 5.5))
  share_ax = ax.twinx()
  few_label = f"< {FEW_SIGNALS} signals: win rate mostly noise"
  # val dashed with open markers, test solid with filled ones: told apart without colour.
  for rows, name, ls, face in ((sweep_val, "val", "--", "white"), (sweep_test, "test", "-", None)):
    if not rows:
      continue
    rows = sorted(rows, key=lambda r: r["threshold"])
    t = _column(rows, "threshold")
    precision = _column(rows, "precision")
    ax.plot(t, precision, ls, color="C0", marker="o", ms=3, mfc=face,
            label=f"precision — {name}")
    ax.plot(t, _column(rows, "recall"), ls, color="C1", marker="o", ms=3, mfc=face,
            label=f"recall — {name}")
    share_ax.plot(t, 100 * _column(rows, "signal_share"), ls, color="C2", alpha=0.6,
                  label=f"signalled % — {name}")
    signals = _column(rows, "signals")
    few = (signals > 0) & (signals < FEW_SIGNALS)
    if few.any():
      ax.plot(t[few], precision[few], "x", color="red", ms=7, label=few_label)
      few_label = "_" + few_label  # One legend entry for both splits.
    prior = rows[0].get("prior")
    if prior is not None and np.isfinite(prior):
      ax.axhline(prior, ls=ls, color="grey", lw=0.9,
                 label=f"prior {prior:.3f} ({name}): precision of random signals")
  if chosen_threshold is not None and np.isfinite(chosen_threshold):
    ax.axvline(chosen_threshold, color="black", lw=0.8, ls=":",
               label=f"chosen on val {chosen_threshold:.3f}")
  ax.set(xlabel="decision threshold (signal if score >= threshold)",
         ylabel="precision (win rate) / recall", ylim=(0, 1.02),
         title="Precision-recall trade-off by threshold")
  share_ax.set_ylabel("windows signalled (%)", color="C2")
  share_ax.set_ylim(bottom=0)
  handles = ax.get_legend_handles_labels()
  handles2 = share_ax.get_legend_handles_labels()
  if handles[0] or handles2[0]:  # Below the axes: it never covers a curve.
    fig.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, ncols=3,
               loc="outside lower center")
  return save_png(fig, path)


def plot_history(history, path):
  """Training curves: loss, validation F1 and ROC-AUC per epoch with their baselines.

  Epochs whose validation predictions collapsed to one class are shaded red
  in every panel -- a falling loss over them means nothing.

  Args:
    history: list of per-epoch dicts (train.py's metrics.jsonl records) with
      ``epoch, train_loss, val_loss, val_f1, val_f1_baseline, val_roc_auc,
      val_collapsed``; missing values are drawn as gaps.
    path: PNG to write.

  Returns:
    The path written (an empty history still gives a labelled figure).
  """
  rows = list(history or [])
  ep = _column(rows, "epoch")
  fig, ((a1, a2, a3),) = new_figure(3, figsize=(15, 4))
  a1.plot(ep, _column(rows, "train_loss"), "o-", label="train")
  a1.plot(ep, _column(rows, "val_loss"), "o-", label="validation")
  a1.set(xlabel="epoch", ylabel="loss", title="Loss")
  a2.plot(ep, _column(rows, "val_f1"), "o-", label="val F1 (best threshold)")
  a2.plot(ep, _column(rows, "val_f1_baseline"), "--", color="grey",
          label="F1 of always-positive")
  a2.set(xlabel="epoch", ylabel="F1", title="Validation F1")
  a3.plot(ep, _column(rows, "val_roc_auc"), "s-", color="C2", label="val ROC-AUC")
  a3.axhline(0.5, color="grey", ls="--", label="chance (0.5)")
  a3.set(xlabel="epoch", ylabel="ROC-AUC", title="Validation ROC-AUC")
  collapsed = [r["epoch"] for r in rows if r.get("val_collapsed")]
  for ax in (a1, a2, a3):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for i, e in enumerate(collapsed):
      ax.axvspan(e - 0.5, e + 0.5, color="red", alpha=0.15,
                 label="collapsed (one class)" if i == 0 else None)
    ax.legend(fontsize=8)
  if collapsed:
    fig.suptitle(f"{len(collapsed)} of {len(rows)} epochs collapsed (red)", color="red")
  return save_png(fig, path)
