"""What a trader reads: threshold sweeps, bootstrap intervals, pictures, report.md.

Pure numpy/matplotlib (no JAX), so every function runs on evaluation arrays
pulled to the host. The classification numbers come from
:mod:`jaxquant.metrics` (same conventions: positive iff ``score >= threshold``);
this module adds what the desk acts on:

* :func:`trading_sweep` -- the whole precision/recall trade-off *and* the
  forward returns of the signalled windows at each threshold (win rate,
  profit/loss ratio, expected return per signal);
* :func:`block_bootstrap_ci` / :func:`bootstrap_metrics` -- confidence
  intervals that respect time order: neighbouring windows overlap, so an
  i.i.d. bootstrap would understate the uncertainty;
* :func:`multiclass_report` -- per-class table for the 3-class (down/flat/up) runs;
* ``plot_*`` -- PNGs written atomically, each with its chance/prior line;
* :func:`write_report_md` -- ``report.md`` from the ``report.json`` dict.
"""

import collections
import io
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxquant import io_utils
from jaxquant import metrics as metrics_lib

__all__ = [
    "SWEEP_GRID", "SIGNAL_SHARES", "FIGURES", "default_thresholds", "trading_sweep",
    "BootstrapCI", "default_block", "block_bootstrap_ci", "bootstrap_metrics",
    "multiclass_report", "calibration_table", "plot_roc_pr", "plot_calibration",
    "plot_confusion", "plot_threshold_sweep", "plot_history", "write_report_md",
]

SWEEP_GRID = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05, 0.10, ..., 0.95
SIGNAL_SHARES = (0.01, 0.02, 0.05, 0.10, 0.20)     # quantile thresholds signalling these shares

# File names the pictures are written under (evaluate.py uses these); report.md
# embeds, in this order, those that exist.
FIGURES = (
    ("training_curves.png", "Training curves"),
    ("test_roc_pr.png", "ROC and PR"),
    ("threshold_sweep.png", "Threshold sweep"),
    ("test_calibration.png", "Calibration"),
    ("test_confusion.png", "Confusion matrix"),
    ("val_roc_pr.png", "Validation ROC and PR"),
    ("val_calibration.png", "Validation calibration"),
)


# --------------------------------------------------------------------------
# threshold sweep with forward returns
# --------------------------------------------------------------------------


def default_thresholds(scores) -> np.ndarray:
  """The default sweep: a fixed grid plus thresholds signalling fixed shares.

  Args:
    scores: real-valued scores, shape (n,).

  Returns:
    Sorted, deduplicated thresholds: 0.05..0.95 in steps of 0.05, plus for
    each share in :data:`SIGNAL_SHARES` the k-th largest score with
    ``k = ceil(share * n)`` (so at least k windows are signalled, exactly k
    without ties) -- a model whose scores sit far below 0.5 still gets rows.
  """
  s = np.sort(metrics_lib._as_scores(scores))  # pylint: disable=protected-access
  return _default_thresholds_sorted(s)


def _default_thresholds_sorted(s_sorted):
  n = s_sorted.size
  k = np.clip(np.ceil(np.asarray(SIGNAL_SHARES) * n).astype(np.int64), 1, n)
  return np.unique(np.concatenate([SWEEP_GRID, s_sorted[n - k]]))


def _as_returns(fwd_returns, n):
  r = np.asarray(fwd_returns, dtype=np.float64)
  if r.shape != (n,):
    raise ValueError(f"fwd_returns must have shape ({n},), got {r.shape}")
  if not np.all(np.isfinite(r)):
    raise ValueError("fwd_returns contains nan or inf")
  return r


def _suffix_sums(x):
  """out[i] = sum(x[i:]), out[n] = 0; summed from the top so small suffixes stay exact."""
  return np.concatenate((np.cumsum(x[::-1])[::-1], np.zeros(1, dtype=x.dtype)))


def trading_sweep(labels, scores, fwd_returns, thresholds=None) -> list:
  """Classification and trading statistics of the signals at each threshold.

  A window is signalled when ``score >= threshold``. One ascending sort of the
  scores serves every threshold: the signalled windows are a suffix of the
  sorted order, so their counts and return sums are suffix sums read at one
  ``searchsorted`` index (medians partition that suffix). O(n log n + T n)
  worst case for the T medians; about 0.5 s for n = 1e6.

  Args:
    labels: true labels in {0, 1}, shape (n,).
    scores: real-valued scores, shape (n,).
    fwd_returns: forward return of each window over the label horizon, shape (n,).
    thresholds: thresholds to evaluate; None = :func:`default_thresholds`.

  Returns:
    One dict per threshold, in ascending threshold order when defaulted (given
    order otherwise), with ``threshold, precision`` (win rate), ``recall, f1``
    (``metrics`` conventions: 0.0 when undefined), ``signals`` (count),
    ``signal_share``, ``mean_return``, ``median_return``, ``expected_return``
    (= mean_return: the average forward return per signal),
    ``profit_loss_ratio`` (mean positive return / mean |negative| return among
    the signalled; nan unless both wins and losses occur),
    ``hit_rate_positive_return`` (share of signals with return > 0), plus
    ``prior`` and ``precision_lift`` (precision / prior). Return statistics
    are nan when nothing is signalled.
  """
  y, s = metrics_lib._validate(labels, scores)  # pylint: disable=protected-access
  r = _as_returns(fwd_returns, y.size)
  order = np.argsort(s, kind="stable")
  s, y, r = s[order], y[order], r[order]
  t = _default_thresholds_sorted(s) if thresholds is None else np.atleast_1d(
      np.asarray(thresholds, dtype=np.float64))
  # Already sorted, so the sort inside metrics.threshold_sweep is nearly free.
  cls_rows = metrics_lib.threshold_sweep(y, s, t)

  n = s.size
  start = np.searchsorted(s, t, side="left")   # signalled = sorted[start:]
  k = n - start
  win = r > 0
  loss = r < 0
  sum_r = _suffix_sums(r)[start]
  n_win = _suffix_sums(win.astype(np.int64))[start]
  n_loss = _suffix_sums(loss.astype(np.int64))[start]
  sum_win = _suffix_sums(np.where(win, r, 0.0))[start]
  sum_loss = _suffix_sums(np.where(loss, -r, 0.0))[start]
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_r = np.where(k > 0, sum_r / k, np.nan)
    hit = np.where(k > 0, n_win / k, np.nan)
    pl = np.where((n_win > 0) & (n_loss > 0), (sum_win / n_win) / (sum_loss / n_loss), np.nan)
  prior = float(y.mean())

  rows = []
  for i, row in enumerate(cls_rows):
    median = float(np.median(r[start[i]:])) if k[i] else math.nan
    rows.append({
        "threshold": row["threshold"],
        "precision": row["precision"], "recall": row["recall"], "f1": row["f1"],
        "signals": int(k[i]), "signal_share": float(k[i]) / n,
        "mean_return": float(mean_r[i]), "median_return": median,
        "profit_loss_ratio": float(pl[i]), "expected_return": float(mean_r[i]),
        "hit_rate_positive_return": float(hit[i]),
        "prior": prior,
        "precision_lift": row["precision"] / prior if prior > 0 else math.nan,
    })
  return rows


# --------------------------------------------------------------------------
# block bootstrap
# --------------------------------------------------------------------------


class BootstrapCI(collections.namedtuple("BootstrapCI", ["estimate", "lo", "hi"])):
  """``(estimate, lo, hi)``; ``.valid`` and ``.skipped`` count the resamples used/dropped."""

  def __new__(cls, estimate, lo, hi, valid=0, skipped=0):
    self = super().__new__(cls, estimate, lo, hi)
    self.valid, self.skipped = int(valid), int(skipped)
    return self


def default_block(n: int) -> int:
  """Block length ``max(1, round(n ** (1/3)))``, the textbook rate for block bootstraps."""
  return max(1, round(n ** (1.0 / 3.0)))


def _check_bootstrap_args(n, block, n_boot, level):
  block = default_block(n) if block is None else int(block)
  if block < 1:
    raise ValueError(f"block must be >= 1, got {block}")
  if int(n_boot) < 1:
    raise ValueError(f"n_boot must be >= 1, got {n_boot}")
  if not 0.0 < float(level) < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  return min(block, n), int(n_boot), float(level)


def _block_resamples(n, block, n_boot, seed):
  """Yields ``n_boot`` circular-block-bootstrap index arrays of length n.

  Blocks of ``block`` consecutive windows start at uniform positions and wrap
  around the end (circular: every window is equally likely to be drawn, unlike
  the moving-block version that under-samples both ends). Generated one
  resample at a time so memory stays O(n) for any n_boot.
  """
  rng = np.random.default_rng(seed)
  n_blocks = -(-n // block)
  offsets = np.arange(block)
  dtype = np.int32 if n < 2**31 else np.int64
  for _ in range(n_boot):
    starts = rng.integers(0, n, size=n_blocks).astype(dtype)
    idx = (starts[:, None] + offsets[None, :].astype(dtype)).ravel()[:n]
    idx %= n
    yield idx


def _bootstrap_table(labels, scores, stat_fn, block, n_boot, seed, resample_fn=None):
  """Statistics on the full data and on every resample (same indices for all).

  ``resample_fn`` (default ``stat_fn``) computes the statistics of a resample.
  """
  resample_fn = resample_fn or stat_fn
  y, s = np.asarray(labels), np.asarray(scores)
  if y.shape[:1] != s.shape[:1]:
    raise ValueError(f"labels and scores must have the same length, got {y.shape} and {s.shape}")
  if y.shape[0] == 0:
    raise ValueError("labels is empty")
  full = np.atleast_1d(np.asarray(stat_fn(y, s), dtype=np.float64))
  boot = np.empty((n_boot, full.size))
  for b, idx in enumerate(_block_resamples(y.shape[0], block, n_boot, seed)):
    boot[b] = resample_fn(y[idx], s[idx])
  return full, boot


def _percentile_ci(estimate, column, level):
  ok = np.isfinite(column)
  if not ok.any():
    return BootstrapCI(float(estimate), math.nan, math.nan, 0, column.size)
  lo, hi = np.percentile(column[ok], [50 * (1 - level), 50 * (1 + level)])
  return BootstrapCI(float(estimate), float(lo), float(hi), int(ok.sum()), int((~ok).sum()))


def block_bootstrap_ci(labels, scores, metric_fn, block=None, n_boot=500, seed=0, level=0.95):
  """Percentile interval of a metric under a circular block bootstrap over time.

  Windows must be in time order: neighbouring windows overlap (and share
  their label horizon), so resampling whole blocks keeps that dependence and
  gives honest, wider intervals. Pass ``block = window + horizon`` so a block
  spans every window that shares bars with its first one.

  Args:
    labels: labels in time order, shape (n, ...).
    scores: scores in time order, shape (n, ...) (rows resampled with labels).
    metric_fn: ``metric_fn(labels, scores) -> float``.
    block: block length in windows; None = ``max(1, round(n ** (1/3)))``;
      clipped to n. ``block=1`` is the ordinary i.i.d. bootstrap.
    n_boot: number of resamples.
    seed: seed of the resampling (same seed, same interval).
    level: coverage of the interval.

  Returns:
    :class:`BootstrapCI` ``(estimate, lo, hi)``: the metric on the full data
    and the percentile interval over resamples whose metric is finite;
    ``.skipped`` counts resamples dropped as nan (e.g. a single class drawn;
    a ``ValueError`` raised on a resample, as sklearn metrics do, counts as
    nan). lo/hi are nan when every resample was skipped.
  """
  n = np.shape(labels)[0] if np.ndim(labels) else 0
  block, n_boot, level = _check_bootstrap_args(max(n, 1), block, n_boot, level)

  def on_resample(y, s):
    try:
      return [metric_fn(y, s)]
    except ValueError:  # e.g. sklearn's "only one class present": undefined, like nan
      return [math.nan]

  full, boot = _bootstrap_table(labels, scores, lambda y, s: [metric_fn(y, s)],
                                block, n_boot, seed, on_resample)
  return _percentile_ci(full[0], boot[:, 0], level)


BOOTSTRAP_METRICS = ("roc_auc", "pr_auc", "precision", "recall", "f1")


def _fixed_threshold_stats(y, s, threshold):
  """Precision, recall, F1 at ``threshold``; nan (not 0) when undefined.

  nan lets the bootstrap skip a resample that drew no signal or no positive,
  instead of counting a 0 that would drag the interval down.
  """
  (_, fp), (fn, tp) = metrics_lib.confusion(y, s >= threshold).tolist()
  precision = tp / (tp + fp) if tp + fp else math.nan
  recall = tp / (tp + fn) if tp + fn else math.nan
  f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
  return precision, recall, f1


def bootstrap_metrics(labels, scores, threshold, block=None, n_boot=500, seed=0, level=0.95):
  """Block-bootstrap intervals of the headline binary metrics.

  Each resample's indices are drawn once and serve all five metrics.

  Args:
    labels: labels in {0, 1}, in time order, shape (n,).
    scores: scores, shape (n,).
    threshold: the fixed decision threshold (chosen on validation).
    block, n_boot, seed, level: as in :func:`block_bootstrap_ci`.

  Returns:
    ``{metric: {"estimate", "lo", "hi", "skipped", "block", "n_boot", "level"}}``
    for ``roc_auc, pr_auc, precision, recall, f1``. Precision/recall/F1 are
    nan (and skipped) when their denominator is 0 -- unlike
    ``metrics.binary_metrics``, which reports 0.0.
  """
  y, s = metrics_lib._validate(labels, scores)  # pylint: disable=protected-access
  threshold = float(threshold)
  block, n_boot, level = _check_bootstrap_args(y.size, block, n_boot, level)

  def stats(yb, sb):
    return (metrics_lib.roc_auc(yb, sb), metrics_lib.pr_auc(yb, sb),
            *_fixed_threshold_stats(yb, sb, threshold))

  full, boot = _bootstrap_table(y, s, stats, block, n_boot, seed)
  out = {}
  for j, name in enumerate(BOOTSTRAP_METRICS):
    ci = _percentile_ci(full[j], boot[:, j], level)
    out[name] = {"estimate": ci.estimate, "lo": ci.lo, "hi": ci.hi, "skipped": ci.skipped,
                 "block": block, "n_boot": n_boot, "level": level}
  return out


# --------------------------------------------------------------------------
# multi-class
# --------------------------------------------------------------------------


def multiclass_report(labels, pred, num_classes: int) -> dict:
  """Per-class precision/recall/F1/support, confusion matrix and macro F1.

  Matches ``sklearn.metrics.precision_recall_fscore_support(labels=range(K),
  zero_division=0)``; classes never seen nor predicted count in the macro
  average with F1 0.

  Args:
    labels: true classes in ``[0, num_classes)``, shape (n,).
    pred: predicted classes in ``[0, num_classes)``, shape (n,).
    num_classes: K.

  Returns:
    dict with lists over classes ``precision, recall, f1, support,
    predicted_share``, ``confusion`` (K x K list, rows = truth), ``accuracy``,
    ``macro_f1`` and ``weighted_f1`` (support-weighted).
  """
  y = _as_classes(labels, num_classes, "labels")
  p = _as_classes(pred, num_classes, "pred")
  if y.shape != p.shape:
    raise ValueError(f"labels and pred must have the same length, got {y.size} and {p.size}")
  cm = np.bincount(num_classes * y + p, minlength=num_classes**2).reshape(num_classes, -1)
  tp = np.diag(cm)
  support, predicted = cm.sum(1), cm.sum(0)
  precision = metrics_lib._div(tp, predicted)  # pylint: disable=protected-access
  recall = metrics_lib._div(tp, support)  # pylint: disable=protected-access
  f1 = metrics_lib._div(2 * tp, support + predicted)  # pylint: disable=protected-access
  return {
      "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
      "support": support.tolist(),
      "predicted_share": metrics_lib.class_shares(p, num_classes),
      "confusion": cm.tolist(),
      "accuracy": float(tp.sum() / y.size),
      "macro_f1": float(f1.mean()),
      "weighted_f1": float(np.dot(f1, support) / y.size),
  }


def _as_classes(x, num_classes, name):
  arr = metrics_lib._as_1d(x, name)  # pylint: disable=protected-access
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if not np.all((arr == np.round(arr)) & (arr >= 0) & (arr < num_classes)):
    raise ValueError(f"{name} must hold integers in [0, {num_classes})")
  return arr.astype(np.int64)


# --------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------


def _new_figure(ncols=1, nrows=1, figsize=(6, 4), **kw):
  """A figure on its own Agg canvas: no pyplot global state, safe off the main thread."""
  fig = Figure(figsize=figsize, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, axes


def _save(fig, path):
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
  y, s = metrics_lib._validate(labels, scores)  # pylint: disable=protected-access
  prior = float(y.mean())
  fig, ((a1, a2),) = _new_figure(2, figsize=(10, 4))
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
  return _save(fig, path)


def calibration_table(labels, scores, bins=10, strategy="uniform") -> dict:
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
  y, s = metrics_lib._validate(labels, scores)  # pylint: disable=protected-access
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
  fig, ((a1,), (a2,)) = _new_figure(1, 2, figsize=(6, 6), sharex=True,
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
  return _save(fig, path)


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
  share = metrics_lib._div(cm, cm.sum(1, keepdims=True))  # pylint: disable=protected-access
  fig, ((ax,),) = _new_figure(figsize=(1.6 * k + 2, 1.4 * k + 1.5))
  im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{cm[i, j]:,}\n{share[i, j]:.1%}", ha="center", va="center",
              color="white" if share[i, j] > 0.5 else "black")
  ax.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names,
         xlabel="predicted class", ylabel="true class",
         title=f"{title}\n(colour and % = share of each true class)")
  fig.colorbar(im, ax=ax, fraction=0.046, label="share of row")
  return _save(fig, path)


def _column(rows, key):
  return np.array([r.get(key, math.nan) for r in rows], dtype=np.float64)


def plot_threshold_sweep(sweep_val, sweep_test, path, chosen_threshold=None):
  """Precision and recall against threshold on val and test, signal share on a second axis.

  Args:
    sweep_val: rows of :func:`trading_sweep` on validation (or None).
    sweep_test: rows of :func:`trading_sweep` on test (or None).
    path: PNG to write.
    chosen_threshold: threshold chosen on validation, drawn as a vertical line.

  Returns:
    The path written.
  """
  fig, ((ax,),) = _new_figure(figsize=(8, 4.5))
  share_ax = ax.twinx()
  for rows, name, ls in ((sweep_val, "val", "--"), (sweep_test, "test", "-")):
    if not rows:
      continue
    rows = sorted(rows, key=lambda r: r["threshold"])
    t = _column(rows, "threshold")
    ax.plot(t, _column(rows, "precision"), ls, color="C0", marker=".", label=f"precision ({name})")
    ax.plot(t, _column(rows, "recall"), ls, color="C1", marker=".", label=f"recall ({name})")
    share_ax.plot(t, 100 * _column(rows, "signal_share"), ls, color="C2", alpha=0.6,
                  label=f"signalled % ({name})")
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
  if handles[0] or handles2[0]:
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="upper right")
  return _save(fig, path)


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
  fig, ((a1, a2, a3),) = _new_figure(3, figsize=(15, 4))
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
  return _save(fig, path)


# --------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------


def _isnum(x):
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
      and math.isfinite(float(x))


def _f(x, spec=".3f"):
  return format(float(x), spec) if _isnum(x) else "—"


def _pct(x, digits=1):
  return f"{100 * float(x):.{digits}f}%" if _isnum(x) else "—"


def _ret(x):
  return f"{100 * float(x):+.3f}%" if _isnum(x) else "—"


def _int(x):
  return f"{int(x):,}" if _isnum(x) else "—"


def _cell(x):
  return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return lines


def _md_data(report):
  data = report.get("data") or {}
  lines = ["## Data", ""]
  facts = [("data", data.get("dir")), ("instruments", ", ".join(data.get("instruments") or [])),
           ("bars", _int(data["bars"]) if _isnum(data.get("bars")) else None),
           ("window", data.get("window")), ("horizon", data.get("horizon")),
           ("features", data.get("num_features"))]
  facts = [f"{k}: {v}" for k, v in facts if v not in (None, "")]
  if facts:
    lines += ["; ".join(facts), ""]
  splits = data.get("splits") or {}
  if splits:
    rows = [[name, _int(s.get("windows")), _int(s.get("positives")),
             _pct(s.get("positive_rate"), 2), s.get("start") or "—", s.get("end") or "—"]
            for name, s in splits.items()]
    lines += _table(["split", "windows", "positives", "positive rate", "from", "to"], rows)
    lines += ["", "Splits are chronological; the threshold is chosen on val and only applied "
              "to test.", ""]
  return lines


def _md_run(report):
  lines = ["## Model", ""]
  if "best_epoch" in report or "best_step" in report:
    lines.append(f"- checkpoint: epoch {report.get('best_epoch', '—')} "
                 f"(step {report.get('best_step', '—')}), kept by validation F1")
  if "threshold" in report:
    lines.append(f"- decision threshold: **{_f(report['threshold'], '.4f')}**, chosen on "
                 f"{report.get('threshold_chosen_on', 'val')} (signal when score >= threshold)")
  if report.get("stop_reason"):
    lines.append(f"- training stopped: {report['stop_reason']}")
  if _isnum(report.get("train_seconds")):
    lines.append(f"- training time: {report['train_seconds'] / 60:.1f} min")
  return lines + [""]


def _md_warnings(report):
  lines = []
  if report.get("all_checkpoints_collapsed"):
    lines.append("> **Warning: every epoch's model collapsed to a single class. There is no "
                 "usable model; the numbers below are the least-bad checkpoint's.**")
  for split in ("val", "test"):
    r = report.get(split) or {}
    if r.get("collapsed"):
      reason = r.get("collapse_reason") or "one class"
      lines.append(f"> **Warning ({split}): collapsed — {reason}.**")
  return lines + [""] if lines else []


# (key, label, baseline key or constant, what the baseline is)
_METRIC_ROWS = (
    ("roc_auc", "ROC-AUC", 0.5, "chance"),
    ("pr_auc", "PR-AUC", "prior", "random ranking"),
    ("precision", "precision (win rate)", "prior", "random signals"),
    ("recall", "recall", None, ""),
    ("f1", "F1", "f1_baseline", "always positive"),
    ("precision_lift", "precision / prior", 1.0, "random signals"),
    ("accuracy", "accuracy", "accuracy_baseline", "majority class"),
    ("predicted_positive_rate", "signalled share", None, ""),
)


def _ci(r, key):
  b = (r.get("bootstrap") or {}).get(key) or {}
  return f"[{_f(b.get('lo'))}, {_f(b.get('hi'))}]" if b else "—"


def _baseline(r, base):
  return _f(base) if _isnum(base) else _f(r.get(base)) if base else "—"


def _md_metrics(report):
  val, test = report.get("val") or {}, report.get("test") or {}
  if not val and not test:
    return []
  rows = []
  for key, label, base, what in _METRIC_ROWS:
    if key not in val and key not in test:
      continue
    rows.append([label, _f(val.get(key)), _ci(val, key), _f(test.get(key)), _ci(test, key),
                 f"{_baseline(val, base)} / {_baseline(test, base)}" if base is not None else "—",
                 what])
  lines = ["## Metrics at the chosen threshold", ""]
  lines += _table(["metric", "val", "val 95% CI", "test", "test 95% CI",
                   "baseline (val / test)", "baseline is"], rows)
  boot = next(iter((test.get("bootstrap") or val.get("bootstrap") or {}).values()), None)
  if boot:
    lines += ["", f"Intervals: circular block bootstrap over time order (block of "
              f"{boot.get('block', '?')} windows, {boot.get('n_boot', '?')} resamples, "
              f"{_pct(boot.get('level', 0.95), 0)} percentile interval); neighbouring windows "
              "overlap, so i.i.d. intervals would be too narrow."]
  if np.shape(test.get("confusion")) == (2, 2):
    (tn, fp), (fn, tp) = np.asarray(test["confusion"], dtype=np.int64).tolist()
    lines += ["", f"Test confusion: TN {tn:,}, FP {fp:,}, FN {fn:,}, TP {tp:,}."]
  return lines + [""]


FEW_SIGNALS = 30  # rows with fewer signals are flagged: their win rate is mostly noise


def _md_sweep(rows, title, threshold=None):
  lines = [title, ""]
  body = []
  for r in sorted(rows, key=lambda r: r.get("threshold", math.nan)):
    none = not r.get("signals")
    few = "*" if 0 < (r.get("signals") or 0) < FEW_SIGNALS else ""
    body.append([_f(r.get("threshold"), ".4f"), _int(r.get("signals")) + few,
                 _pct(r.get("signal_share"), 2),
                 "—" if none else _pct(r.get("precision")), _pct(r.get("recall")),
                 _f(r.get("f1")), "—" if none else _f(r.get("precision_lift"), ".2f"),
                 _ret(r.get("mean_return")), _ret(r.get("median_return")),
                 _f(r.get("profit_loss_ratio"), ".2f"),
                 _pct(r.get("hit_rate_positive_return"))])
  lines += _table(["threshold", "signals", "signalled", "win rate (precision)", "recall", "F1",
                   "lift", "mean return", "median return", "P/L ratio", "return > 0"], body)
  note = ("Win rate = share of signals whose label is 1; lift = win rate / prior; returns are "
          "the forward returns of the signalled windows (before costs and stop-losses); "
          f"P/L ratio = average win / average loss. * fewer than {FEW_SIGNALS} signals: too few "
          "to trust.")
  if _isnum(threshold):
    note += f" The threshold chosen on val is {float(threshold):.4f}."
  return lines + ["", note, ""]


def _md_figures(workdir):
  present = [(f, cap) for f, cap in FIGURES if os.path.exists(os.path.join(workdir, f))]
  if not present:
    return []
  lines = ["## Figures", ""]
  for f, cap in present:
    lines += [f"![{cap}]({f})", ""]
  return lines


def write_report_md(report, workdir):
  """Writes ``workdir/report.md`` (atomically) from the report.json dict.

  Every section tolerates missing keys, so partial reports still render.

  Args:
    report: the dict evaluate.py writes to report.json, optionally with
      ``report[split]["sweep"]`` (:func:`trading_sweep` rows) and
      ``report[split]["bootstrap"]`` (:func:`bootstrap_metrics`).
    workdir: run directory; only pictures of :data:`FIGURES` present there are embedded.

  Returns:
    The path of report.md.
  """
  title = report.get("config_name") or "run"
  lines = [f"# jaxquant report: {title}", ""]
  if report.get("workdir"):
    lines += [f"Run directory: `{report['workdir']}`", ""]
  lines += _md_warnings(report)
  lines += _md_data(report)
  lines += _md_run(report)
  lines += _md_metrics(report)
  test_sweep = (report.get("test") or {}).get("sweep")
  if test_sweep:
    lines += _md_sweep(test_sweep, "## Test threshold sweep", report.get("threshold"))
  val_sweep = (report.get("val") or {}).get("sweep")
  if val_sweep:
    lines += ["<details><summary>Validation threshold sweep</summary>", ""]
    lines += _md_sweep(val_sweep, "### Validation threshold sweep")
    lines += ["</details>", ""]
  lines += _md_figures(workdir)
  path = os.path.join(workdir, "report.md")
  io_utils.atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
  return path
