"""Selection honesty for a population of trained members: pick on validation only, and
measure how much the pick owes to luck (the Probability of Backtest Overfitting).

A member is a dict {"settings": {swept key: value, ..., "train.seed": s}, "val": {metric:
value}, "test": {metric: value}, "collapsed": bool}. `select_member` never reads "test":
the selected member's test figures are the result, not a second chance to choose.

PBO is Combinatorially Symmetric Cross-Validation (CSCV) as in Bailey, Borwein, López de
Prado & Zhu (2015), "The Probability of Backtest Overfitting", J. Computational Finance
20(4) (SSRN 2326253), section 2: cut the T rows of a [T, M] performance matrix into S
contiguous blocks; for each of the C(S, S/2) ways to take half of them as in-sample (IS),
the other half is out-of-sample (OOS); the member best IS is located in the OOS ranking
(relative rank ω̄ = rank / (M + 1)) and λ = log(ω̄ / (1 − ω̄)); PBO is the share of
combinations with λ ≤ 0, i.e. where the IS winner lands at or below the OOS median.
"""

import itertools
import json
import math

import numpy as np

SEED_KEY = "train.seed"
RANK_METRICS = ("f1", "pr_auc", "precision", "roc_auc")
CHUNK = 2048  # CSCV combinations scored at once by the default metric.


def column_sharpe(x):
  """The default CSCV score: each column's mean / sample std (ddof=1), a Sharpe-like ratio.

  A column that is constant over the slice (or has fewer than 2 rows) has no defined ratio
  and scores 0.0: no evidence either way, and never infinitely good.

  Args:
    x: [n, M] slice of a performance matrix (rows in time, one column per member).

  Returns:
    [M] float64 scores, larger is better.
  """
  x = np.asarray(x, np.float64)
  out = np.zeros(x.shape[1])
  if x.shape[0] < 2:
    return out
  # Test the range, not the std: a constant column's std can round to 1e-17, not 0.
  live = np.ptp(x, axis=0) > 0
  if live.any():
    xs = x[:, live]
    out[live] = xs.mean(axis=0) / xs.std(axis=0, ddof=1)
  return out


def _check_perf(perf, n_splits):
  perf = np.asarray(perf, np.float64)
  if perf.ndim != 2:
    raise ValueError(f"pbo: perf must be a [T, M] matrix (rows in time, one column per "
                     f"member), got shape {perf.shape}")
  t, m = perf.shape
  if not isinstance(n_splits, (int, np.integer)) or isinstance(n_splits, bool) or n_splits < 2:
    raise ValueError(f"pbo: n_splits={n_splits!r} must be an even integer >= 2")
  if n_splits % 2:
    raise ValueError(f"pbo: n_splits={n_splits} is odd; CSCV needs an even number of blocks "
                     "(half in-sample, half out-of-sample)")
  if t < n_splits:
    raise ValueError(f"pbo: perf has T={t} rows, fewer than n_splits={n_splits}; every "
                     "block needs at least one row")
  if m < 2:
    raise ValueError(f"pbo: perf has M={m} member(s); selection needs at least 2 to choose from")
  bad = np.argwhere(~np.isfinite(perf))
  if bad.size:
    r, c = bad[0]
    raise ValueError(f"pbo: perf[{r}, {c}] is {perf[r, c]} (row {r}, member {c}); every "
                     "member needs a finite score in every row")
  return perf


def pbo(perf, n_splits=16, metric=None):
  """The Probability of Backtest Overfitting by CSCV (Bailey et al. 2015; module docstring).

  Blocks are contiguous and as equal as possible (numpy.array_split: the first T mod S
  blocks get one row more). Combinations are itertools.combinations(range(S), S/2) taken as
  the in-sample blocks, in that order. Ties, deterministically: among members with exactly
  equal IS scores the lowest column index is selected; exactly equal OOS scores share their
  average rank, so a tie straddling the median can give λ = 0, which counts as overfit.

  Args:
    perf: [T, M] finite performance, rows consecutive in time (e.g. each member's net
      return or score per day or per block), one column per member.
    n_splits: S, the (even) number of contiguous blocks; C(S, S/2) combinations (12,870 at
      the customary 16).
    metric: callable mapping a [n, M] slice to [M] scores, larger is better; default
      `column_sharpe` (mean / std per column).

  Returns:
    {"pbo": share of combinations with λ ≤ 0, "logits": [λ per combination],
     "n_splits": S, "combinations": C(S, S/2), "members": M, "rows": T,
     "degradation_slope" / "degradation_intercept": least-squares fit of the selected
     member's OOS score on its IS score over the combinations (None when the IS scores do
     not vary; a slope well below 1, or negative, is the paper's performance degradation),
     "prob_oos_loss": share of combinations whose selected member scores < 0 OOS (the
     paper's probability of loss; meaningful when perf is a return)}.

  Raises:
    ValueError: perf not 2-D or not finite, S odd or < 2, T < S, M < 2, or a metric that
      does not return M finite scores.
  """
  perf = _check_perf(perf, n_splits)
  t, m = perf.shape
  blocks = np.array_split(np.arange(t), n_splits)
  combos = np.zeros((math.comb(n_splits, n_splits // 2), n_splits), bool)
  for c, chosen in enumerate(itertools.combinations(range(n_splits), n_splits // 2)):
    combos[c, list(chosen)] = True
  if metric is None:
    # In chunks of combinations: a few [chunk, M] arrays at a time, whatever C and M.
    parts = [(_block_sharpe(perf, blocks, combos[i:i + CHUNK]),
              _block_sharpe(perf, blocks, ~combos[i:i + CHUNK]))
             for i in range(0, len(combos), CHUNK)]
    is_score = np.concatenate([p[0] for p in parts])
    oos_score = np.concatenate([p[1] for p in parts])
  else:
    is_score = np.stack([_scores(metric, perf[np.concatenate(
        [blocks[b] for b in np.flatnonzero(c)])], m) for c in combos])
    oos_score = np.stack([_scores(metric, perf[np.concatenate(
        [blocks[b] for b in np.flatnonzero(~c)])], m) for c in combos])
  best = np.argmax(is_score, axis=1)  # First maximum: the lowest index wins a tie.
  x = is_score[np.arange(len(combos)), best]
  y = oos_score[np.arange(len(combos)), best]
  # 1-based average rank of each winner among its OOS scores (ascending: the best is M).
  rank = (np.sum(oos_score < y[:, None], axis=1)
          + (np.sum(oos_score == y[:, None], axis=1) + 1) / 2)
  omega = rank / (m + 1)  # In (0, 1): the logit stays finite at either end.
  logits = np.log(omega / (1 - omega))
  slope = intercept = None
  if np.ptp(x) > 0:
    slope = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
    intercept = float(y.mean() - slope * x.mean())
  return {"pbo": float(np.mean(logits <= 0)), "logits": logits.tolist(),
          "n_splits": int(n_splits), "combinations": len(logits), "members": m, "rows": t,
          "degradation_slope": slope, "degradation_intercept": intercept,
          "prob_oos_loss": float(np.mean(y < 0))}


def _block_sharpe(perf, blocks, masks):
  """`column_sharpe` of every masked union of blocks at once: [C, M].

  Pooled from per-block counts, means and within-block squared deviations (no
  sum-of-squares cancellation), and element-wise only, so identical columns get
  identical scores (their ties stay exact)."""
  c, m = masks.shape[0], perf.shape[1]
  n, total = np.zeros((c, 1)), np.zeros((c, m))
  hi, lo = np.full((c, m), -np.inf), np.full((c, m), np.inf)
  stats = []
  for b, rows in enumerate(blocks):
    x = perf[rows]
    mu = x.mean(axis=0)
    stats.append((len(rows), mu, ((x - mu) ** 2).sum(axis=0)))
    on = masks[:, b:b + 1]
    n += on * len(rows)
    total += on * x.sum(axis=0)
    hi = np.where(on, np.maximum(hi, x.max(axis=0)), hi)
    lo = np.where(on, np.minimum(lo, x.min(axis=0)), lo)
  mean = total / n
  ss = np.zeros((c, m))
  for b, (k, mu, within) in enumerate(stats):
    ss += masks[:, b:b + 1] * (within + k * (mu - mean) ** 2)
  live = (hi > lo) & (n >= 2)  # Constant over the slice: no ratio, score 0 (column_sharpe).
  std = np.sqrt(np.where(live, ss, 1.0) / np.maximum(n - 1, 1))
  return np.where(live, mean / np.where(std > 0, std, 1.0), 0.0)


def _scores(metric, x, m):
  s = np.asarray(metric(x), np.float64)
  if s.shape != (m,) or not np.isfinite(s).all():
    raise ValueError(f"pbo: metric must return {m} finite scores for a [{x.shape[0]}, {m}] "
                     f"slice, got shape {s.shape}" + ("" if s.shape != (m,) else
                                                      f" with non-finite values {s.tolist()}"))
  return s


def check_members(members, key, where):
  """Raises a one-line ValueError unless every member has a validation figure `key`.

  Args:
    members: list of member dicts (module docstring).
    key: a validation metric name every member must carry in "val".
    where: the caller's name, first in the message.
  """
  if not isinstance(members, (list, tuple)) or not members:
    raise ValueError(f"{where}: members must be a non-empty list of member dicts")
  for i, mem in enumerate(members):
    if not isinstance(mem, dict) or not isinstance(mem.get("val"), dict):
      raise ValueError(f"{where}: members[{i}] has no 'val' dict of validation figures")
    if key not in mem["val"]:
      raise ValueError(f"{where}: members[{i}]['val'] has no {key!r} (it has: "
                       f"{', '.join(sorted(mem['val'])) or 'nothing'})")


def _score(value):
  try:
    v = float(value)
  except (TypeError, ValueError):
    return math.nan
  return v


def select_member(members, key="f1"):
  """The member with the best validation `key`; test figures are never read to choose.

  Collapsed members are passed over; if every member collapsed, the best of them is
  returned with all_collapsed=True and a reason saying so. Members whose val[key] is
  missing-valued (None, NaN) are never chosen. Ties: the first in list (sweep) order.

  Args:
    members: list of member dicts (module docstring).
    key: the validation metric to maximise ("f1", "pr_auc", ...).

  Returns:
    {"index", "key", "val_score", "settings", "val", "test", "collapsed",
     "all_collapsed", "eligible" (how many members could be chosen), "reason"}.

  Raises:
    ValueError: no members, a member without val[key], or no finite val[key] at all.
  """
  check_members(members, key, "select_member")
  scores = [_score(m["val"][key]) for m in members]
  finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
  if not finite:
    raise ValueError(f"select_member: no member has a finite val[{key!r}]")
  eligible = [i for i in finite if not members[i].get("collapsed", False)]
  all_collapsed = not eligible
  pool = eligible or finite
  best = max(pool, key=lambda i: (scores[i], -i))  # Highest score, then the first.
  reason = (f"every member collapsed: the best validation {key} among them, not a model to "
            "trade" if all_collapsed else
            f"best validation {key} of {len(pool)} non-collapsed member(s) out of {len(members)}")
  mem = members[best]
  return {"index": best, "key": key, "val_score": scores[best],
          "settings": dict(mem.get("settings", {})), "val": dict(mem["val"]),
          "test": dict(mem.get("test", {})), "collapsed": bool(mem.get("collapsed", False)),
          "all_collapsed": all_collapsed, "eligible": len(eligible), "reason": reason}


def _hashable(value):
  return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def swept_keys(members, include_seed=False):
  """The settings that differ between members, in the first member's key order.

  Args:
    members: list of member dicts.
    include_seed: whether to list "train.seed" when it varies.

  Returns:
    List of setting names.
  """
  keys = []
  for mem in members:
    for k in mem.get("settings", {}):
      if k not in keys:
        keys.append(k)
  out = []
  for k in keys:
    if k == SEED_KEY and not include_seed:
      continue
    values = {_hashable(m.get("settings", {}).get(k)) for m in members}
    if len(values) > 1:
      out.append(k)
  return out


def rank_table(members, key="f1", metrics=RANK_METRICS):
  """Every member ranked by validation `key` (non-collapsed first), with its test figures.

  Args:
    members: list of member dicts.
    key: the validation metric that ranks (as in `select_member`).
    metrics: the figures each row carries from "val" and "test".

  Returns:
    List of rows {"rank", "index", "settings" (swept keys and the seed), "val", "test",
    "collapsed", "selected"}, best first; the first row is `select_member`'s choice.
  """
  chosen = select_member(members, key)["index"]
  shown = swept_keys(members, include_seed=True)
  scores = [_score(m["val"][key]) for m in members]

  def order(i):
    s = scores[i]
    ok = math.isfinite(s)
    return (not ok, bool(members[i].get("collapsed", False)) and i != chosen,
            -s if ok else 0.0, i)

  rows = []
  for rank, i in enumerate(sorted(range(len(members)), key=order), 1):
    mem = members[i]
    rows.append({"rank": rank, "index": i,
                 "settings": {k: mem.get("settings", {}).get(k) for k in shown},
                 "val": {m: mem["val"].get(m) for m in metrics},
                 "test": {m: mem.get("test", {}).get(m) for m in metrics},
                 "collapsed": bool(mem.get("collapsed", False)), "selected": i == chosen})
  return rows


def _cell(v):
  if isinstance(v, float):
    return "—" if not math.isfinite(v) else f"{v:.3f}"
  return "—" if v is None else str(v)


def rank_markdown(members, key="f1", metrics=RANK_METRICS):
  """`rank_table` as a markdown table for compare.md (the selected row in bold).

  Args:
    members: list of member dicts.
    key: the validation metric that ranks.
    metrics: the figures shown for validation and test.

  Returns:
    The table, ending in a newline.
  """
  rows = rank_table(members, key, metrics)
  shown = list(rows[0]["settings"])
  head = (["rank"] + shown + [f"val {m}" for m in metrics] + [f"test {m}" for m in metrics]
          + ["collapsed"])
  lines = [f"Members ranked by validation {key}; the first (bold) is selected on validation "
           "alone and its test figures are the result.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = ([str(r["rank"])] + [_cell(r["settings"][k]) for k in shown]
             + [_cell(r["val"][m]) for m in metrics] + [_cell(r["test"][m]) for m in metrics]
             + ["yes" if r["collapsed"] else ""])
    if r["selected"]:
      cells = [f"**{c}**" if c else c for c in cells]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
