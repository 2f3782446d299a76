"""One split's verdict: the signal class's metrics at a threshold, and collapse.

Training (each epoch's validation) and evaluation (val and test of the restored
checkpoint) both judge a split here, so the checkpoint is chosen on exactly the
figures the report shows.
"""

import numpy as np

from jaxquant import metrics as metrics_lib
from jaxquant.data import labels as labels_lib


def signal_view(labels, probs):
  """(1 where the label is the signal class, else 0; the signal class's probability)."""
  signal = labels_lib.signal_class(probs.shape[1])
  return (np.asarray(labels) == signal).astype(np.int64), np.asarray(probs)[:, signal]


THRESHOLD_OBJECTIVES = ("f1", "precision", "net_return")  # eval.threshold_objective
_NET_CANDIDATES = 40  # Thresholds the net_return objective backtests (a log grid of counts).


def choose_threshold(labels, probs, min_rate, objective="f1", min_signals=1, net_total=None):
  """The signal class's threshold (chosen on validation only).

  Args:
    objective: "f1" (the F1-best), "precision" (the highest precision among thresholds
      with at least `min_signals` signals; ties to the highest threshold) or
      "net_return" (the highest `net_total` among the scores at signal counts from
      min_signals to all but min_rate of the windows, a log grid of _NET_CANDIDATES).
    net_total: thresholds → total net return after costs (the backtest's), for
      "net_return".

  Returns:
    The threshold; nan where no threshold qualifies.
  """
  binary, scores = signal_view(labels, probs)
  if objective == "f1":
    threshold, _ = metrics_lib.best_f1_threshold(binary, scores, min_rate=min_rate)
    return threshold
  order = np.argsort(-scores, kind="stable")
  s = scores[order]
  last = np.append(s[1:] != s[:-1], True)  # Each distinct score's last (lowest) position.
  counts, values = np.nonzero(last)[0] + 1, s[last]  # Signals at threshold = value.
  tp = np.cumsum(binary[order])[last]
  ok = (counts >= max(1, min_signals)) & (counts <= max(1, (1 - min_rate) * s.size))
  if not ok.any():
    return float("nan")
  if objective == "precision":
    return float(values[int(np.argmax(np.where(ok, tp / counts, -1.0)))])
  grid = np.geomspace(counts[ok][0], counts[ok][-1], _NET_CANDIDATES)
  cand = np.unique(values[ok][np.minimum(np.searchsorted(counts[ok], grid), ok.sum() - 1)])
  nets = np.asarray(net_total(cand), np.float64)
  return float(cand[len(nets) - 1 - int(np.argmax(nets[::-1]))])  # Ties: the highest.


def split_verdict(labels, probs, threshold, min_rate, max_rate):
  """One split judged at `threshold`.

  Collapsed (never the best checkpoint, counted by the collapse stop rule) on either
  side: it signals on fewer than `min_rate` or more than `max_rate` of the windows, or
  its F1 does not exceed the F1 of always signalling (`metrics.is_collapsed`).

  Args:
    labels: class labels [n]; probs: class probabilities [n, K].
    threshold: decision threshold on the signal class's probability.
    min_rate, max_rate: eval.min_positive_rate and eval.max_positive_rate.

  Returns:
    The signal class's metrics with their do-nothing baselines (`metrics.summarize`),
    `collapsed`, `collapse_reason`, the predicted class shares and, with three classes,
    the argmax per-class figures.
  """
  binary, scores = signal_view(labels, probs)
  summary = metrics_lib.summarize(binary, scores, threshold)
  collapsed, reason = metrics_lib.is_collapsed(scores, threshold, min_rate, max_rate,
                                               y_true=binary)
  summary["collapsed"] = bool(collapsed)
  summary["collapse_reason"] = reason if collapsed else ""
  pred = (scores >= threshold) if np.isfinite(threshold) else np.zeros(len(scores), bool)
  summary["class_shares"] = metrics_lib.class_shares(pred.astype(np.int64), 2)
  if probs.shape[1] > 2:
    summary["multiclass"] = metrics_lib.multiclass_metrics(labels, probs.argmax(1),
                                                          probs.shape[1])
  return summary
