"""Evaluation metrics for binary classifiers on imbalanced data (pure numpy).

Positives (label 1) are rare in our futures-bar data (~7 %), so every headline
number is reported next to the baseline a trivial model would get:

* ``accuracy_baseline`` -- accuracy of "always predict the majority class";
* ``f1_baseline``       -- F1 of "always predict positive" (``2p / (1 + p)``);
* ``precision_lift``    -- precision divided by the prior;
* ``pr_auc_baseline``   -- average precision of a random ranking (the prior).

Conventions (matching scikit-learn with ``zero_division=0``): a prediction is
positive when ``score >= threshold``; precision, recall and F1 are 0.0 when
their denominator is 0.  Ranking metrics return nan when undefined (a single
class present).  scikit-learn is used only as the reference in the tests.

All threshold-dependent quantities are computed from a single ascending sort
of the scores plus cumulative sums, so every function is O(n log n).
Throughout, ``y_true`` holds labels in {0, 1} and ``scores`` real-valued
scores, both of shape (n,).
:func:`multiclass_metrics` gives the per-class table of the 3-class runs.
"""

import math

import numpy as np

CONSTANT_SCORE_PTP = 1e-7  # scores with a smaller peak-to-peak count as constant


# -------------------------------- validation and the shared sorted-cumsum core


def as_1d(x, name):
  """``np.asarray(x)``; ValueError unless it is 1-D and non-empty (``name`` in the message)."""
  arr = np.asarray(x)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
  if arr.size == 0:
    raise ValueError(f"{name} is empty")
  return arr


def as_labels(y, name):
  """Binary labels (0/1 or bool, 1-D, non-empty) as int64; ValueError otherwise."""
  arr = as_1d(y, name)
  if arr.dtype == bool:
    return arr.astype(np.int64)
  if not np.all((arr == 0) | (arr == 1)):
    bad = np.unique(arr[(arr != 0) & (arr != 1)])[:5]
    raise ValueError(f"{name} must contain only 0 and 1, found e.g. {bad.tolist()}")
  return arr.astype(np.int64)


def as_scores(s, name="scores"):
  """Finite real scores (1-D, non-empty) as float64; ValueError otherwise."""
  arr = as_1d(s, name).astype(np.float64)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains nan or inf")
  return arr


def validate_binary(y_true, scores, scores_name="scores"):
  """``(labels, scores)`` of a binary problem as int64 / float64 arrays of one length.

  Raises ValueError on anything :func:`as_labels` / :func:`as_scores` reject or
  on different lengths.
  """
  y = as_labels(y_true, "y_true")
  s = as_scores(scores, scores_name)
  if y.shape != s.shape:
    raise ValueError(
        f"y_true and {scores_name} must have the same length, got {y.size} and {s.size}")
  return y, s


def _check_rate(rate, name="min_rate"):
  rate = float(rate)
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {rate}")
  return rate


def safe_div(num, den):
  """Elementwise num / den as float64 with 0.0 where den == 0 (zero_division=0)."""
  num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
  return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


class _Sorted:
  """Scores sorted ascending with cumulative positive counts.

  For any threshold ``t``, ``count(scores >= t)`` and the number of
  positives among them follow from one ``searchsorted``.
  """

  def __init__(self, y, s):
    order = np.argsort(s)  # tie order is irrelevant: counts are read at group boundaries
    self.s = s[order]
    self.n = s.size
    # cum_pos[i] = number of positives among the i smallest scores
    self.cum_pos = np.concatenate(([0], np.cumsum(y[order])))
    self.n_pos = int(self.cum_pos[-1])

  def counts_at(self, thresholds):
    """(predicted positives, true positives) of ``scores >= t`` for each t."""
    start = np.searchsorted(self.s, thresholds, side="left")
    return self.n - start, self.n_pos - self.cum_pos[start]

  def distinct(self):
    """Distinct scores (ascending) with their predicted/true positive counts."""
    first = np.flatnonzero(np.concatenate(([True], np.diff(self.s) != 0)))
    return self.s[first], self.n - first, self.n_pos - self.cum_pos[first]


# ----------------------------------------------------------- threshold metrics


def confusion(y_true, y_pred):
  """Binary confusion matrix.

  Args:
    y_true: true labels in {0, 1}, shape (n,).
    y_pred: predicted labels in {0, 1}, shape (n,).

  Returns:
    int64 array ``[[tn, fp], [fn, tp]]`` (rows = truth, columns = prediction,
    the layout of ``sklearn.metrics.confusion_matrix(labels=[0, 1])``).
  """
  y = as_labels(y_true, "y_true")
  p = as_labels(y_pred, "y_pred")
  if y.shape != p.shape:
    raise ValueError(f"y_true and y_pred must have the same length, got {y.size} and {p.size}")
  return np.bincount(2 * y + p, minlength=4).reshape(2, 2).astype(np.int64)


def mcc(cm, undefined=0.0):
  """Matthews correlation coefficient (``sklearn.metrics.matthews_corrcoef``).

  Args:
    cm: confusion matrix ``[[tn, fp], [fn, tp]]``.
    undefined: the value when a row or column of ``cm`` is empty (sklearn: 0).

  Returns:
    MCC in [-1, 1]: 0 for a trivial or random classifier, whatever the prior.
  """
  (tn, fp), (fn, tp) = np.asarray(cm, np.float64)
  den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return float((tp * tn - fp * fn) / den) if den else float(undefined)


def binary_metrics(y_true, scores, threshold):
  """Threshold metrics together with the baselines of trivial models.

  Args:
    threshold: decision threshold, positive iff ``score >= threshold`` (nan
      predicts everything negative).

  Returns:
    dict with ``threshold, accuracy, precision, recall, f1, confusion``
    (list of lists ``[[tn, fp], [fn, tp]]``), ``predicted_positive_rate``,
    ``prior`` (share of positives), ``n``, ``accuracy_baseline``
    (max(prior, 1 - prior)), ``f1_baseline`` (2p / (1 + p), F1 of
    "always positive") and ``precision_lift`` (precision / prior, nan if
    prior == 0). Degenerate precision/recall/F1 are 0.0.
  """
  y, s = validate_binary(y_true, scores)
  threshold = float(threshold)
  cm = confusion(y, s >= threshold)
  (tn, fp), (fn, tp) = cm.tolist()
  n = y.size
  prior = (tp + fn) / n
  precision = float(safe_div(tp, tp + fp))
  return {
      "threshold": threshold,
      "accuracy": (tp + tn) / n,
      "precision": precision,
      "recall": float(safe_div(tp, tp + fn)),
      "f1": float(safe_div(2 * tp, 2 * tp + fp + fn)),
      "confusion": cm.tolist(),
      "predicted_positive_rate": (tp + fp) / n,
      "prior": prior,
      "n": n,
      "accuracy_baseline": max(prior, 1.0 - prior),
      "f1_baseline": 2 * prior / (1 + prior),
      "precision_lift": precision / prior if prior > 0 else math.nan,
  }


def threshold_sweep(y_true, scores, thresholds):
  """Precision/recall/F1 at many thresholds, from one sort.

  Args:
    thresholds: iterable of thresholds (predicted positive iff ``score >= t``).

  Returns:
    One dict per threshold, in the given order, with keys ``threshold,
    precision, recall, f1, predicted_positive_rate, signals`` (number of
    predicted positives).
  """
  y, s = validate_binary(y_true, scores)
  t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
  if t.ndim != 1:
    raise ValueError(f"thresholds must be 1-D, got shape {t.shape}")
  srt = _Sorted(y, s)
  k, tp = srt.counts_at(t)
  precision = safe_div(tp, k)
  recall = safe_div(tp, srt.n_pos)
  f1 = safe_div(2 * tp, k + srt.n_pos)
  return [{"threshold": float(t[i]), "precision": float(precision[i]),
           "recall": float(recall[i]), "f1": float(f1[i]),
           "predicted_positive_rate": float(k[i]) / srt.n, "signals": int(k[i])}
          for i in range(t.size)]


def best_f1_threshold(y_true, scores, min_rate=0.0):
  """Distinct score value that maximises F1 while predicting both classes.

  Only thresholds whose predicted-positive share lies in
  ``[r, 1 - r]`` with ``r = max(min_rate, 1/n)`` are admissible, so the
  trivial "everything positive" threshold (whose F1 is ``f1_baseline``) is
  never chosen. Ties go to the highest threshold. O(n log n).

  Args:
    min_rate: floor on the predicted-positive share (and ``1 - min_rate``
      its ceiling).

  Returns:
    ``(threshold, f1)``; ``(nan, 0.0)`` if no threshold is admissible
    (e.g. all scores equal).
  """
  y, s = validate_binary(y_true, scores)
  floor = max(_check_rate(min_rate), 1.0 / y.size)
  values, k, tp = _Sorted(y, s).distinct()
  rate = k / y.size
  ok = (rate >= floor) & (rate <= 1.0 - floor)
  if not ok.any():
    return math.nan, 0.0
  f1 = np.where(ok, safe_div(2 * tp, k + int(y.sum())), -1.0)
  # values ascend; the last maximum is the highest threshold among ties
  best = f1.size - 1 - int(np.argmax(f1[::-1]))
  return float(values[best]), float(f1[best])


# -------------------------------------------------- ranking metrics and curves


def roc_curve(y_true, scores):
  """ROC curve at every distinct score (no points dropped).

  Returns:
    ``(fpr, tpr, thresholds)`` ordered by decreasing threshold, starting
    at ``(0, 0)`` with threshold ``inf`` and ending at ``(1, 1)``. fpr
    (tpr) is nan when there are no negatives (positives).
  """
  y, s = validate_binary(y_true, scores)
  values, k, tp = _Sorted(y, s).distinct()
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  tp = np.concatenate(([0], tp[::-1]))  # decreasing threshold
  fp = np.concatenate(([0], k[::-1])) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    fpr = fp / n_neg if n_neg else np.full(fp.shape, math.nan)
    tpr = tp / n_pos if n_pos else np.full(tp.shape, math.nan)
  return fpr, tpr, np.concatenate(([np.inf], values[::-1]))


def roc_auc(y_true, scores):
  """Area under the ROC curve, exact, ties counted as one half.

  Equal to the Mann-Whitney U statistic with average ranks divided by
  ``n_pos * n_neg`` (and to ``sklearn.metrics.roc_auc_score``). Computed
  with integer arithmetic from the trapezoid rule over distinct scores.

  Returns:
    AUC in [0, 1]; nan if only one class is present.
  """
  y, s = validate_binary(y_true, scores)
  _, k, tp = _Sorted(y, s).distinct()
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return math.nan
  tp = np.concatenate(([0], tp[::-1]))  # decreasing threshold
  fp = np.concatenate(([0], k[::-1])) - tp
  twice_area = np.sum(np.diff(fp) * (tp[1:] + tp[:-1]))  # exact int64
  return float(twice_area) / (2.0 * n_pos * n_neg)


def pr_curve(y_true, scores):
  """Precision-recall curve at every distinct score (no points dropped).

  Same layout as ``sklearn.metrics.precision_recall_curve``.

  Returns:
    ``(precision, recall, thresholds)``: thresholds ascending (the
    distinct scores); precision and recall have one extra final point
    ``(1, 0)``. Recall is 0.0 everywhere when there are no positives.
  """
  y, s = validate_binary(y_true, scores)
  values, k, tp = _Sorted(y, s).distinct()
  precision = np.concatenate((safe_div(tp, k), [1.0]))
  recall = np.concatenate((safe_div(tp, int(y.sum())), [0.0]))
  return precision, recall, values


def pr_auc(y_true, scores):
  """Average precision, exactly as ``sklearn.metrics.average_precision_score``.

  ``AP = sum_i (R_i - R_{i-1}) * P_i`` over distinct thresholds in
  decreasing order (step-wise, no interpolation; tied scores form one step).
  A random ranking scores about the prior.

  Returns:
    Average precision in [0, 1]; nan if there are no positives.
  """
  y, s = validate_binary(y_true, scores)
  if not y.any():
    return math.nan
  precision, recall, _ = pr_curve(y, s)
  return float(-np.sum(np.diff(recall) * precision[:-1]))


# ---------------------------------- collapse detection, summaries, multi-class


def is_collapsed(scores, threshold, min_rate, max_rate=None, y_true=None):
  """Whether thresholded predictions are degenerate (a trivial classifier).

  Collapsed when the threshold is nan, the scores are numerically constant
  (peak-to-peak < 1e-7), all predictions are one class, the predicted-positive
  share is below ``min_rate`` or above ``max_rate``, or (given labels) F1 does not
  exceed ``f1_baseline``: signalling on (nearly) every window is collapse too.

  Args:
    scores: real-valued scores, shape (n,); positive iff ``>= threshold``.
    threshold: decision threshold.
    min_rate: floor on the predicted-positive share, in [0, 1].
    max_rate: ceiling on that share, in [0, 1]; None = ``1 - min_rate``.
    y_true: labels in {0, 1}, shape (n,), for the F1 test (skipped without positives).

  Returns:
    ``(collapsed, reason)`` where ``reason`` is a plain-English sentence,
    e.g. ``"predicts class 0 for all 1234 windows"``.
  """
  s, threshold, min_rate = as_scores(scores), float(threshold), _check_rate(min_rate)
  max_rate = 1.0 - min_rate if max_rate is None else _check_rate(max_rate, "max_rate")
  n = s.size
  if math.isnan(threshold):
    return True, "threshold is nan (no admissible threshold was found)"
  ptp = float(np.ptp(s))
  if ptp < CONSTANT_SCORE_PTP:
    return True, f"scores are constant (peak-to-peak {ptp:.3g} < {CONSTANT_SCORE_PTP:g})"
  pred = s >= threshold
  k = int(np.count_nonzero(pred))
  if k in (0, n):
    return True, f"predicts class {int(k == n)} for all {n} windows"
  rate = k / n
  if rate < min_rate:
    return True, f"predicted-positive rate {rate:.4g} below floor {min_rate:.4g}"
  if rate > max_rate:
    return True, f"predicted-positive rate {rate:.4g} above ceiling {max_rate:.4g}"
  if y_true is not None:
    y, _ = validate_binary(y_true, s)
    n_pos, tp = int(y.sum()), int(y[pred].sum())
    # F1 = 2tp / (k + P) against 2P / (n + P), compared exactly in integers.
    if n_pos and tp * (n + n_pos) <= n_pos * (k + n_pos):
      return True, (f"has F1 {2 * tp / (k + n_pos):.4g}, not above the "
                    f"{2 * n_pos / (n + n_pos):.4g} of always predicting positive")
  return False, f"predicted-positive rate {rate:.4g} within [{min_rate:.4g}, {max_rate:.4g}]"


def _as_classes(x, num_classes, name):
  arr = as_1d(x, name)
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if not np.all((arr == np.round(arr)) & (arr >= 0) & (arr < num_classes)):
    raise ValueError(f"{name} must hold integers in [0, {num_classes})")
  return arr.astype(np.int64)


def class_shares(y_pred, num_classes):
  """Share of predictions falling in each class.

  Args:
    y_pred: integer class predictions in ``[0, num_classes)``, shape (n,).
    num_classes: number of classes.

  Returns:
    List of ``num_classes`` floats summing to 1.
  """
  p = _as_classes(y_pred, num_classes, "y_pred")
  return (np.bincount(p, minlength=num_classes) / p.size).tolist()


def summarize(y_true, scores, threshold):
  """Threshold metrics, ranking metrics and their baselines in one dict.

  Args:
    threshold: decision threshold (positive iff ``score >= threshold``).

  Returns:
    :func:`binary_metrics` plus ``mcc`` (:func:`mcc`, baseline 0), ``roc_auc``,
    ``roc_auc_baseline`` (0.5), ``pr_auc`` and ``pr_auc_baseline`` (the prior).
  """
  y, s = validate_binary(y_true, scores)
  out = binary_metrics(y, s, threshold)
  out["mcc"] = mcc(out["confusion"])
  out["roc_auc"] = roc_auc(y, s)
  out["roc_auc_baseline"] = 0.5
  out["pr_auc"] = pr_auc(y, s)
  out["pr_auc_baseline"] = out["prior"]
  return out


def multiclass_metrics(labels, pred, num_classes):
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
  precision = safe_div(tp, predicted)
  recall = safe_div(tp, support)
  f1 = safe_div(2 * tp, support + predicted)
  return {
      "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
      "support": support.tolist(),
      "predicted_share": class_shares(p, num_classes),
      "confusion": cm.tolist(),
      "accuracy": float(tp.sum() / y.size),
      "macro_f1": float(f1.mean()),
      "weighted_f1": float(np.dot(f1, support) / y.size),
  }
