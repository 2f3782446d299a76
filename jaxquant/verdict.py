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


def choose_threshold(labels, probs, min_rate):
  """The F1-best threshold of the signal class (chosen on validation only)."""
  binary, scores = signal_view(labels, probs)
  threshold, _ = metrics_lib.best_f1_threshold(binary, scores, min_rate=min_rate)
  return threshold


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
