"""Tests for jaxquant.metrics, using scikit-learn as the reference."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from jaxquant import metrics as M

# (seed, prior, ties): every seed differs; ties come from rounding scores to 2 decimals
CASES = [(0, 0.05, False), (1, 0.05, True), (2, 0.07, False), (3, 0.07, True),
         (4, 0.3, False), (5, 0.3, True)]


def make_data(seed, prior=0.07, ties=False, n=2000):
  """Imbalanced labels with weakly informative scores in (0, 1)."""
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < prior).astype(int)
  y[:2] = [0, 1]  # both classes always present
  scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 0.8 * y - 2)))
  if ties:
    scores = np.round(scores, 2)
  return y, scores


def sk_f1(y, pred):
  return skm.f1_score(y, pred, zero_division=0)


def loop_f1(y, pred):
  """Textbook F1 (zero_division=0); cheaper than sklearn inside hypothesis."""
  tp = np.sum(y & pred)
  return 2 * tp / (y.sum() + pred.sum()) if tp else 0.0


def brute_f1_table(y, scores, f1=sk_f1):
  """(threshold, predicted-positive share, F1) for every distinct score, highest first."""
  return [(float(t), (scores >= t).mean(), f1(y, scores >= t)) for t in np.unique(scores)[::-1]]


def brute_best_f1(table, n, min_rate=0.0):
  """Best admissible row of brute_f1_table; ties keep the highest threshold."""
  floor = max(min_rate, 1 / n)
  best_t, best_f1 = math.nan, 0.0
  for t, rate, f1 in table:
    if floor <= rate <= 1 - floor and (math.isnan(best_t) or f1 > best_f1 + 1e-12):
      best_t, best_f1 = t, f1
  return best_t, best_f1


# ---------------------------------------------------------------- vs sklearn


@pytest.mark.parametrize("seed,prior,ties", CASES)
def test_binary_metrics_match_sklearn(seed, prior, ties):
  y, s = make_data(seed, prior, ties)
  for thr in (np.quantile(s, 0.9), s.max() + 1, s.min()):  # typical, none positive, all positive
    pred = (s >= thr).astype(int)
    m = M.binary_metrics(y, s, thr)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert np.array_equal(M.confusion(y, pred), skm.confusion_matrix(y, pred, labels=[0, 1]))
    assert m["n"] == len(y) and m["prior"] == pytest.approx(y.mean())
    assert m["predicted_positive_rate"] == pytest.approx(pred.mean())


@pytest.mark.parametrize("seed,prior,ties", CASES)
def test_ranking_metrics_match_sklearn(seed, prior, ties):
  y, s = make_data(seed, prior, ties)
  assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-9)
  assert M.pr_auc(y, s) == pytest.approx(skm.average_precision_score(y, s), rel=1e-9)


@pytest.mark.parametrize("seed,prior,ties", CASES)
def test_curves_match_sklearn(seed, prior, ties):
  y, s = make_data(seed, prior, ties)
  fpr, tpr, thr = M.roc_curve(y, s)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_array_equal(thr[1:], sk_thr[1:])
  assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-9)

  prec, rec, pthr = M.pr_curve(y, s)
  sk_prec, sk_rec, sk_pthr = skm.precision_recall_curve(y, s)
  np.testing.assert_allclose(prec, sk_prec)
  np.testing.assert_allclose(rec, sk_rec)
  np.testing.assert_array_equal(pthr, sk_pthr)


@pytest.mark.parametrize("seed,prior,ties", CASES[::2] + CASES[5:])
def test_best_f1_matches_brute_force(seed, prior, ties):
  y, s = make_data(seed, prior, ties, n=60)
  table = brute_f1_table(y, s)
  for min_rate in (0.0, 0.2):
    t, f1 = M.best_f1_threshold(y, s, min_rate=min_rate)
    bt, bf1 = brute_best_f1(table, len(y), min_rate)
    assert t == bt
    assert f1 == pytest.approx(bf1, rel=1e-12)
    assert min_rate <= (s >= t).mean() < 1


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_threshold_sweep_matches_sklearn(seed, ties):
  y, s = make_data(seed, 0.07, ties)
  thresholds = [-1.0, 0.05, 0.1, float(np.median(s)), 0.3, 0.5, 2.0]
  rows = M.threshold_sweep(y, s, thresholds)
  assert [r["threshold"] for r in rows] == thresholds
  for r in rows:
    pred = s >= r["threshold"]
    assert r["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert r["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert r["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    assert r["signals"] == pred.sum()
    assert r["predicted_positive_rate"] == pytest.approx(pred.mean())


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=1, max_size=25),
    st.sampled_from([0.0, 0.1, 0.3]),
)
def test_property_best_f1_and_aucs(pairs, min_rate):
  """On small tied inputs: best F1 equals brute force, AUCs equal sklearn's."""
  y = np.array([p[0] for p in pairs])
  s = np.array([p[1] for p in pairs], dtype=float) / 6
  t, f1 = M.best_f1_threshold(y, s, min_rate)
  bt, bf1 = brute_best_f1(brute_f1_table(y, s, loop_f1), len(y), min_rate)
  assert t == bt or (math.isnan(t) and math.isnan(bt))
  assert f1 == pytest.approx(bf1, rel=1e-12)
  if 0 < y.sum() < len(y):
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-9)
    assert M.pr_auc(y, s) == pytest.approx(skm.average_precision_score(y, s), rel=1e-9)


# ----------------------------------------------------- baselines and collapse


def test_baselines():
  y, s = make_data(3, 0.07)
  m = M.binary_metrics(y, s, 0.2)
  p = y.mean()
  assert m["accuracy_baseline"] == pytest.approx(skm.accuracy_score(y, np.zeros_like(y)))
  assert m["f1_baseline"] == pytest.approx(skm.f1_score(y, np.ones_like(y)))
  assert m["f1_baseline"] == pytest.approx(2 * p / (1 + p))
  assert m["precision_lift"] == pytest.approx(m["precision"] / p)
  assert math.isnan(M.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.2)["precision_lift"])
  summary = M.summarize(y, s, 0.2)
  assert summary["pr_auc_baseline"] == pytest.approx(p)
  assert summary["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s))
  assert summary["pr_auc"] == pytest.approx(skm.average_precision_score(y, s))


def test_best_f1_never_picks_everything_positive():
  # useless scores, half positives: "all positive" (F1 = 2/3) would win if allowed
  y = np.array([0, 1] * 50)
  s = np.tile([0.2, 0.1], 50)
  t, f1 = M.best_f1_threshold(y, s)
  assert t == 0.2 and f1 == 0.0
  t, f1 = M.best_f1_threshold(y, np.full(100, 0.5))  # constant scores: nothing admissible
  assert math.isnan(t) and f1 == 0.0


def test_single_class_and_no_positive_inputs():
  s = [0.1, 0.4, 0.3]
  assert math.isnan(M.roc_auc([1, 1, 1], s))
  assert math.isnan(M.roc_auc([0, 0, 0], s))
  assert math.isnan(M.pr_auc([0, 0, 0], s))
  m = M.binary_metrics([0, 0, 0], s, 0.2)
  assert m["precision"] == m["recall"] == m["f1"] == 0.0


def test_collapse_detection():
  collapsed, reason = M.is_collapsed(np.full(50, 0.3), 0.3, 0.001)
  assert collapsed and "constant" in reason
  s = np.linspace(0, 1, 1234)
  collapsed, reason = M.is_collapsed(s, 2.0, 0.001)
  assert collapsed and reason == "predicts class 0 for all 1234 windows"
  collapsed, reason = M.is_collapsed(s, -1.0, 0.001)
  assert collapsed and "class 1" in reason
  collapsed, reason = M.is_collapsed(s, s[-1], 0.01)  # one positive of 1234
  assert collapsed and "below floor" in reason
  collapsed, reason = M.is_collapsed(s, s[1], 0.01)  # one negative
  assert collapsed and "above ceiling" in reason
  assert M.is_collapsed(s, math.nan, 0.0)[0]
  collapsed, reason = M.is_collapsed(s, 0.5, 0.01)
  assert not collapsed and reason.startswith("predicted-positive rate 0.5")


def test_random_model_auc_near_half():
  rng = np.random.default_rng(7)
  y = (rng.random(20000) < 0.07).astype(int)
  s = rng.random(20000)
  assert abs(M.roc_auc(y, s) - 0.5) < 0.03
  assert abs(M.pr_auc(y, s) - y.mean()) < 0.02


def test_class_shares():
  assert M.class_shares([0, 2, 2, 1], 3) == [0.25, 0.25, 0.5]
  assert M.class_shares(np.zeros(5, int), 2) == [1.0, 0.0]
  with pytest.raises(ValueError):
    M.class_shares([0, 3], 3)


def test_validation_errors():
  with pytest.raises(ValueError, match="same length"):
    M.binary_metrics([0, 1], [0.1, 0.2, 0.3], 0.5)
  with pytest.raises(ValueError, match="1-D"):
    M.roc_auc(np.zeros((3, 1)), np.zeros((3, 1)))
  with pytest.raises(ValueError, match="0 and 1"):
    M.pr_auc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match="nan"):
    M.roc_auc([0, 1], [0.1, math.nan])
  # lists and bools are accepted
  assert M.roc_auc([False, True], [0.1, 0.2]) == 1.0


def test_public_helpers():
  y, s = M.validate_binary([True, False, True], [1, 0, 2])
  assert y.dtype == np.int64 and y.tolist() == [1, 0, 1]
  assert s.dtype == np.float64 and s.tolist() == [1.0, 0.0, 2.0]
  with pytest.raises(ValueError, match="probs must have the same length"):
    M.validate_binary([0, 1], [0.1, 0.2, 0.3], "probs")
  with pytest.raises(ValueError, match="x is empty"):
    M.as_1d([], "x")
  with pytest.raises(ValueError, match="0 and 1"):
    M.as_labels([0, 2], "y")
  with pytest.raises(ValueError, match="p contains nan"):
    M.as_scores([0.1, math.inf], "p")
  q = M.safe_div([[1, 2], [3, 0]], [[4, 0], [6, 0]])
  assert q.dtype == np.float64 and q.tolist() == [[0.25, 0.0], [0.5, 0.0]]



def test_best_f1_on_a_million_beats_neighbours_and_quantiles():
  """At scale (1e6 scores, ties from rounding): the chosen threshold's F1, counted
  directly, is the one returned and at least that of its two neighbouring score
  values and of 40 admissible quantile thresholds. (Its speed is measured by
  benchmarks/metrics_speed.py, not asserted in a test.)"""
  rng = np.random.default_rng(0)
  y = (rng.random(1_000_000) < 0.07).astype(int)
  s = np.round(rng.random(1_000_000) + 0.3 * y, 4)
  t, f1 = M.best_f1_threshold(y, s, min_rate=0.001)

  def direct_f1(thr):
    pred = s >= thr
    tp = int(np.sum(pred & (y == 1)))
    return 2 * tp / (int(pred.sum()) + int(y.sum()))
  assert 0.001 <= (s >= t).mean() <= 0.999
  assert f1 == pytest.approx(direct_f1(t), rel=1e-12)
  values = np.unique(s)
  at = np.searchsorted(values, t)
  others = np.quantile(s, np.linspace(0.002, 0.998, 40), method="lower")
  for q in np.concatenate([values[[at - 1, at + 1]], others]):
    if 0.001 <= (s >= q).mean() <= 0.999:
      assert direct_f1(q) <= f1 + 1e-12, q


# ------------------------------------------------------------------ multiclass


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 4
  y = rng.choice(k, size=500, p=[0.45, 0.45, 0.1, 0.0])  # class 3 never occurs
  p = np.where(rng.random(500) < 0.6, y, rng.choice(3, size=500))  # class 3 never predicted
  out = M.multiclass_metrics(y, p, k)
  pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
  np.testing.assert_allclose(out["precision"], pr)
  np.testing.assert_allclose(out["recall"], rc)
  np.testing.assert_allclose(out["f1"], f1)
  assert out["support"] == sup.tolist()
  assert out["confusion"] == skm.confusion_matrix(y, p, labels=range(k)).tolist()
  assert out["macro_f1"] == pytest.approx(
      skm.f1_score(y, p, labels=range(k), average="macro", zero_division=0))
  assert out["weighted_f1"] == pytest.approx(
      skm.f1_score(y, p, labels=range(k), average="weighted", zero_division=0))
  assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
  rep = skm.classification_report(y, p, labels=range(k), output_dict=True, zero_division=0)
  assert out["f1"][2] == pytest.approx(rep["2"]["f1-score"])
  with pytest.raises(ValueError):
    M.multiclass_metrics(y, p, 2)
