"""What the desk acts on: the signals at each threshold and their forward returns.

Pure numpy (no JAX), on evaluation arrays pulled to the host. Classification
numbers follow :mod:`jaxquant.metrics` (positive iff ``score >= threshold``).
"""

import math

import numpy as np

from jaxquant import metrics as metrics_lib

SWEEP_GRID = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05, 0.10, ..., 0.95
SIGNAL_SHARES = (0.01, 0.02, 0.05, 0.10, 0.20)     # quantile thresholds signalling these shares


def _default_thresholds(s_sorted):
  """SWEEP_GRID plus, for each share, the k-th largest score, k = ceil(share * n)."""
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


def trading_sweep(labels, scores, fwd_returns, thresholds=None):
  """Classification and trading statistics of the signals at each threshold.

  A window is signalled when ``score >= threshold``. One ascending sort of the
  scores serves every threshold: the signalled windows are a suffix of the
  sorted order, so their counts and return sums are suffix sums read at one
  ``searchsorted`` index (medians partition that suffix). O(n log n + T n)
  worst case for the T medians; about 0.5 s for n = 1e6.

  Args:
    labels: true labels in {0, 1}, shape (n,).
    scores: real-valued scores, shape (n,).
    fwd_returns: the return of the trade each window's label describes (over the label
      horizon; the barrier exit return for triple-barrier labels), shape (n,).
    thresholds: thresholds to evaluate; None = the default sweep: 0.05..0.95
      in steps of 0.05 (:data:`SWEEP_GRID`), plus for each share in
      :data:`SIGNAL_SHARES` the k-th largest score with ``k = ceil(share * n)``
      (so at least k windows are signalled, exactly k without ties) -- a model
      whose scores sit far below 0.5 still gets rows; sorted and deduplicated.

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
  y, s = metrics_lib.validate_binary(labels, scores)
  r = _as_returns(fwd_returns, y.size)
  order = np.argsort(s, kind="stable")
  s, y, r = s[order], y[order], r[order]
  t = _default_thresholds(s) if thresholds is None else np.atleast_1d(
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
