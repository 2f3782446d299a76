"""Tests for jaxquant.bootstrap, against a circular block bootstrap written out here."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import signal_data
from jaxquant import bootstrap
from jaxquant import metrics as M


def make_data(seed=0, n=3000, prior=0.07):
  """Imbalanced labels with weakly informative scores in (0, 1)."""
  return signal_data(seed, n, prior)[:2]


def reference_ci(y, s, metric, block, n_boot, seed, level=0.95):
  """(lo, hi, skipped) of a textbook circular block bootstrap percentile interval.

  Resample b joins ceil(n / block) runs of `block` consecutive windows, each
  starting at a position drawn uniformly by np.random.default_rng(seed) and
  wrapping past the end, cut to n windows; resamples where `metric` is nan are
  skipped.
  """
  n = len(y)
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(n_boot):
    starts = rng.integers(0, n, size=math.ceil(n / block))
    idx = np.concatenate([np.arange(a, a + block) % n for a in starts])[:n]
    values.append(metric(y[idx], s[idx]))
  values = np.array(values, dtype=np.float64)
  finite = values[np.isfinite(values)]
  skipped = int(values.size - finite.size)
  if not finite.size:
    return math.nan, math.nan, skipped
  lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
  return lo, hi, skipped


def sk_roc_auc(y, s):
  return skm.roc_auc_score(y, s) if 0 < y.sum() < y.size else math.nan


def sk_pr_auc(y, s):
  return skm.average_precision_score(y, s) if y.any() else math.nan


def sk_at(score_fn, threshold):
  """A threshold metric of sklearn, nan where its denominator is 0."""
  return lambda y, s: score_fn(y, s >= threshold, zero_division=np.nan)


def sk_mcc_at(threshold):
  """sklearn's MCC, nan where it is undefined (one class in the labels or predictions)."""
  def mcc(y, s):
    p = s >= threshold
    defined = 0 < y.sum() < y.size and 0 < p.sum() < p.size
    return skm.matthews_corrcoef(y, p) if defined else math.nan
  return mcc


def test_bootstrap_deterministic_and_contains_estimate():
  y, s = make_data(5, n=2000)
  a = bootstrap.bootstrap_metrics(y, s, 0.3, block=20, n_boot=100, seed=7)
  b = bootstrap.bootstrap_metrics(y, s, 0.3, block=20, n_boot=100, seed=7)
  c = bootstrap.bootstrap_metrics(y, s, 0.3, block=20, n_boot=100, seed=8)
  assert a == b and a["roc_auc"] != c["roc_auc"]
  ci = a["roc_auc"]
  assert ci["estimate"] == M.roc_auc(y, s)
  assert ci["lo"] < ci["estimate"] < ci["hi"]
  lo, hi, skipped = reference_ci(y, s, sk_roc_auc, 20, 100, 7)
  assert (ci["lo"], ci["hi"]) == pytest.approx((lo, hi), rel=1e-12)
  assert ci["skipped"] == skipped == 0


def test_bootstrap_random_model_covers_chance():
  rng = np.random.default_rng(6)
  y = (rng.random(3000) < 0.07).astype(int)
  s = rng.random(3000)
  ci = bootstrap.bootstrap_metrics(y, s, 0.5, n_boot=200, seed=0)["roc_auc"]
  assert ci["lo"] < 0.5 < ci["hi"]


def test_bootstrap_skips_and_counts_nan_resamples():
  y = np.zeros(200, int)
  y[100] = 1  # One positive: many resamples draw none, and ROC-AUC is then nan.
  s = np.linspace(0, 1, 200)
  out = bootstrap.bootstrap_metrics(y, s, 0.5, block=1, n_boot=100, seed=0)
  ci = out["roc_auc"]
  assert 0 < ci["skipped"] < 100
  # Skipped exactly where sklearn finds ROC-AUC undefined (older sklearn raises there).
  lo, hi, skipped = reference_ci(y, s, sk_roc_auc, 1, 100, 0)
  assert ci["skipped"] == skipped and (ci["lo"], ci["hi"]) == pytest.approx((lo, hi))
  assert out["pr_auc"]["skipped"] == out["recall"]["skipped"] == skipped  # no positive drawn
  none = bootstrap.bootstrap_metrics(np.zeros(50, int), s[:50], 0.5, n_boot=10)["roc_auc"]
  assert math.isnan(none["estimate"]) and math.isnan(none["lo"]) and none["skipped"] == 10


def ar1(rng, n, phi):
  x = np.empty(n)
  x[0] = rng.normal()
  e = rng.normal(size=n) * math.sqrt(1 - phi**2)
  for i in range(1, n):
    x[i] = phi * x[i - 1] + e[i]
  return x


def test_bootstrap_widens_with_autocorrelation():
  """On slowly varying labels and scores, i.i.d. resampling understates the uncertainty."""
  rng = np.random.default_rng(0)
  n = 3000
  latent = ar1(rng, n, 0.98)
  y = (latent + 0.5 * rng.normal(size=n) > 1.5).astype(int)
  s = ar1(rng, n, 0.98) + latent
  widths = {}
  for block in (1, 50):
    ci = bootstrap.bootstrap_metrics(y, s, 0.0, block=block, n_boot=200, seed=1)["roc_auc"]
    widths[block] = ci["hi"] - ci["lo"]
  assert widths[50] > 2 * widths[1]


def test_bootstrap_metrics_keys_and_estimates():
  y, s = make_data(9, n=2000)
  out = bootstrap.bootstrap_metrics(y, s, 0.3, block=25, n_boot=60, seed=0)
  assert set(out) == set(bootstrap.BOOTSTRAP_METRICS) == {
      "roc_auc", "pr_auc", "precision", "recall", "f1", "mcc"}
  ref = M.summarize(y, s, 0.3)
  for name, ci in out.items():
    assert ci["estimate"] == pytest.approx(ref[name], abs=1e-12)
    assert ci["lo"] <= ci["estimate"] <= ci["hi"]
    assert ci["block"] == 25 and ci["n_boot"] == 60 and ci["level"] == 0.95
  # Every metric's interval is the textbook one over the same resamples.
  refs = {"roc_auc": sk_roc_auc, "pr_auc": sk_pr_auc,
          "precision": sk_at(skm.precision_score, 0.3), "recall": sk_at(skm.recall_score, 0.3),
          "f1": sk_at(skm.f1_score, 0.3), "mcc": sk_mcc_at(0.3)}
  for name, metric in refs.items():
    lo, hi, skipped = reference_ci(y, s, metric, 25, 60, 0)
    assert (out[name]["lo"], out[name]["hi"]) == pytest.approx((lo, hi), rel=1e-9), name
    assert out[name]["skipped"] == skipped, name
  assert bootstrap.bootstrap_metrics(y, s, 0.3, block=25, n_boot=60, seed=0) == out


def test_bootstrap_default_block():
  assert bootstrap.default_block(1) == 1
  assert bootstrap.default_block(1000) == 10
  assert bootstrap.default_block(64_000) == 40


def test_bootstrap_ci_tuple():
  ci = bootstrap.BootstrapCI(0.6, 0.5, 0.7, valid=90, skipped=10)
  assert tuple(ci) == (0.6, 0.5, 0.7) and ci.estimate == 0.6
  assert (ci.valid, ci.skipped) == (90, 10)


def test_bootstrap_validates_arguments():
  y, s = make_data(1, n=100)
  for kw in ({"block": 0}, {"n_boot": 0}, {"level": 1.0}):
    with pytest.raises(ValueError):
      bootstrap.bootstrap_metrics(y, s, 0.3, **kw)
  with pytest.raises(ValueError, match="same length"):
    bootstrap.bootstrap_metrics(y, s[:-1], 0.3)
