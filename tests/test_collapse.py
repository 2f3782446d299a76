"""Collapse on either side: a model that signals on (nearly) every window, or whose F1 is no
better than always signalling, is as useless as one that never signals."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from jaxquant import config_check
from jaxquant import config_defaults
from jaxquant import metrics as M
from jaxquant import train
from jaxquant import verdict


def test_default_ceiling():
  assert config_defaults.get_config().eval.max_positive_rate == 0.9


def test_signalling_on_nearly_every_window_is_collapsed():
  s = np.linspace(0, 1, 1000)
  collapsed, reason = M.is_collapsed(s, s[30], 0.001, max_rate=0.9)  # 97 % signalled
  assert collapsed and reason == "predicted-positive rate 0.97 above ceiling 0.9"
  assert not M.is_collapsed(s, s[30], 0.001, max_rate=0.99)[0]
  assert not M.is_collapsed(s, s[30], 0.001)[0]  # No max_rate: the ceiling is 1 - min_rate.
  with pytest.raises(ValueError, match="max_rate must be in"):
    M.is_collapsed(s, 0.5, 0.001, max_rate=1.5)


def test_the_other_side_still_collapses():
  s = np.linspace(0, 1, 1000)
  collapsed, reason = M.is_collapsed(s, 2.0, 0.001, max_rate=0.9)
  assert collapsed and reason == "predicts class 0 for all 1000 windows"
  collapsed, reason = M.is_collapsed(s, s[-1], 0.01, max_rate=0.9)
  assert collapsed and "below floor" in reason


def test_f1_no_better_than_always_positive_is_collapsed():
  y = np.array([1, 0] * 50)
  s = np.tile([0.2, 0.8], 50)  # Ranks the negatives first: anti-skill.
  collapsed, reason = M.is_collapsed(s, 0.5, 0.001, max_rate=0.9, y_true=y)
  assert collapsed and reason == "has F1 0, not above the 0.6667 of always predicting positive"
  # Equal to the all-positive F1 is no better: 4 signals, 1 of 2 positives among 10 windows
  # give F1 2/6, the F1 of always positive is 4/12.
  s, y = np.arange(10.0), np.array([1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
  m = M.binary_metrics(y, s, 6.0)
  assert m["f1"] == pytest.approx(m["f1_baseline"]) == pytest.approx(1 / 3)
  collapsed, reason = M.is_collapsed(s, 6.0, 0.0, max_rate=1.0, y_true=y)
  assert collapsed and "not above the 0.3333 of always predicting positive" in reason
  # Better than always positive is fine; without labels (or positives) there is no F1 test.
  assert not M.is_collapsed(s, 6.0, 0.0, max_rate=1.0, y_true=(s >= 6).astype(int))[0]
  assert not M.is_collapsed(s, 6.0, 0.0, max_rate=1.0)[0]
  assert not M.is_collapsed(s, 6.0, 0.0, max_rate=1.0, y_true=np.zeros(10, int))[0]


def _probs(signal_scores):
  return np.stack([1 - signal_scores, signal_scores], axis=1)


def test_split_verdict_judges_both_sides():
  rng = np.random.default_rng(0)
  labels = (rng.random(2000) < 0.5).astype(int)
  probs = _probs(rng.random(2000))
  up = verdict.split_verdict(labels, probs, np.quantile(probs[:, 1], 0.03), 0.001, 0.9)
  assert up["collapsed"] and "above ceiling 0.9" in up["collapse_reason"]
  assert up["predicted_positive_rate"] > 0.9
  loose = verdict.split_verdict(labels, probs, np.quantile(probs[:, 1], 0.03), 0.001, 0.99)
  assert "above ceiling" not in loose["collapse_reason"]  # The caller's ceiling counts.
  down = verdict.split_verdict(labels, _probs(np.full(2000, 0.01)), 0.5, 0.001, 0.9)
  assert down["collapsed"] and "constant" in down["collapse_reason"]
  fine = verdict.split_verdict(labels, _probs(0.3 * rng.random(2000) + 0.7 * labels), 0.5,
                               0.001, 0.9)
  assert not fine["collapsed"] and fine["collapse_reason"] == ""


def test_config_check_names_max_positive_rate():
  c = config_defaults.get_config()
  config_check.validate(c)
  for bad in (1.5, 0.0005):  # Above 1; below eval.min_positive_rate (0.001).
    c.eval.max_positive_rate = bad
    with pytest.raises(config_check.ConfigError, match="eval.max_positive_rate"):
      config_check.validate(c)
  c.eval.max_positive_rate = 1.0  # 1 = no ceiling.
  config_check.validate(c)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("collapse") / "data"


def test_always_up_run_collapses_stops_and_says_why(data_dir, tmp_path):
  # No planted signal and labels "return > 0" (about half positive): the F1-best threshold
  # of a model with no skill signals on nearly every window, the "always up" model.
  config = tiny_config(data_dir, {"data.synth.signal": 0.0, "data.label_threshold": 0.0,
                                  "train.epochs": 3, "eval.collapse_patience": 2})
  workdir = str(tmp_path / "run")
  report = train.train_and_evaluate(config, workdir)
  history = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(history) == 2  # Stopped after eval.collapse_patience collapsed epochs, not 3.
  for h in history:
    assert h["val_collapsed"] and h["val_predicted_positive_rate"] > 0.9, h
    assert abs(h["val_mcc"]) < 0.2  # MCC sees through "always up" too (metrics.summarize).
  assert report["stop_reason"].startswith("collapsed on validation") and "above ceiling 0.9" in \
      report["stop_reason"] and "for 2 epochs in a row" in report["stop_reason"]
  on_disk = json.load(open(os.path.join(workdir, "report.json")))
  assert on_disk["all_checkpoints_collapsed"] is True
  assert on_disk["val"]["collapsed"] and "above ceiling 0.9" in on_disk["val"]["collapse_reason"]
  md = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  assert "every epoch's model collapsed" in md
  assert f"Warning (val): collapsed — {on_disk['val']['collapse_reason']}" in md
  assert "return_head" not in on_disk["test"]  # loss.return_weight = 0.


def test_a_collapsed_epoch_is_never_the_best_checkpoint(tmp_path, monkeypatch):
  # Epoch 2's validation is judged at a threshold that signals on 95 % of the windows (an
  # "always up" model, whatever its F1); epoch 1 at its own F1-best threshold.
  real, calls = verdict.split_verdict, []

  def judged(labels, probs, threshold, min_rate, max_rate=None):
    calls.append(len(calls) + 1)
    if len(calls) == 2:
      threshold = float(np.quantile(probs[:, 1], 0.05))
    return real(labels, probs, threshold, min_rate, max_rate)

  monkeypatch.setattr(verdict, "split_verdict", judged)
  config = tiny_config(tmp_path / "data", {"train.epochs": 2, "eval.collapse_patience": 5,
                                  "train.patience": 5, "eval.max_positive_rate": 0.9})
  workdir = str(tmp_path / "run")
  report = train.train_and_evaluate(config, workdir)
  history = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert history[1]["val_collapsed"], history[1]
  assert "above ceiling 0.9" in history[1]["val_collapse_reason"]
  assert not history[0]["val_collapsed"], history[0]
  assert report["best_epoch"] == 1 and not report["all_checkpoints_collapsed"]
  assert report["val"]["f1"] == pytest.approx(history[0]["val_f1"])
