"""Walk-forward and combinatorial purged cross-validation folds, in calendar time.

The timeline (every instrument's bar timestamps, pooled) is cut at common timestamps into
groups of equal pooled bar counts. A fold names its test groups and its training groups:
  expanding  folds + 1 groups; fold k tests group k + 1 and trains on groups 0..k;
  rolling    the same, training on the `train_groups` groups just before the test;
  cpcv       `folds` groups; every choice of `test_groups` of them is a fold (in
             itertools.combinations order) and trains on all the others (López de Prado,
             "Advances in Financial Machine Learning", ch. 12).
A sample is the window ending at bar t; its footprint is the time span of the bars it reads,
[ts[t - T], ts[t + h]]. A sample belongs to the group holding its window's last bar ts[t],
so the test groups' samples tile the out-of-sample timeline without holes. Then:
  purge    a training or validation sample whose footprint overlaps the footprint hull of
           any test group (pooled over instruments: no instrument trains on a span another
           is tested on) is dropped;
  embargo  so is one whose footprint starts within `embargo` bars (of its own instrument)
           after the end of a test group's hull, where later data trains (cpcv);
  validate the latest `val_fraction` of the remaining samples (cut at one timestamp for all
           instruments) validates; training samples are purged and embargoed around the
           validation groups' hulls the same way.
"""

import itertools
import json
import math

import numpy as np

SCHEMES = ("expanding", "rolling", "cpcv")


def num_groups(scheme, folds):
  """Groups the timeline is cut into: folds + 1 for walk-forward (the first only trains)."""
  return folds if scheme == "cpcv" else folds + 1


def plan(scheme, folds, test_groups=2, train_groups=1):
  """The folds of a scheme as group indices.

  Args:
    scheme: "expanding", "rolling" or "cpcv".
    folds: N: walk-forward test periods, or cpcv groups.
    test_groups: K, cpcv only.
    train_groups: groups that train before each test group, rolling only.

  Returns:
    [{"groups": G, "test": [g, ...], "train": [g, ...]}] in fold order.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"--scheme={scheme!r}: use one of {', '.join(SCHEMES)}")
  if folds < (3 if scheme == "cpcv" else 1):
    raise ValueError(f"--folds={folds} must be >= {3 if scheme == 'cpcv' else 1} for {scheme}")
  g = num_groups(scheme, folds)
  if scheme == "cpcv":
    if not 1 <= test_groups < folds:
      raise ValueError(f"--test_groups={test_groups} must be between 1 and --folds - 1 "
                       f"({folds - 1})")
    return [{"groups": g, "test": list(c), "train": [j for j in range(g) if j not in c]}
            for c in itertools.combinations(range(g), test_groups)]
  if scheme == "rolling" and train_groups < 1:
    raise ValueError(f"walkforward.train_groups={train_groups} must be >= 1")
  first = (lambda k: 0) if scheme == "expanding" else (lambda k: max(0, k + 1 - train_groups))
  return [{"groups": g, "test": [k + 1], "train": list(range(first(k), k + 1))}
          for k in range(folds)]


def cpcv_paths(folds, test_groups):
  """The φ = K/N·C(N, K) backtest paths of cpcv: path p takes group g's predictions from
  the p-th fold (in fold order) that tests g (skfolio's `recombined_paths`).

  Returns:
    [paths][folds] fold indices: paths[p][g] is the fold whose test predictions of group g
    path p uses.
  """
  combos = list(itertools.combinations(range(folds), test_groups))
  per_group = [[i for i, c in enumerate(combos) if g in c] for g in range(folds)]
  n_paths = math.comb(folds - 1, test_groups - 1)
  return [[per_group[g][p] for g in range(folds)] for p in range(n_paths)]


def group_edges(timestamps, groups):
  """Cut timestamps of `groups` groups of equal pooled bar counts.

  Args:
    timestamps: one increasing int64 [n_i] array per instrument.

  Returns:
    int64 [groups + 1]: group j holds bars with edges[j] <= ts < edges[j + 1]; edges[0] is
    the first timestamp and edges[-1] the last + 1.
  """
  pooled = np.sort(np.concatenate([np.asarray(t, np.int64) for t in timestamps]))
  n = len(pooled)
  if n < groups:
    raise ValueError(f"{n} bars cannot be cut into {groups} groups")
  cuts = [int(pooled[int(round(n * j / groups))]) for j in range(groups)]
  return np.asarray(cuts + [int(pooled[-1]) + 1], np.int64)


def parse_fold(text):
  """config.data.fold (JSON: {"groups": G, "test": [...], "train": [...]}) → dict, or None
  for "" (the usual val/test fractions). Raises ValueError naming what is wrong."""
  if not text:
    return None
  try:
    fold = json.loads(text)
    g, test, train = int(fold["groups"]), list(fold["test"]), list(fold["train"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"config.data.fold={text!r} is invalid: expected JSON "
                     '{"groups": G, "test": [g, ...], "train": [g, ...]}' + f" ({e})") from None
  bad = [j for j in test + train if type(j) is not int or not 0 <= j < g]  # "1", 1.5: bad.
  if bad or not test or not train or set(test) & set(train):
    raise ValueError(f"config.data.fold={text!r} is invalid: test and train must be "
                     f"non-empty, disjoint groups in 0..{g - 1}")
  return {"groups": g, "test": sorted(test), "train": sorted(train)}


def _hulls(ts_list, ends_list, group_of, groups, window, horizon):
  """Per group of `groups`: (start, end) ns of the pooled footprints of its samples."""
  out = []
  for g in groups:
    lo, hi = [], []
    for ts, ends, grp in zip(ts_list, ends_list, group_of):
      e = ends[grp == g]
      if len(e):
        lo.append(ts[e[0] - window])
        hi.append(ts[e[-1] + horizon])
    if lo:
      out.append((int(min(lo)), int(max(hi))))
  return out


def _clear_of(ts, ends, hulls, window, horizon, embargo):
  """Mask of `ends` whose footprint overlaps no hull and starts no less than `embargo`
  bars after the end of each hull it follows."""
  keep = np.ones(len(ends), bool)
  start, stop = ts[ends - window], ts[ends + horizon]
  for z0, z1 in hulls:
    keep &= ~((start <= z1) & (stop >= z0))
    if embargo:
      after = int(np.searchsorted(ts, z1, side="right"))  # This instrument's first bar after.
      keep &= ~((ends - window < after + embargo) & (ends - window >= after))
  return keep


def fold_ends(timestamps, candidates, fold, edges, window, horizon, val_fraction, embargo):
  """The window ends of each split of one fold, per instrument.

  Args:
    timestamps: one increasing int64 [n_i] array per instrument.
    candidates: per instrument, int64 increasing window ends with a whole footprint
      (t - window >= 0, t + horizon < n_i).
    fold: {"test": [...], "train": [...]} group indices (parse_fold / plan).
    edges: group_edges of the timeline.
    window, horizon: T, h.
    val_fraction: share of the non-test samples (the latest) that validates.
    embargo: bars (>= 0), as in the module docstring.

  Returns:
    (ends, periods): ends is a list with one {"train", "val", "test"} → int64 array per
    instrument; periods is {split: [[start_ns, end_ns], ...]}: the span of each group's
    window-end times in that split (end inclusive).
  """
  if embargo < 0:
    raise ValueError(f"embargo must be >= 0, got {embargo}")
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
  ts_list = [np.asarray(t, np.int64) for t in timestamps]
  cands = [np.asarray(c, np.int64) for c in candidates]
  group_of = [np.searchsorted(edges, ts[c], side="right") - 1 for ts, c in zip(ts_list, cands)]
  test_hulls = _hulls(ts_list, cands, group_of, fold["test"], window, horizon)
  out, train_sets = [], []
  for ts, c, grp in zip(ts_list, cands, group_of):
    test = c[np.isin(grp, fold["test"])]
    rest = np.isin(grp, fold["train"])
    rest &= _clear_of(ts, c, test_hulls, window, horizon, embargo)
    out.append({"test": test})
    train_sets.append(c[rest])
  # The validation cut: one timestamp for all instruments, at the latest val_fraction.
  pooled = np.sort(np.concatenate([ts[t] for ts, t in zip(ts_list, train_sets)]))
  n = len(pooled)
  b = int(round(n * (1.0 - val_fraction)))
  val_start = int(pooled[b]) if b < n else (int(pooled[-1]) + 1 if n else 0)
  val_group = [np.searchsorted(edges, ts[t], side="right") - 1
               for ts, t in zip(ts_list, train_sets)]
  is_val = [ts[t] >= val_start for ts, t in zip(ts_list, train_sets)]
  val_hulls = _hulls(ts_list, [t[v] for t, v in zip(train_sets, is_val)],
                     [g[v] for g, v in zip(val_group, is_val)], fold["train"], window, horizon)
  for ts, t, v, o in zip(ts_list, train_sets, is_val, out):
    o["val"] = t[v]
    train = t[~v]
    o["train"] = train[_clear_of(ts, train, val_hulls, window, horizon, embargo)]
  periods = {}
  for split in ("train", "val", "test"):
    spans = []  # [first group, start, end]
    for g in range(len(edges) - 1):
      times = [x[(x >= edges[g]) & (x < edges[g + 1])] for x in
               (ts[o[split]] for ts, o in zip(ts_list, out))]
      times = [x for x in times if len(x)]
      if not times:
        continue
      lo, hi = int(min(x[0] for x in times)), int(max(x[-1] for x in times))
      if spans and spans[-1][0] == g - 1:  # Consecutive groups: one span.
        spans[-1][0], spans[-1][2] = g, hi
      else:
        spans.append([g, lo, hi])
    periods[split] = [[lo, hi] for _, lo, hi in spans]
  return out, periods


def footprint_pieces(ends, window):
  """The bars the windows `ends` read, as [(start, stop)] runs (for the normaliser's rows)."""
  if not len(ends):
    return []
  rows = np.zeros(int(ends[-1]) + 1, bool)
  for e0, e1 in _runs(ends):
    rows[max(e0 - window + 1, 0):e1 + 1] = True
  edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.view(np.int8), [0]])))
  return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _runs(ends):
  """[(first, last)] of the runs of consecutive values in increasing `ends`."""
  breaks = np.flatnonzero(np.diff(ends) != 1)
  firsts = np.concatenate([[0], breaks + 1])
  lasts = np.concatenate([breaks, [len(ends) - 1]])
  return [(int(ends[a]), int(ends[b])) for a, b in zip(firsts, lasts)]


def fold_split(timestamps, fold, window, horizon, val_fraction, embargo):
  """fold_ends over every whole window of each instrument, in build_dataset's terms.

  Returns:
    (ends, train_pieces, fact): ends is {split: [int64 array per instrument]};
    train_pieces per instrument, the bar runs its training windows read (the normaliser's
    rows); fact is the fold and its periods as ISO times (Dataset.facts["fold"]).
  """
  edges = group_edges(timestamps, fold["groups"])
  cands = [np.arange(window, len(t) - horizon, dtype=np.int64) for t in timestamps]
  per, periods = fold_ends(timestamps, cands, fold, edges, window, horizon, val_fraction,
                           embargo)
  ends = {s: [p[s] for p in per] for s in ("train", "val", "test")}
  fact = {**fold, "edges": [int(e) for e in edges],
          "periods": {s: [[iso(a), iso(b)] for a, b in v] for s, v in periods.items()}}
  return ends, [footprint_pieces(e, window) for e in ends["train"]], fact


def iso(ns):
  return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def empty_split_message(split, fact, window, horizon, embargo, data_dir):
  """Why a fold's split has no window, in one line."""
  return (f"no {split} windows in fold {json.dumps({k: fact[k] for k in ('test', 'train')})} "
          f"of {fact['groups']} groups of {data_dir}: a window needs config.data.window={window}"
          f" + horizon={horizon} + 1 bars inside its group, clear of the test groups' windows "
          f"(embargo={embargo}); use fewer folds, a smaller window or more data")
