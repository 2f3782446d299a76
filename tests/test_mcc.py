"""MCC: one owner (metrics.mcc), in every summary, bootstrapped, and in report.md."""

import math

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from conftest import signal_data
from jaxquant import bootstrap
from jaxquant import compare
from jaxquant import metrics as M
from jaxquant import report_md


def test_mcc_matches_sklearn():
  rng = np.random.default_rng(0)
  for _ in range(5):
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    np.testing.assert_allclose(M.mcc(M.confusion(y, p)), matthews_corrcoef(y, p), atol=1e-12)
  assert M.mcc([[10, 0], [5, 0]]) == 0.0  # Never predicts positive: undefined → 0, as sklearn.
  assert math.isnan(M.mcc([[10, 0], [5, 0]], undefined=math.nan))
  assert M.mcc([[5, 0], [0, 5]]) == 1.0 and M.mcc([[0, 5], [5, 0]]) == -1.0


def test_mcc_has_one_owner():
  assert not hasattr(compare, "mcc")


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.9])
def test_summary_has_mcc(threshold):
  y, s, _ = signal_data(3, n=2000)
  out = M.summarize(y, s, threshold)
  assert out["mcc"] == pytest.approx(matthews_corrcoef(y, s >= threshold), abs=1e-12)


def test_bootstrap_interval_of_mcc():
  y, s, _ = signal_data(4, n=2000)
  out = bootstrap.bootstrap_metrics(y, s, 0.3, block=25, n_boot=60, seed=0)
  assert "mcc" in bootstrap.BOOTSTRAP_METRICS
  ci = out["mcc"]
  assert ci["estimate"] == pytest.approx(matthews_corrcoef(y, s >= 0.3), abs=1e-12)
  assert ci["lo"] <= ci["estimate"] <= ci["hi"] and ci["skipped"] == 0
  # The same resamples as the textbook circular block bootstrap, scored by sklearn.
  rng = np.random.default_rng(0)
  n, block = y.size, 25
  values = []
  for _ in range(60):
    starts = rng.integers(0, n, size=-(-n // block))
    idx = ((starts[:, None] + np.arange(block)[None, :]).ravel()[:n]) % n
    values.append(matthews_corrcoef(y[idx], s[idx] >= 0.3))
  lo, hi = np.percentile(values, [2.5, 97.5])
  assert (ci["lo"], ci["hi"]) == pytest.approx((lo, hi), rel=1e-9)


def test_report_md_shows_mcc(tmp_path):
  y, s, _ = signal_data(5, n=1500)
  test = M.summarize(y, s, 0.3)
  test["bootstrap"] = bootstrap.bootstrap_metrics(y, s, 0.3, block=20, n_boot=20)
  md = open(report_md.write_report_md({"config_name": "m", "test": test}, str(tmp_path)),
            encoding="utf-8").read()
  row = next(l for l in md.splitlines() if l.startswith("| MCC |"))
  ci = test["bootstrap"]["mcc"]
  assert f"| {test['mcc']:.3f} | [{ci['lo']:.3f}, {ci['hi']:.3f}] |" in row
  assert "| 0.000 / 0.000 |" in row  # Baseline: any trivial or random model.
