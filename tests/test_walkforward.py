"""python -m jaxquant.walkforward: folds as runs, pooled out-of-sample figures, resume after a
kill, refusals, and the honesty of the pooled intervals."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import signal as signal_lib
from sklearn import metrics as skm

from conftest import tiny_config
from conftest import tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A market with nothing to find (signal=0), long enough for two expanding folds.
MARKET = {"data.synth.days": 12, "data.synth.signal": 0.0, "eval.bootstrap": 100}


def _cmd(workdir, data, *extra):
  return [sys.executable, "-m", "jaxquant.walkforward", "--config=configs/gru.py:quick",
          f"--workdir={workdir}", "--folds=2", *tiny_flags(data, MARKET), *extra]


def _run(cmd):
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  return p.stdout


def _without_seconds(obj):
  if isinstance(obj, dict):
    return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
  if isinstance(obj, list):
    return [_without_seconds(v) for v in obj]
  return obj


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("wf")
  data, workdir = str(root / "data"), str(root / "ref")
  _run(_cmd(workdir, data))
  with open(os.path.join(workdir, "walkforward.json")) as f:
    return data, workdir, json.load(f)


def test_outputs_hold_every_fold_and_the_pooled_figures(reference):
  _, workdir, result = reference
  assert len(result["folds"]) == 2
  for f in result["folds"]:
    for split in ("train", "val", "test"):
      assert f[split] and all(a <= b for a, b in f[split])  # ISO ranges, in order.
      assert f["windows"][split] > 0 and 0 < f["positive_rate"][split] < 1
    # Expanding: everything that trains or validates ends before the test period starts.
    assert max(b for _, b in f["train"] + f["val"]) < f["test"][0][0]
    for k in ("threshold", "roc_auc", "pr_auc", "f1", "precision"):
      assert np.isfinite(f[k])
    assert f["backtest"]["trades"] >= 0 and len(f["roc_auc_ci"]) == 2
  # The second fold trains on the first one's test period (expanding).
  assert result["folds"][1]["train"][0][1] > result["folds"][0]["test"][0][0]
  with open(os.path.join(workdir, "oos_predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["instrument", "timestamp", "fold", "probability", "label",
                           "forward_return"]
  assert len(rows) == sum(f["windows"]["test"] for f in result["folds"])
  # Each fold's test predictions lie inside its own test period.
  for f in result["folds"]:
    stamps = [r["timestamp"] for r in rows if int(r["fold"]) == f["fold"]]
    assert f["test"][0][0] <= min(stamps) and max(stamps) <= f["test"][-1][1]
  # The pooled figures, recomputed from the CSV with scikit-learn.
  y = np.asarray([int(r["label"]) for r in rows])
  p = np.asarray([float(r["probability"]) for r in rows])
  oos = result["oos"]
  assert oos["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
  assert oos["prior"] == pytest.approx(y.mean())
  thresholds = {f["fold"]: f["threshold"] for f in result["folds"]}
  d = np.asarray([float(r["probability"]) >= thresholds[int(r["fold"])] for r in rows])
  # (The CSV rounds probabilities to 6 digits: a window right at a threshold may flip.)
  assert oos["precision"] == pytest.approx(skm.precision_score(y, d), abs=2e-3)
  assert oos["mcc"] == pytest.approx(skm.matthews_corrcoef(y, d), abs=5e-3)
  # Honesty: nothing to find, and the pooled interval says so.
  lo, hi = oos["roc_auc_ci"]
  assert lo < 0.5 < hi
  assert result["folds_above_chance"] == sum(f["roc_auc_ci"][0] > 0.5 for f in result["folds"])
  md = open(os.path.join(workdir, "walkforward.md")).read()
  assert "no evidence of skill" in md and "![stability](walkforward.png)" in md
  assert open(os.path.join(workdir, "walkforward.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_killed_walk_forward_resumes_at_its_fold_and_batch_and_ends_the_same(reference,
                                                                              tmp_path):
  data, ref_dir, expected = reference
  workdir = str(tmp_path / "wf")
  proc = subprocess.Popen(_cmd(workdir, data), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  models = 0
  for line in proc.stdout:  # Into the second fold's training, then SIGTERM.
    models += line.startswith("Model ")
    if models == 2 and line.startswith("Model "):
      break
  time.sleep(1.0)  # (A signal before the training loop stops the fold's start-up instead.)
  proc.send_signal(signal.SIGTERM)
  rest = proc.stdout.read()
  assert proc.wait(timeout=120) == 0, rest[-2000:]
  assert "re-run the same command" in rest
  assert not os.path.exists(os.path.join(workdir, "walkforward.json"))
  again = _run(_cmd(workdir, data))
  assert "=== fold 1/2" not in again  # A finished fold is never retrained...
  assert "=== fold 2/2" in again and ("Resuming at epoch" in again
                                      or "Already stopped" in again)
  with open(os.path.join(workdir, "walkforward.json")) as f:
    got = json.load(f)
  assert _without_seconds(got) == _without_seconds(expected)  # ...and the result is the same.
  assert (open(os.path.join(workdir, "oos_predictions.csv")).read()
          == open(os.path.join(ref_dir, "oos_predictions.csv")).read())


def test_other_settings_in_the_same_workdir_are_refused(reference):
  data, workdir, _ = reference
  p = subprocess.run(_cmd(workdir, data, "--folds=3"), cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert "other settings (folds differ)" in p.stderr.strip().splitlines()[-1]


def test_fold_configs_refuse_leaking_or_impossible_warm_starts(tmp_path):
  from jaxquant import walkforward
  config = tiny_config(tmp_path / "data")
  config.walkforward.warm_start = "full"
  with pytest.raises(ValueError, match="cpcv would leak"):
    walkforward.fold_configs(config, "cpcv", 4, 2, str(tmp_path))
  config.walkforward.warm_start = "lora"
  with pytest.raises(ValueError, match="model.lora_rank"):
    walkforward.fold_configs(config, "expanding", 3, 2, str(tmp_path))
  config.walkforward.warm_start = "heads"
  folds = walkforward.fold_configs(config, "expanding", 3, 2, str(tmp_path))
  assert [c.train.init_from for _, c, _ in folds] == ["", *[d for d, _, _ in folds[:-1]]]
  assert [c.train.trainable for _, c, _ in folds] == ["all", "heads", "heads"]
  assert [json.loads(c.data.fold)["test"] for _, c, _ in folds] == [[1], [2], [3]]
  config.walkforward.warm_start = "none"
  with pytest.raises(ValueError, match="--test_groups=4"):
    walkforward.fold_configs(config, "cpcv", 4, 4, str(tmp_path))


def _fake_folds(seed, oracle, folds=4, n=800, prior=0.15, copies=1):
  """Pooled predictions of `folds` folds of time-ordered windows: a coin flip, or a noisy
  label oracle; with `copies`, every window is predicted that many times (cpcv)."""
  rng = np.random.default_rng(seed)
  parts = []
  for k in range(folds):
    y = (rng.random(n) < prior).astype(np.int64)
    # Serially dependent scores, like overlapping windows: an AR(1) noise.
    e = signal_lib.lfilter([1.0], [1.0, -0.9], rng.normal(size=n))
    for c in range(copies):
      noise = e + rng.normal(size=n) * 0.3
      p = 1 / (1 + np.exp(-(noise + (1.5 * y if oracle else 0.0))))
      parts.append({"instrument": np.full(n, "A"), "timestamp": np.arange(n) + k * n,
                    "fold": np.full(n, k * copies + c), "probability": p, "label": y,
                    "decision": (p > 0.5).astype(np.int64)})
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}, parts


def test_pooled_interval_is_honest_on_coin_flips_and_finds_a_planted_signal():
  from jaxquant import walkforward
  config = tiny_config("unused", {"eval.bootstrap": 100, "data.window": 10,
                                  "data.horizon": 5})
  covered = 0
  for seed in range(20):
    pooled, _ = _fake_folds(seed, oracle=False)
    lo, hi = walkforward._figures(pooled, config)["roc_auc_ci"]
    covered += lo < 0.5 < hi
  assert covered >= 16  # A 95 % interval: at most a few misses in 20.
  pooled, parts = _fake_folds(0, oracle=True)
  from jaxquant import metrics
  assert all(metrics.roc_auc(p["label"], p["probability"]) > 0.5 for p in parts)
  assert walkforward._figures(pooled, config)["roc_auc_ci"][0] > 0.5


def test_cpcv_copies_of_a_window_do_not_narrow_the_interval():
  """Each window predicted by 3 folds (cpcv N=4, K=2): counted as 3 independent windows, a
  coin flip would look significant far more often than 5 % of the time."""
  from jaxquant import walkforward
  config = tiny_config("unused", {"eval.bootstrap": 100, "data.window": 10,
                                  "data.horizon": 5})
  widths = {1: [], 3: []}
  for seed in range(6):
    pooled, _ = _fake_folds(seed, oracle=False, folds=2, copies=3)
    for copies in (1, 3):
      lo, hi = walkforward._figures(pooled, config, copies)["roc_auc_ci"]
      widths[copies].append(hi - lo)
  assert np.mean(widths[3]) > 1.3 * np.mean(widths[1])


def test_runs_saved_before_new_settings_existed_still_resume():
  """A fingerprint without data.fold / model.lora_rank (saved before they existed) is the
  same run when they take their defaults now, and another run when they do not."""
  from jaxquant import resume
  current = {"config": {"data": {"fold": "", "window": 16}, "model": {"lora_rank": 0},
                        "walkforward": {"warm_start": "none"}}, "shards": []}
  saved = {"config": {"data": {"window": 16}, "model": {}}, "shards": []}
  assert resume.same_run(saved, current)
  assert not resume.same_run(saved, {**current, "config": {
      **current["config"], "data": {"fold": '{"groups": 3}', "window": 16}}})
  assert not resume.same_run(saved, {**current, "config": {
      **current["config"], "model": {"lora_rank": 4}}})
  assert not resume.same_run({"config": {"data": {"window": 8}}, "shards": []}, current)
