"""The comparison command: MCC, aggregation over seeds, the table, and a tiny real run."""

import json
import os

import numpy as np

from jaxquant import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# MCC's own tests are in tests/test_mcc.py (metrics.mcc is its one owner).


def test_aggregate_mean_and_sample_std():
  rows = [{"seconds": 1.0, "collapsed": False, "val_f1": 0.2, "test_f1": 0.1},
          {"seconds": 3.0, "collapsed": True, "val_f1": 0.4, "test_f1": 0.3}]
  agg = compare.aggregate(rows)
  assert agg["runs"] == 2 and agg["collapsed_runs"] == 1 and agg["seconds_mean"] == 2.0
  np.testing.assert_allclose(agg["val_f1"]["mean"], 0.3)
  np.testing.assert_allclose(agg["val_f1"]["std"], np.std([0.2, 0.4], ddof=1))
  assert agg["runs_above_chance"] is None  # No intervals (eval.bootstrap=0).


def test_runs_above_chance_need_the_whole_interval_above_half():
  rows = [{"seconds": 1.0, "collapsed": False, "test_f1": 0.1, "test_roc_auc_ci": ci}
          for ci in ([0.51, 0.60], [0.49, 0.58], [0.40, 0.499])]
  agg = compare.aggregate(rows)
  assert agg["runs_above_chance"] == 1
  assert agg["test_roc_auc_cis"] == [[0.51, 0.60], [0.49, 0.58], [0.40, 0.499]]
  assert "test_roc_auc_ci" not in agg
  agg["test_prior"] = {"mean": 0.1, "std": 0.0}
  for key in [f"{s}_{m}" for s in ("val", "test") for m in compare.METRICS]:
    agg.setdefault(key, {"mean": 0.0, "std": 0.0})
  md = compare.to_markdown({"x": agg}, 3)
  assert "[0.510, 0.600] [0.490, 0.580] [0.400, 0.499] | 1/3 |" in md


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
  assert "weighted_ce" in md and "±" in md and "n/a (eval.bootstrap=0)" in md
  # The seeds took effect: training is deterministic, so a run that ignored train.seed
  # would repeat seed 0's losses bit for bit (other initial weights, dropout and batch
  # order give other float losses).
  losses = []
  for seed in (0, 1):
    (run_dir,) = [d for d in os.listdir(tmp_path / "cmp") if d.endswith(f"-seed{seed}")]
    with open(tmp_path / "cmp" / run_dir / "metrics.jsonl") as f:
      losses.append([(r["train_loss"], r["val_loss"]) for r in map(json.loads, f)])
  assert len(losses[0]) == len(losses[1]) == 1
  assert losses[0][0][0] != losses[1][0][0] and losses[0][0][1] != losses[1][0][1], losses


def test_one_seed_shows_no_spread():
  keys = [f"{s}_{m}" for s in ("val", "test") for m in compare.METRICS] + ["test_prior"]
  agg = compare.aggregate([{"seconds": 1.0, "collapsed": False, **{k: 0.25 for k in keys}}])
  assert agg["test_f1"] == {"mean": 0.25, "std": None}
  md = compare.to_markdown({"x": agg}, 1)
  assert "± 0.000" not in md and "0.250 ± —" in md
