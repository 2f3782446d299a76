"""The return head (loss.return_weight > 0): its predictions are written in return units and
the test split reports their information coefficients with block-bootstrap intervals."""

import json
import os

import numpy as np
import pytest
from scipy import stats

from conftest import tiny_config
from jaxquant import bootstrap
from jaxquant import evaluate
from jaxquant import report_md
from jaxquant import train
from jaxquant.data import dataset as dataset_lib


def test_information_coefficients_match_scipy():
  rng = np.random.default_rng(0)
  p = np.round(rng.normal(size=800), 1)  # Ties: Spearman averages their ranks.
  r = 0.2 * p + rng.normal(size=800)
  ic, rank_ic = bootstrap.information_coefficients(p, r)
  assert ic == pytest.approx(stats.pearsonr(p, r)[0], abs=1e-12)
  assert rank_ic == pytest.approx(stats.spearmanr(p, r)[0], abs=1e-12)
  assert all(np.isnan(bootstrap.information_coefficients(np.ones(5), np.arange(5.0))))
  with pytest.raises(ValueError, match="same length"):
    bootstrap.information_coefficients(p, r[:-1])
  out = bootstrap.bootstrap_ic(p, r, block=20, n_boot=50, seed=1)
  assert set(out) == set(bootstrap.IC_METRICS) == {"ic", "rank_ic"}
  for name, est in zip(bootstrap.IC_METRICS, (ic, rank_ic)):
    assert out[name]["estimate"] == est and out[name]["lo"] < est < out[name]["hi"]
    assert out[name]["block"] == 20 and out[name]["n_boot"] == 50
  assert bootstrap.bootstrap_ic(p, r, block=20, n_boot=50, seed=1) == out


@pytest.fixture(scope="module")
def return_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("return_head")
  config = tiny_config(root / "data", {"loss.return_weight": 1.0, "eval.bootstrap": 50})
  workdir = str(root / "run")
  return workdir, config, train.train_and_evaluate(config, workdir)


def test_report_has_the_return_heads_ic(return_run, tmp_path):
  workdir, config, report = return_run
  head = json.load(open(os.path.join(workdir, "report.json")))["test"]["return_head"]
  assert "return_head" not in report["val"]  # Judged on test only.
  # The written predictions of the test windows give the same IC (scipy as the reference).
  arrays = evaluate.predict(workdir, config=config, out=str(tmp_path / "pred.npz"))
  saved = np.load(str(tmp_path / "pred.npz"))
  np.testing.assert_array_equal(saved["predicted_return"], arrays["predicted_return"])
  split = report["data"]["splits"]["test"]
  ts = saved["timestamp"].astype("datetime64[ns]").astype("datetime64[s]")
  test = ((ts >= np.datetime64(split["start"])) & (ts <= np.datetime64(split["end"]))
          & (saved["label"] >= 0))
  assert test.sum() == split["windows"] == head["n"]
  pred, real = saved["predicted_return"][test], saved["forward_return"][test]
  assert head["ic"]["estimate"] == pytest.approx(stats.pearsonr(pred, real)[0], abs=1e-9)
  assert head["rank_ic"]["estimate"] == pytest.approx(stats.spearmanr(pred, real)[0], abs=1e-9)
  for key in ("ic", "rank_ic"):
    assert head[key]["lo"] <= head[key]["estimate"] <= head[key]["hi"]
    assert head[key]["block"] == config.data.window + config.data.horizon
  # In return units: the head's raw output (trained on return / return_scale) times the
  # run's saved return_scale, the std of the training split's forward returns.
  steps, state, meta, _, _ = evaluate.restore(workdir, config)
  d = dataset_lib.build_inference_set(config.data, config.data.dir, meta["normalizer"])
  _, raw = steps.predict_split(state, d, "all", 64)
  assert 0 < meta["return_scale"] < 0.1  # Minute-bar returns, not standardised units.
  np.testing.assert_allclose(saved["predicted_return"], raw * meta["return_scale"], rtol=1e-6)
  csv = open(str(tmp_path / "pred.csv")).read().splitlines()
  assert csv[0].endswith(",forward_return,predicted_return")
  assert float(csv[1].split(",")[-1]) == pytest.approx(saved["predicted_return"][0], rel=1e-5)
  md = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  assert "## Return head (test)" in md and "![Return head](test_return_head.png)" in md
  assert os.path.getsize(os.path.join(workdir, "test_return_head.png")) > 5000
  ic = head["ic"]
  assert (f"| IC (Pearson) | {ic['estimate']:.3f} | [{ic['lo']:.3f}, {ic['hi']:.3f}] | 0 |"
          in md)


def test_report_md_without_a_return_head(tmp_path):
  md = open(report_md.write_report_md({"config_name": "x", "test": {"f1": 0.1}}, tmp_path),
            encoding="utf-8").read()
  assert "Return head" not in md
