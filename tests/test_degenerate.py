"""Data with no or only signal-class windows in a split stops before any model is built."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxquant import train
from jaxquant.data import shards
import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _no_model(monkeypatch):
  """Any attempt to build the model fails the test: the data check must come first."""
  from jaxquant import steps

  def setup_run(*args, **kwargs):
    raise AssertionError("a model was built on degenerate data")
  monkeypatch.setattr(steps, "setup_run", setup_run)


@pytest.mark.parametrize("threshold, expected", [
    (-1.0, r"train split of .* has (\d|,)+ positive \(signal class 1\) windows of (\d|,)+.*"
           r"every window is positive.*raise config.data.label_threshold \(now -1\)"),
    (1.0, r"train split of .* has 0 positive \(signal class 1\) windows of (\d|,)+, class "
          r"counts \[\d+, 0\]: nothing to learn; lower config.data.label_threshold \(now 1\)"),
])
def test_all_or_no_positives_stop_before_the_model(tmp_path, monkeypatch, threshold, expected):
  _no_model(monkeypatch)
  config = conftest.tiny_config(tmp_path / "data", {"data.label_threshold": threshold})
  with pytest.raises(ValueError, match=expected) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)


def _flat_after(path, n=1200, flat_from=0.7, seed=0):
  """One instrument of 1-minute bars: a lively walk, then a flat price (no positives)."""
  rng = np.random.default_rng(seed)
  steps = rng.normal(0, 0.004, n)
  steps[int(n * flat_from):] = 0.0
  close = 100 * np.exp(np.cumsum(steps))
  bars = np.stack([close, close * 1.001, close * 0.999, close, np.full(n, 10.0),
                   np.zeros(n)], axis=1)
  ts = np.datetime64("2024-01-02T00:00", "ns").astype(np.int64) + np.arange(n) * 60 * 10**9
  os.makedirs(path, exist_ok=True)
  shards.write_shard(os.path.join(path, "FLAT.parquet"), "FLAT", ts, bars)


def test_validation_without_positives_is_named(tmp_path, monkeypatch):
  """A threshold "chosen on val" from no positive at all is refused, naming the split."""
  _no_model(monkeypatch)
  _flat_after(str(tmp_path / "data"))
  config = conftest.tiny_config(tmp_path / "data", {"data.source": "shards"})
  with pytest.raises(ValueError, match=r"^val split of .* has 0 positive .*no threshold can "
                     r"be chosen on it; lower config.data.label_threshold"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_command_line_exits_with_one_line(tmp_path):
  p = subprocess.run([sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
                      *conftest.tiny_flags(tmp_path / "data", {"data.label_threshold": -1.0}),
                      f"--workdir={tmp_path / 'run'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode != 0, p.stdout[-2000:]
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: train split of ") and "every window is positive" in last, \
      p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert "Model gru" not in p.stdout + p.stderr  # Stopped before the model was built.
