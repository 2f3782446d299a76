"""Same numbers on any device count and process count (simulated CPU devices)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_flags
from test_launch import EPOCHS, LAUNCH, launch_env, two_process_run

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
  """tests/test_launch.py's `launch.sh --nproc=2` run (one device each) against the same
  command in one process with 2 devices."""
  caller, multi = two_process_run()
  assert multi.returncode == 0, multi.stderr[-2000:]
  single = subprocess.run(
      [LAUNCH, "configs/gru.py:quick", f"--workdir={tmp_path / 'single'}",
       *tiny_flags(os.path.join(caller, "data"), EPOCHS)], cwd=caller, capture_output=True,
      env=launch_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), text=True,
      timeout=400)
  assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
  assert "2 cpu device(s) in 1 process(es)" in single.stdout, single.stdout[:2000]
  assert any(l.startswith("[0] 2 cpu device(s) in 2 process(es)")
             for l in multi.stdout.splitlines())
  multi_dir = os.path.join(caller, "run")
  single = [json.loads(l) for l in open(tmp_path / "single" / "metrics.jsonl")]
  multi = [json.loads(l) for l in open(os.path.join(multi_dir, "metrics.jsonl"))]
  assert len(single) == len(multi) == EPOCHS["train.epochs"]
  for s, m in zip(single, multi):
    for key in ("train_loss", "val_loss", "val_roc_auc", "val_f1"):
      np.testing.assert_allclose(s[key], m[key], rtol=1e-4, err_msg=key)
  rs = json.load(open(tmp_path / "single" / "report.json"))
  rm = json.load(open(os.path.join(multi_dir, "report.json")))
  np.testing.assert_allclose(rs["test"]["roc_auc"], rm["test"]["roc_auc"], rtol=1e-4)

  # Restore anywhere: the run trained sharded over 2 devices, evaluated here on 1.
  from jaxquant import evaluate
  import jax
  assert jax.device_count() == 1
  here = evaluate.evaluate(str(tmp_path / "single"))
  for split in ("val", "test"):
    assert here[split]["confusion"] == rs[split]["confusion"]
    np.testing.assert_allclose(here[split]["roc_auc"], rs[split]["roc_auc"], rtol=1e-5)



def test_a_signal_on_one_process_stops_every_process_at_the_same_batch():
  """scancel's SIGTERMs land apart (or on one task): the collective save needs all."""
  port = 20000 + (os.getpid() + 7) % 20000
  procs = [_run(["agree"], extra_env={
      "JAXQUANT_COORDINATOR": f"127.0.0.1:{port}", "JAXQUANT_NUM_PROCESSES": "2",
      "JAXQUANT_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [_wait(p, timeout=120) for p in procs]
  for i, out in enumerate(outs):
    assert f"process {i} stops at batch 8 on SIGTERM" in out, out[-2000:]
    assert f"process {i} after the loop: SIGTERM" in out, out[-2000:]


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
