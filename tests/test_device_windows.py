"""Windows gathered inside the step (device_windows) are the host gather's, bit for bit:
the windows themselves, the batches of indices, a whole run's metrics and report; where
it cannot work, "auto" falls back and "on" refuses. (Resuming mid-epoch on this path is
tests/test_faults.py's: its tiny runs take "auto", which gathers on the device.)"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant import config_check
from jaxquant import config_defaults
from jaxquant import device_windows
from jaxquant import parallel
from jaxquant import train
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import loader
from jaxquant.data import sampling
import conftest

T, F, N = 16, 6, 400


def _dataset(seed=0):
  """A Dataset over a random [N, F] matrix whose train split is every full window, the
  first (end T - 1) and the last (end N - 1) included."""
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((N, F), dtype=np.float32)
  ends = np.arange(T - 1, N, dtype=np.int32)
  split = dataset_lib.Split("train", ends=ends, labels=(rng.random(len(ends)) < 0.2).astype(np.int8),
                            fwd_returns=rng.normal(0, 0.01, len(ends)),
                            instrument=np.zeros(len(ends), np.int8),
                            timestamps=ends.astype(np.int64) * 60_000_000_000)
  return dataset_lib.Dataset(features=feats, splits={"train": split, "val": split},
                             instruments=["X"], normalizer={}, window=T, horizon=1)


def test_in_step_gather_is_the_host_gather_bitwise():
  ds = _dataset()
  n = len(ds.splits["train"])
  idx = np.concatenate([[0, n - 1], np.random.default_rng(1).integers(0, n, 62)])
  ends = ds.splits["train"].ends[idx].astype(np.int32)
  assert ends[0] == T - 1 and ends[1] == N - 1  # The first and the last window.
  expected = ds.windows("train", idx)
  feats = jnp.asarray(ds.features)
  got = jax.jit(device_windows.gather_windows, static_argnums=2)(feats, ends, T)
  assert got.dtype == expected.dtype and got.shape == expected.shape
  np.testing.assert_array_equal(np.asarray(got).view(np.uint32), expected.view(np.uint32))
  # Through the wrappers: the step sees exactly the host's batch.
  seen = jax.jit(device_windows.gather_step(lambda s, b, r: (s, b), T))(
      0, {"ends": ends, "y": idx, "r": idx * 0.5}, None, feats)[1]
  assert set(seen) == {"x", "y", "r"}
  np.testing.assert_array_equal(np.asarray(seen["x"]), expected)
  np.testing.assert_array_equal(np.asarray(seen["y"]), idx)
  pred = jax.jit(device_windows.gather_predict(lambda s, x: x.sum(axis=(1, 2)), T))(0, ends, feats)
  np.testing.assert_array_equal(np.asarray(pred), np.asarray(jnp.asarray(expected).sum(axis=(1, 2))))
  # Pre-cut samples [N, T, F] (data.source="samples"): whole samples by index.
  samples = np.random.default_rng(2).standard_normal((50, T, F), dtype=np.float32)
  pick = np.array([0, 49, 7, 7], np.int32)
  np.testing.assert_array_equal(
      np.asarray(device_windows.gather_windows(jnp.asarray(samples), pick, None)), samples[pick])


def test_batches_of_ends_follow_the_host_batches():
  ds = _dataset()
  split = ds.splits["train"]
  labels = split.labels == 1
  plan = sampling.epoch_plan(labels, 32, seed=3, epoch=1, sampler="oversample",
                             oversample_fraction=0.4)
  assert (plan >= len(split)).any()  # Copies (index >= n) included.
  for rows, skip in ((None, 0), ((8, 24), 3)):
    host = list(loader.train_batches(ds, plan, rows=rows, skip=skip))
    ends = list(loader.train_ends(ds, plan, rows=rows, skip=skip))
    assert len(ends) == len(host) == len(plan) - skip
    for h, e in zip(host, ends):
      assert e["ends"].dtype == np.int32 and set(e) == {"ends", "y", "r"}
      rows_idx = e["ends"][:, None] + np.arange(1 - T, 1)
      np.testing.assert_array_equal(ds.features[rows_idx], h["x"])
      for k in ("y", "r"):
        assert e[k].dtype == h[k].dtype
        np.testing.assert_array_equal(e[k], h[k])
  for h, e in zip(loader.eval_batches(ds, "val", 48, rows=(16, 48)),
                  loader.eval_batches(ds, "val", 48, rows=(16, 48), ends=True)):
    np.testing.assert_array_equal(ds.features[e["ends"][:, None] + np.arange(1 - T, 1)], h["x"])
    for k in ("y", "r", "mask"):
      np.testing.assert_array_equal(e[k], h[k])


def _data_config(**changes):
  c = config_defaults.get_config().data
  for k, v in changes.items():
    c[k] = v
  return c


def test_jitter_or_a_matrix_over_budget_falls_back_and_on_refuses(monkeypatch):
  ds, mesh = _dataset(), parallel.make_mesh(config_defaults.get_config().mesh)
  lines = []
  jitter = {"sampler": "oversample", "oversample_jitter": 0.1}
  assert device_windows.for_run(_data_config(**jitter), ds, mesh, lines.append) is None
  assert lines == ["Windows gathered on the host (data.device_windows='auto'): "
                   "data.oversample_jitter=0.1 adds noise to repeated windows on the host."]
  with pytest.raises(ValueError, match=r"^config.data.device_windows='on' is impossible: "
                     r"data.oversample_jitter=0.1 adds noise"):
    device_windows.for_run(_data_config(device_windows="on", **jitter), ds, mesh, print)
  config = config_defaults.get_config()
  config.data.update(device_windows="on", **jitter)
  with pytest.raises(config_check.ConfigError, match=r"config.data.device_windows='on' is "
                     r"invalid: data.oversample_jitter > 0"):
    config_check.validate(config)
  # "off" never places; "auto" places a matrix within the budget...
  assert device_windows.for_run(_data_config(device_windows="off"), ds, mesh, print) is None
  placed = device_windows.for_run(_data_config(), ds, mesh, lines.append)
  np.testing.assert_array_equal(np.asarray(placed.features), ds.features)
  assert placed.host is ds.features and placed.window == T
  # ...and not one over it.
  monkeypatch.setattr(device_windows, "CPU_BUDGET_BYTES", ds.features.nbytes - 1)
  assert device_windows.for_run(_data_config(), ds, mesh, lines.append) is None
  assert "over the device budget" in lines[-1]
  with pytest.raises(ValueError, match="over the device budget"):
    device_windows.for_run(_data_config(device_windows="on"), ds, mesh, print)


def _same(a, b):
  """Equal JSON values, NaN equal to NaN."""
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(map(_same, a, b))
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b


TIMING = ("seconds", "samples_per_s", "samples_per_s_per_device")


def _results(workdir):
  """metrics.jsonl without timing fields, and report.json without timing and paths."""
  rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
          for line in open(os.path.join(workdir, "metrics.jsonl"))]
  report = json.load(open(os.path.join(workdir, "report.json")))
  for k in ("workdir", "train_seconds"):
    report.pop(k)
  return rows, report


def test_a_run_on_the_device_gather_equals_one_on_the_host(tmp_path, capsys):
  results = {}
  for mode in ("on", "off"):
    config = conftest.tiny_config(tmp_path / "data", {"data.device_windows": mode})
    train.train_and_evaluate(config, str(tmp_path / mode))
    results[mode] = _results(str(tmp_path / mode))
  assert "Windows gathered on the device" in capsys.readouterr().out
  assert len(results["on"][0]) == 1 and _same(results["on"][0], results["off"][0])
  assert _same(results["on"][1], results["off"][1])
  # The tiny runs of the other tests (test_faults' resumes) take this path too.
  assert config_defaults.get_config().data.device_windows == "auto"
