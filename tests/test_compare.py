"""The comparison command: MCC, aggregation over seeds, the table, and a tiny real run."""

import json
import os

import numpy as np
from sklearn.metrics import matthews_corrcoef

from jaxquant import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mcc_matches_sklearn():
  rng = np.random.default_rng(0)
  for _ in range(5):
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    cm = [[np.sum((y == 0) & (p == 0)), np.sum((y == 0) & (p == 1))],
          [np.sum((y == 1) & (p == 0)), np.sum((y == 1) & (p == 1))]]
    np.testing.assert_allclose(compare.mcc(cm), matthews_corrcoef(y, p), atol=1e-12)
  assert compare.mcc([[10, 0], [5, 0]]) == 0.0  # Never predicts positive: undefined → 0.


def test_aggregate_mean_and_sample_std():
  rows = [{"seconds": 1.0, "collapsed": False, "val_f1": 0.2, "test_f1": 0.1},
          {"seconds": 3.0, "collapsed": True, "val_f1": 0.4, "test_f1": 0.3}]
  agg = compare.aggregate(rows)
  assert agg["runs"] == 2 and agg["collapsed_runs"] == 1 and agg["seconds_mean"] == 2.0
  np.testing.assert_allclose(agg["val_f1"]["mean"], 0.3)
  np.testing.assert_allclose(agg["val_f1"]["std"], np.std([0.2, 0.4], ddof=1))


def test_compare_two_seeds_end_to_end(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  overrides = [f"data.dir={tmp_path / 'data'}", "data.synth.days=6", "data.synth.instruments=2",
               "data.window=16", "model.hidden=8", "train.epochs=1", "train.batch_size=64",
               "eval.bootstrap=0", "eval.tensorboard=false"]
  table = compare.compare(["configs/recipes/weighted_ce.py:quick"], str(tmp_path / "cmp"),
                          seeds=2, overrides=overrides)
  row = table["configs/recipes/weighted_ce.py:quick"]
  assert row["runs"] == 2
  on_disk = json.load(open(tmp_path / "cmp" / "compare.json"))
  runs = on_disk["runs"]["configs/recipes/weighted_ce.py:quick"]
  aucs = [r["test_roc_auc"] for r in runs]
  np.testing.assert_allclose(row["test_roc_auc"]["mean"], np.mean(aucs))
  md = open(tmp_path / "cmp" / "compare.md").read()
  assert "weighted_ce" in md and "±" in md
