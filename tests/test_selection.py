"""Tests for jaxquant.selection: CSCV PBO against independent references (a plain
brute-force formulation here, and purgedcv's when installed), known cases, and a
selection that never reads the test split."""

import itertools
import math
import statistics

from hypothesis import given, settings, strategies as st
import numpy as np
import pandas as pd
import pytest

from jaxquant import selection


def ref_sharpe(xs):
  """mean / sample stdev in exact-ish arithmetic (statistics); a constant slice scores 0."""
  if len(set(xs)) < 2:
    return 0.0
  return statistics.mean(xs) / statistics.stdev(xs)


def ref_pbo(perf, n_splits, score=ref_sharpe):
  """CSCV written out the long way: lists, explicit loops, ranks from sorted() positions.

  Returns (pbo, logits keyed by the in-sample block tuple)."""
  rows = [list(map(float, r)) for r in perf]
  t, m = len(rows), len(rows[0])
  size, extra = divmod(t, n_splits)
  bounds, start = [], 0
  for b in range(n_splits):
    stop = start + size + (1 if b < extra else 0)
    bounds.append(list(range(start, stop)))
    start = stop
  logits = {}
  for chosen in itertools.combinations(range(n_splits), n_splits // 2):
    rest = [b for b in range(n_splits) if b not in chosen]
    is_rows = [r for b in chosen for r in bounds[b]]
    oos_rows = [r for b in rest for r in bounds[b]]
    is_s = [score([rows[r][j] for r in is_rows]) for j in range(m)]
    oos_s = [score([rows[r][j] for r in oos_rows]) for j in range(m)]
    best = min(j for j in range(m) if is_s[j] == max(is_s))
    ordered = sorted(oos_s)
    places = [k + 1 for k, v in enumerate(ordered) if v == oos_s[best]]
    w = (sum(places) / len(places)) / (m + 1)
    logits[chosen] = math.log(w / (1 - w))
  return sum(v <= 0 for v in logits.values()) / len(logits), logits


def ours_by_combo(result, n_splits):
  combos = itertools.combinations(range(n_splits), n_splits // 2)
  return dict(zip(combos, result["logits"]))


def assert_matches_reference(perf, n_splits, metric=None, score=ref_sharpe):
  got = selection.pbo(perf, n_splits, metric=metric)
  want_pbo, want = ref_pbo(perf, n_splits, score)
  assert got["combinations"] == math.comb(n_splits, n_splits // 2) == len(want)
  assert got["pbo"] == want_pbo
  mine = ours_by_combo(got, n_splits)
  for combo, value in want.items():
    assert mine[combo] == pytest.approx(value, abs=1e-12), combo


@st.composite
def perf_matrices(draw):
  """Small [T, M] matrices of continuous noise, some with duplicated or constant columns
  (exact ties) and a drift per column; T need not divide by S."""
  half = draw(st.integers(1, 4))
  m = draw(st.integers(2, 6))
  t = draw(st.integers(2 * half, 2 * half + 13))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  perf = rng.standard_normal((t, m)) + rng.normal(0, 0.5, m)
  if draw(st.booleans()):
    perf[:, draw(st.integers(0, m - 1))] = perf[:, draw(st.integers(0, m - 1))]
  if draw(st.booleans()):
    perf[:, draw(st.integers(0, m - 1))] = draw(st.sampled_from([0.0, 1.5, -2.0]))
  return perf, 2 * half


@settings(max_examples=60, deadline=None)
@given(perf_matrices())
def test_pbo_equals_the_brute_force_reference(case):
  perf, n_splits = case
  assert_matches_reference(perf, n_splits)


@settings(max_examples=25, deadline=None)
@given(perf_matrices())
def test_pbo_with_a_callable_metric_equals_the_reference(case):
  perf, n_splits = case
  assert_matches_reference(perf, n_splits, metric=lambda x: x.mean(axis=0),
                           score=statistics.mean)


def test_default_metric_equals_column_sharpe_slice_by_slice():
  perf = np.random.default_rng(3).standard_normal((57, 9))
  fast = selection.pbo(perf, 8)
  slow = selection.pbo(perf, 8, metric=selection.column_sharpe)
  assert fast["pbo"] == slow["pbo"]
  np.testing.assert_allclose(fast["logits"], slow["logits"], atol=1e-12)
  assert fast["degradation_slope"] == pytest.approx(slow["degradation_slope"], rel=1e-9)


def test_pbo_equals_purgedcv():
  """purgedcv 0.1.11 (MIT) is an outside CSCV implementation. It iterates the OOS blocks
  and counts λ < 0; we iterate the IS blocks and count λ ≤ 0 (the paper's closed interval):
  equal per combination, and equal PBO where no λ is exactly 0 (an even M, no ties)."""
  purgedcv = pytest.importorskip("purgedcv")
  rng = np.random.default_rng(7)
  for t, m, s in ((96, 6, 8), (61, 10, 6), (40, 4, 10)):
    perf = rng.standard_normal((t, m)) + rng.normal(0, 0.2, m)
    ours = selection.pbo(perf, s)
    theirs = purgedcv.probability_of_backtest_overfitting(perf.T, n_splits=s)
    combos = list(itertools.combinations(range(s), s // 2))
    by_oos = dict(zip(combos, theirs.logits))
    for combo, value in zip(combos, ours["logits"]):
      rest = tuple(b for b in range(s) if b not in combo)
      assert value == pytest.approx(by_oos[rest], abs=1e-12)
    assert ours["pbo"] == theirs.pbo == np.mean(np.asarray(theirs.logits) <= 0)
    assert ours["degradation_slope"] == pytest.approx(theirs.slope, rel=1e-9)


def test_noise_gives_pbo_near_one_half_and_odd_m_counts_the_median():
  """Pure noise: IS and OOS halves are independent, so the IS winner's OOS rank is uniform
  on 1..M and E[PBO] = P(rank ≤ (M+1)/2) = 1/2 for even M, (M+1)/(2M) for odd M."""
  rng = np.random.default_rng(0)
  for m, sims in ((10, 300), (5, 300)):
    values = [selection.pbo(rng.standard_normal((64, m)), 8)["pbo"] for _ in range(sims)]
    expected = 0.5 if m % 2 == 0 else (m + 1) / (2 * m)
    # The mean of 300 has a standard error of about 0.015 (measured): a band of 3.4 of them.
    assert abs(np.mean(values) - expected) < 0.05, (m, np.mean(values))


def test_a_real_edge_gives_pbo_near_zero():
  rng = np.random.default_rng(1)
  perf = rng.standard_normal((320, 12))
  perf[:, 5] += 0.6  # Member 5 earns more in every block.
  out = selection.pbo(perf, 16)
  assert out["combinations"] == 12870
  assert out["pbo"] < 0.02
  assert out["prob_oos_loss"] < 0.02


def test_members_best_in_half_the_blocks_and_worst_in_the_other_give_pbo_one():
  """One member per way of choosing half the blocks: +1 there, −1 elsewhere (plus a little
  noise). Whatever the in-sample half, its own member wins it and is last out of sample."""
  s, rows = 8, 3
  halves = list(itertools.combinations(range(s), s // 2))
  block = np.repeat(np.arange(s), rows)
  rng = np.random.default_rng(2)
  perf = np.stack([np.where(np.isin(block, h), 1.0, -1.0) for h in halves], axis=1)
  perf += rng.normal(0, 0.05, perf.shape)
  out = selection.pbo(perf, s)
  assert out["pbo"] == 1.0
  assert max(out["logits"]) == pytest.approx(math.log(1 / len(halves)))
  assert out["prob_oos_loss"] == 1.0


def test_ties_are_broken_as_documented():
  """Hand cases. Two identical dominant members of three: the first is selected and shares
  rank (3 + 2) / 2 out of sample, ω = 2.5 / 4, λ = log(5/3) > 0 in every combination.
  Two identical members alone: rank 1.5, ω = 1/2, λ = 0, which counts as overfit."""
  rng = np.random.default_rng(4)
  good = rng.standard_normal(40) + 3.0
  perf = np.stack([good, good, rng.standard_normal(40) - 3.0], axis=1)
  out = selection.pbo(perf, 4)
  np.testing.assert_allclose(out["logits"], math.log(5 / 3))
  assert out["pbo"] == 0.0
  twins = selection.pbo(np.stack([good, good], axis=1), 4)
  assert twins["logits"] == [0.0] * 6 and twins["pbo"] == 1.0


@pytest.mark.parametrize("perf, s, match", [
    (np.zeros((7, 3)), 8, "T=7 rows, fewer than n_splits=8"),
    (np.zeros((20, 3)), 5, "n_splits=5 is odd"),
    (np.zeros((20, 1)), 4, "M=1 member"),
    (np.zeros(20), 4, r"\[T, M\] matrix"),
    (np.where(np.eye(20, 3) > 0, np.nan, 0.0), 4, r"perf\[0, 0\] is nan"),
])
def test_pbo_refuses_bad_input_in_one_line(perf, s, match):
  with pytest.raises(ValueError, match=match) as e:
    selection.pbo(perf, s)
  assert "\n" not in str(e.value)


def test_pbo_refuses_a_metric_of_the_wrong_shape():
  with pytest.raises(ValueError, match="metric must return 3 finite scores"):
    selection.pbo(np.ones((8, 3)), 2, metric=lambda x: x.mean())


def member(alpha, seed, val_f1, test_f1, collapsed=False):
  return {"settings": {"loss.alpha": alpha, "loss.gamma": 2.0, "train.seed": seed},
          "val": {"f1": val_f1, "pr_auc": val_f1 / 2, "precision": val_f1 / 3, "roc_auc": 0.55},
          "test": {"f1": test_f1, "pr_auc": 0.2, "precision": 0.1, "roc_auc": 0.5},
          "collapsed": collapsed}


def random_members(rng, n):
  return [member(["1,4", "1,8", "1,14.6"][i % 3], i // 3, float(rng.uniform(0.1, 0.5)),
                 float(rng.uniform(0.1, 0.5)), bool(rng.uniform() < 0.3)) for i in range(n)]


def test_select_member_matches_pandas_and_never_reads_test():
  rng = np.random.default_rng(5)
  for _ in range(30):
    members = random_members(rng, 9)
    df = pd.DataFrame({"f1": [m["val"]["f1"] for m in members],
                       "collapsed": [m["collapsed"] for m in members]})
    live = df[~df["collapsed"]]
    want = int((live if len(live) else df)["f1"].idxmax())
    got = selection.select_member(members)
    assert got["index"] == want and got["all_collapsed"] == live.empty
    assert got["test"] == members[want]["test"]
    shuffled = [dict(m, test=members[j]["test"]) for m, j in
                zip(members, rng.permutation(len(members)))]
    assert selection.select_member(shuffled)["index"] == want


def test_select_member_passes_over_collapsed_nan_and_takes_the_first_of_a_tie():
  members = [member("1,4", 0, 0.9, 0.9, collapsed=True), member("1,8", 0, float("nan"), 0.8),
             member("1,14.6", 0, 0.3, 0.1), member("1,4", 1, 0.3, 0.7)]
  got = selection.select_member(members)
  assert got["index"] == 2 and got["eligible"] == 2 and not got["all_collapsed"]
  dead = [dict(m, collapsed=True) for m in members]
  got = selection.select_member(dead)
  assert got["index"] == 0 and got["all_collapsed"] and "every member collapsed" in got["reason"]


def test_select_member_errors_name_the_member_and_key():
  with pytest.raises(ValueError, match=r"members\[1\]\['val'\] has no 'pr_auc'"):
    selection.select_member([member("1,4", 0, .3, .3), {"val": {"f1": .2}}], key="pr_auc")
  with pytest.raises(ValueError, match="non-empty list"):
    selection.select_member([])
  with pytest.raises(ValueError, match="no member has a finite"):
    selection.select_member([member("1,4", 0, float("nan"), .3)])


def test_rank_table_orders_like_pandas_and_marks_the_selected():
  members = random_members(np.random.default_rng(6), 12)
  rows = selection.rank_table(members)
  df = pd.DataFrame({"f1": [m["val"]["f1"] for m in members],
                     "collapsed": [m["collapsed"] for m in members]})
  want = df.sort_values(["collapsed", "f1"], ascending=[True, False], kind="stable")
  assert [r["index"] for r in rows] == list(want.index)
  assert rows[0]["selected"] and sum(r["selected"] for r in rows) == 1
  assert list(rows[0]["settings"]) == ["loss.alpha", "train.seed"]  # Swept keys and seed.
  md = selection.rank_markdown(members)
  assert md.count("\n") == len(members) + 4 and "| **1** |" in md


def test_swept_keys_lists_what_varies():
  members = [member("1,4", 0, .3, .3), member("1,8", 1, .3, .3)]
  members[1]["settings"]["loss.w"] = [1, 2]
  assert selection.swept_keys(members) == ["loss.alpha", "loss.w"]
  assert selection.swept_keys(members, include_seed=True) == ["loss.alpha", "train.seed",
                                                              "loss.w"]
