"""Same numbers on any device count and process count (simulated CPU devices)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")


def _run(args, devices=1, extra_env=None, timeout=300):
  # Both layouts compile without LLVM optimisation: the sharding (SPMD partitioning,
  # collectives) is the same, and the 2-core CI spends ~1/4 less time compiling.
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             "--xla_backend_optimization_level=0",
             JAX_PLATFORMS="cpu", **(extra_env or {}))
  return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(proc, timeout=400):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


@pytest.mark.parametrize("model", ["gru", "resnet", "moe"])
def test_eight_devices_match_one(model, tmp_path):
  one, eight = tmp_path / "one.npz", tmp_path / "eight.npz"
  procs = [_run(["steps", model, str(one)], devices=1),
           _run(["steps", model, str(eight)], devices=8)]
  for p in procs:
    _wait(p)
  a, b = np.load(one), np.load(eight)
  assert int(a["devices"]) == 1 and int(b["devices"]) == 8
  assert set(a.files) == set(b.files)
  gmax = max(a[k] for k in a.files if k.startswith("g"))
  for key in set(a.files) - {"devices"}:
    if key.startswith("g"):
      continue
    if key.startswith("p['params']") and a["g" + key[1:]] < 1e-6 * gmax:
      # Parameters with an analytically zero gradient (a bias feeding a BatchNorm,
      # attention key biases): Adam turns rounding noise into steps of up to lr
      # each, different on each layout, so only that bound holds.
      assert np.abs(a[key] - b[key]).max() <= 2 * 3 * 2e-3, key
      continue
    if "head_bn" in key and "batch_stats" in key:
      # ...and the BatchNorm right after it averages that bias into its running mean.
      np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=3e-4, err_msg=key)
      continue
    # BatchNorm statistics and gradients are over the global batch on both.
    np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=2e-5, err_msg=key)


def test_two_processes_train_together_like_one(tmp_path):
  data = str(tmp_path / "data")
  _wait(_run(["train", str(tmp_path / "single"), data], devices=2))
  port = 20000 + os.getpid() % 20000
  procs = [_run(["train", str(tmp_path / "multi"), data], devices=1, extra_env={
      "JAXQUANT_COORDINATOR": f"127.0.0.1:{port}", "JAXQUANT_NUM_PROCESSES": "2",
      "JAXQUANT_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [_wait(p) for p in procs]
  assert "2 process(es)" in outs[0]
  single = [json.loads(l) for l in open(tmp_path / "single" / "metrics.jsonl")]
  multi = [json.loads(l) for l in open(tmp_path / "multi" / "metrics.jsonl")]
  assert len(single) == len(multi) == 2
  for s, m in zip(single, multi):
    for key in ("train_loss", "val_loss", "val_roc_auc", "val_f1"):
      np.testing.assert_allclose(s[key], m[key], rtol=1e-4, err_msg=key)
  rs = json.load(open(tmp_path / "single" / "report.json"))
  rm = json.load(open(tmp_path / "multi" / "report.json"))
  np.testing.assert_allclose(rs["test"]["roc_auc"], rm["test"]["roc_auc"], rtol=1e-4)

  # Restore anywhere: the run trained sharded over 2 devices, evaluated here on 1.
  from jaxquant import evaluate
  import jax
  assert jax.device_count() == 1
  here = evaluate.evaluate(str(tmp_path / "single"))
  for split in ("val", "test"):
    assert here[split]["confusion"] == rs[split]["confusion"]
    np.testing.assert_allclose(here[split]["roc_auc"], rs[split]["roc_auc"], rtol=1e-5)



def test_restore_mesh_fits_the_devices_here():
  import jax
  import ml_collections
  from jaxquant import parallel
  assert jax.device_count() == 1
  saved = ml_collections.ConfigDict({"data": -1, "expert": 2})  # Trained on 8 devices.
  with pytest.raises(ValueError, match="does not cover the 1 devices"):
    parallel.make_mesh(saved)
  assert dict(parallel.restore_mesh(saved).shape) == {"data": 1, "expert": 1}
  here = ml_collections.ConfigDict({"data": -1, "expert": 1})
  assert dict(parallel.restore_mesh(here).shape) == dict(parallel.make_mesh(here).shape)


def test_a_run_saved_with_experts_over_two_devices_evaluates_on_one(tmp_path):
  """Restore on any device count: the saved mesh (mesh.expert=2) does not fit one device,
  and evaluation uses the devices there are."""
  from jaxquant import evaluate
  import jax
  workdir = tmp_path / "moe"
  _wait(_run(["train_moe", str(workdir), str(tmp_path / "data")], devices=8))
  saved = json.load(open(workdir / "report.json"))
  assert json.load(open(workdir / "config.json"))["mesh"]["expert"] == 2
  assert jax.device_count() == 1
  here = evaluate.evaluate(str(workdir))
  assert here["best_step"] == saved["best_step"]
  for split in ("val", "test"):
    assert here[split]["confusion"] == saved[split]["confusion"], split
    for key in ("roc_auc", "f1", "precision", "recall"):
      np.testing.assert_allclose(here[split][key], saved[split][key], rtol=1e-5, atol=1e-7,
                                 err_msg=f"{split}.{key}")
