"""Shared test setup."""

import os
import sys

import pytest

from absl import flags

# Tests import modules that define absl flags; grain workers and absl code read
# FLAGS, which must count as parsed under pytest.
flags.FLAGS.mark_as_parsed()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The tiny run every training test starts from (seconds on a 2-core CPU): the quick
# GRU on a 2-instrument, 6-day synthetic market, one epoch, no bootstrap, no
# TensorBoard. Each test changes what it is about.
TINY = {"data.synth.instruments": 2, "data.synth.days": 6, "data.window": 16,
        "train.epochs": 1, "train.batch_size": 64, "eval.bootstrap": 0,
        "eval.tensorboard": False}
TINY_GRU = {"model.hidden": 8}


def shard_data_config(**changes):
  """config.data reading bar shards, with small windows (T=8, h=4) and 20 % val and test
  splits, then `changes` (label_kind="three_class", ...)."""
  from jaxquant import config_defaults
  c = config_defaults.get_config().data
  c.source, c.window, c.horizon, c.label_threshold = "shards", 8, 4, 0.001
  c.val_fraction, c.test_fraction, c.embargo = 0.2, 0.2, 0
  for k, v in changes.items():
    c[k] = v
  return c


def tiny_config(data_dir, changes=None, config=None):
  """TINY (and TINY_GRU for the default GRU) with `changes` ({"train.epochs": 3, ...})
  on `config` (default configs/gru.py:quick), reading/generating data in `data_dir`."""
  if config is None:
    from configs import gru
    config, base = gru.get_config("quick"), {**TINY, **TINY_GRU}
  else:
    base = dict(TINY)
  for key, value in {"data.dir": str(data_dir), **base, **(changes or {})}.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_flags(data_dir, changes=None):
  """The same run as --config.key=value flags of `python -m jaxquant.main`."""
  values = {"data.dir": str(data_dir), **TINY, **TINY_GRU, **(changes or {})}
  return [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
          for k, v in values.items()]


def signal_data(seed=0, n=3000, prior=0.07, ties=False):
  """Imbalanced labels, weakly informative scores in (0, 1), returns tied to the labels
  (labels, scores, forward returns)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < prior).astype(int)
  y[:2] = [0, 1]
  s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.0 * y - 2)))
  if ties:
    s = np.round(s, 2)
  r = rng.normal(0, 0.004, n) + 0.008 * y
  r[rng.random(n) < 0.05] = 0.0  # flat windows: neither win nor loss
  return y, s, r


def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist's `--dist loadgroup`: each module's tests share one worker (its
  module fixtures run once), and the modules sharing test_launch's 2-process run too."""
  for item in items:
    module = item.module.__name__
    shared = module in ("test_launch", "test_parallel", "test_slurm")
    item.add_marker(pytest.mark.xdist_group("two_process" if shared else module))
