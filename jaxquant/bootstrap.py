"""Confidence intervals that respect time order: a circular block bootstrap.

Neighbouring windows overlap (and share their label horizon), so an i.i.d.
bootstrap would understate the uncertainty; resampling whole blocks of
consecutive windows keeps that dependence and gives honest, wider intervals.
Pure numpy, on evaluation arrays pulled to the host.
"""

import collections
import math

import numpy as np

from jaxquant import metrics as metrics_lib

BOOTSTRAP_METRICS = ("roc_auc", "pr_auc", "precision", "recall", "f1", "mcc")
IC_METRICS = ("ic", "rank_ic")  # Of the return head: Pearson and Spearman correlation.


class BootstrapCI(collections.namedtuple("BootstrapCI", ["estimate", "lo", "hi"])):
  """``(estimate, lo, hi)``; ``.valid`` and ``.skipped`` count the resamples used/dropped."""

  def __new__(cls, estimate, lo, hi, valid=0, skipped=0):
    self = super().__new__(cls, estimate, lo, hi)
    self.valid, self.skipped = int(valid), int(skipped)
    return self


def default_block(n):
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


def _bootstrap_table(y, s, stat_fn, block, n_boot, seed):
  """Statistics on the full data and on every resample (same indices for all)."""
  full = np.atleast_1d(np.asarray(stat_fn(y, s), dtype=np.float64))
  boot = np.empty((n_boot, full.size))
  for b, idx in enumerate(_block_resamples(y.shape[0], block, n_boot, seed)):
    boot[b] = stat_fn(y[idx], s[idx])
  return full, boot


def _percentile_ci(estimate, column, level):
  """Percentile interval over the finite entries of ``column`` (nan if there are none)."""
  ok = np.isfinite(column)
  if not ok.any():
    return BootstrapCI(float(estimate), math.nan, math.nan, 0, column.size)
  lo, hi = np.percentile(column[ok], [50 * (1 - level), 50 * (1 + level)])
  return BootstrapCI(float(estimate), float(lo), float(hi), int(ok.sum()), int((~ok).sum()))


def _interval_table(names, full, boot, block, n_boot, level):
  """``{name: {"estimate", "lo", "hi", "skipped", "block", "n_boot", "level"}}``."""
  out = {}
  for j, name in enumerate(names):
    ci = _percentile_ci(full[j], boot[:, j], level)
    out[name] = {"estimate": ci.estimate, "lo": ci.lo, "hi": ci.hi, "skipped": ci.skipped,
                 "block": block, "n_boot": n_boot, "level": level}
  return out


def _fixed_threshold_stats(y, s, threshold):
  """Precision, recall, F1, MCC at ``threshold``; nan (not 0) when undefined.

  nan lets the bootstrap skip a resample that drew no signal or no positive,
  instead of counting a 0 that would drag the interval down.
  """
  cm = metrics_lib.confusion(y, s >= threshold)
  (_, fp), (fn, tp) = cm.tolist()
  precision = tp / (tp + fp) if tp + fp else math.nan
  recall = tp / (tp + fn) if tp + fn else math.nan
  f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
  return precision, recall, f1, metrics_lib.mcc(cm, undefined=math.nan)


def bootstrap_metrics(labels, scores, threshold, block=None, n_boot=500, seed=0, level=0.95):
  """Block-bootstrap percentile intervals of the headline binary metrics.

  Windows must be in time order. Pass ``block = window + horizon`` so a block
  spans every window that shares bars with its first one. Each resample's
  indices are drawn once and serve all six metrics; a resample on which a
  metric is nan (e.g. no positive drawn) is skipped for that metric.

  Args:
    labels: labels in {0, 1}, in time order, shape (n,).
    scores: scores, shape (n,).
    threshold: the fixed decision threshold (chosen on validation).
    block: block length in windows; None = :func:`default_block` of n;
      clipped to n. ``block=1`` is the ordinary i.i.d. bootstrap.
    n_boot: number of resamples.
    seed: seed of the resampling (same seed, same intervals).
    level: coverage of the intervals.

  Returns:
    ``{metric: {"estimate", "lo", "hi", "skipped", "block", "n_boot", "level"}}``
    for ``roc_auc, pr_auc, precision, recall, f1, mcc``: the metric on the full
    data, the percentile interval over the resamples where it is finite (lo/hi
    nan when every resample was skipped) and the number skipped. Precision/
    recall/F1/MCC are nan (and skipped) when their denominator is 0 -- unlike
    ``metrics.summarize``, which reports 0.0.
  """
  y, s = metrics_lib.validate_binary(labels, scores)
  threshold = float(threshold)
  block, n_boot, level = _check_bootstrap_args(y.size, block, n_boot, level)

  def stats(yb, sb):
    return (metrics_lib.roc_auc(yb, sb), metrics_lib.pr_auc(yb, sb),
            *_fixed_threshold_stats(yb, sb, threshold))

  full, boot = _bootstrap_table(y, s, stats, block, n_boot, seed)
  return _interval_table(BOOTSTRAP_METRICS, full, boot, block, n_boot, level)


def _average_ranks(x):
  """1-based ranks with ties given their mean rank (``scipy.stats.rankdata``)."""
  order = np.argsort(x, kind="stable")
  xs = x[order]
  first = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
  counts = np.diff(np.concatenate((first, [x.size])))
  ranks = np.empty(x.size)
  ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
  return ranks


def _pearson(a, b):
  a, b = a - a.mean(), b - b.mean()
  den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
  return float(np.dot(a, b)) / den if den > 0 else math.nan


def information_coefficients(predicted, realised):
  """How well a predicted return orders and scales the realised one.

  Args:
    predicted: predicted returns, shape (n,).
    realised: realised forward returns, shape (n,).

  Returns:
    ``(ic, rank_ic)``: the Pearson and the Spearman (rank, ties averaged)
    correlation; nan when either side is constant or n < 2.
  """
  p = metrics_lib.as_scores(predicted, "predicted")
  r = metrics_lib.as_scores(realised, "realised")
  if p.shape != r.shape:
    raise ValueError(f"predicted and realised must have the same length, got {p.size} and "
                     f"{r.size}")
  return _pearson(p, r), _pearson(_average_ranks(p), _average_ranks(r))


def bootstrap_ic(predicted, realised, block=None, n_boot=500, seed=0, level=0.95):
  """Block-bootstrap percentile intervals of :func:`information_coefficients`.

  Windows must be in time order; pass ``block = window + horizon`` as for
  :func:`bootstrap_metrics` (neighbouring windows share their forward returns).

  Returns:
    ``{"ic": {...}, "rank_ic": {...}}``, each with ``estimate, lo, hi, skipped,
    block, n_boot, level`` (a resample with a constant side is skipped).
  """
  p = metrics_lib.as_scores(predicted, "predicted")
  r = metrics_lib.as_scores(realised, "realised")
  information_coefficients(p, r)  # Checks the lengths.
  block, n_boot, level = _check_bootstrap_args(p.size, block, n_boot, level)
  full, boot = _bootstrap_table(p, r, information_coefficients, block, n_boot, seed)
  return _interval_table(IC_METRICS, full, boot, block, n_boot, level)
