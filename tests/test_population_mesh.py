"""Members over a `member` mesh axis (mesh.member): on 8 simulated CPU devices, a
population of 4 split member=4 x data=2 trains and predicts every member as the same
population does on one device, and each device group really holds only its own member.

The 8-device work runs in a subprocess (the device count is fixed at jax import):
`python tests/test_population_mesh.py OUT_DIR` is that worker.
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from jaxquant import config_check
from jaxquant import parallel

STEPS = 3
DEVICES, MEMBERS = 8, 4
# float32 with a different op order (vmap on 8 devices against lax.map on one, gradients
# summed over two data shards): relative 1e-5 with test_population's absolute floor.
RTOL, ATOL = 1e-5, 1e-6
MEMBER_CHANGES = [{"train.seed": 0, "loss.alpha": "1,4"}, {"train.seed": 1, "loss.alpha": "1,8"},
                  {"train.seed": 2, "loss.alpha": "1,4", "train.lr": 3e-3},
                  {"train.seed": 3, "loss.alpha": "1,14.6", "loss.gamma": 0.0}]


def _worker(out_dir):
  """Trains the population on one device and on member=4 x data=2; writes the numbers."""
  import jax
  from jaxquant import compile_cache
  from jaxquant import plots
  from jaxquant import population
  from jaxquant import population_train
  from jaxquant.data import dataset as dataset_lib
  from jaxquant.data import loader

  assert jax.device_count() == DEVICES
  # The end-to-end run below compiles the member mesh's steps again: load them.
  os.environ["JAXQUANT_COMPILATION_CACHE"] = os.path.join(out_dir, "jax_cache")
  compile_cache.enable()
  configs = [tiny_config(os.path.join(out_dir, "data"), {**ch, "mesh.member": MEMBERS})
             for ch in MEMBER_CHANGES]
  c = configs[0]
  ds = dataset_lib.build_dataset(c.data, dataset_lib.ensure_data(c.data, log=print))
  # As population_train plans them on the 8 devices (the same steps, compiled once).
  spe = loader.train_plan(ds, c.data, c.train.batch_size, c.train.seed, 0,
                          shards=DEVICES).shape[0]
  batches = [b for _, b in zip(range(STEPS), population.population_batches(
      ds, configs, 0, shards=DEVICES))]
  single = ml_collections.ConfigDict({"data": -1, "expert": 1, "member": 1})
  meshes = {"one": parallel.make_mesh(single, devices=jax.devices()[:1]),
            "eight": parallel.make_mesh(c.mesh)}
  info = {"mesh": dict(meshes["eight"].shape),
          "single_run_mesh": dict(parallel.make_mesh(single).shape)}
  try:
    population.check_member_mesh(meshes["eight"], 3)
  except ValueError as e:
    info["indivisible"] = str(e)
  record = {}
  for name, mesh in meshes.items():
    setup = population.setup_population(configs, ds, mesh, spe)
    states = setup.steps.place_states(jax.tree.map(np.array, setup.states))
    for t, b in enumerate(batches):
      batch = setup.put_batches(b)
      if name == "eight" and t == 0:
        info["batch_shards"] = sorted({s.data.shape for s in batch["x"].addressable_shards})
      states, metrics = setup.train_step(states, batch, setup.rngs, setup.hparams)
      for k, v in jax.device_get(metrics).items():
        record[f"{name}/metrics{t}/{k}"] = np.asarray(v)
    if name == "eight":  # Leaf -> {device: member rows it holds}; the step's collectives.
      hlo = setup.train_step.lower(states, batch, setup.rngs, setup.hparams).compile().as_text()
      info["collectives"] = {op: hlo.count(f" {op}(") for op in ("all-gather", "all-reduce")}
      info["shards"] = {
          jax.tree_util.keystr(path): [[s.device.id, *s.index[0].indices(MEMBERS)[:2]]
                                       for s in leaf.addressable_shards]
          for path, leaf in jax.tree_util.tree_leaves_with_path(states)}
    probs, rets = setup.predict_split(states, ds, "val", c.eval.batch_size)
    record[f"{name}/val_probs"], record[f"{name}/val_rets"] = probs, rets
    host = jax.device_get(states)
    for path, leaf in jax.tree_util.tree_leaves_with_path(
        {"params": host.params, "opt_state": host.opt_state,
         "batch_stats": host.batch_stats, "step": host.step}):
      record[f"{name}/state{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  np.savez(os.path.join(out_dir, "record.npz"), **record)
  # The whole loop, one epoch, on the member mesh; its 4 x 8 figures are not rendered
  # (tests/test_plots.py tests them), which would take most of this test's time.
  plots.save_png = lambda fig, path: os.fspath(path)
  reports = population_train.train_population(
      configs, [os.path.join(out_dir, f"run{i}") for i in range(MEMBERS)])
  info["e2e_reports"] = len(reports)
  with open(os.path.join(out_dir, "info.json"), "w") as f:
    json.dump(info, f)


@pytest.fixture(scope="session")  # (Once per xdist worker, whatever runs between.)
def worker(tmp_path_factory):
  out = tmp_path_factory.mktemp("population_mesh")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES} "
             "--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  with open(out / "info.json") as f:
    info = json.load(f)
  return out, info, dict(np.load(out / "record.npz")), proc.stdout


def test_members_on_eight_devices_match_one_device(worker):
  _, info, record, _ = worker
  assert info["mesh"] == {"member": MEMBERS, "data": 2, "expert": 1}
  one = {k[len("one/"):] for k in record if k.startswith("one/")}
  assert one == {k[len("eight/"):] for k in record if k.startswith("eight/")}
  assert any(k.startswith("state['params']") for k in one)
  assert any(k.startswith("state['opt_state']") for k in one)
  assert {f"metrics{t}/loss" for t in range(STEPS)} <= one
  bad = []
  for key in sorted(one):
    a, b = record["one/" + key], record["eight/" + key]
    assert a.shape[0] == MEMBERS, key  # Every entry is per member.
    for m in range(MEMBERS):
      if not np.allclose(b[m], a[m], rtol=RTOL, atol=ATOL):
        bad.append(f"member {m} {key}: max abs diff {np.max(np.abs(b[m] - a[m])):.3g}")
  assert not bad, "\n".join(bad[:20])
  np.testing.assert_array_equal(record["one/state['step']"], STEPS)
  # The members really differ (seeds, class weights), so the match is per member.
  probs = record["one/val_probs"]
  assert all(not np.allclose(probs[0], probs[m]) for m in range(1, MEMBERS))


def test_each_device_group_holds_only_its_own_member(worker):
  _, info, _, _ = worker
  assert info["shards"]
  for leaf, shards in info["shards"].items():
    assert len(shards) == DEVICES, leaf
    held = {}
    for device, start, stop in shards:
      assert stop - start == 1, f"{leaf}: device {device} holds members {start}..{stop - 1}"
      held.setdefault(start, set()).add(device)
    # 4 members, each on its own 2 devices (its data=2 group).
    assert sorted(held) == list(range(MEMBERS)), leaf
    assert all(len(d) == DEVICES // MEMBERS for d in held.values()), leaf
  # Gradients are summed within each member's data group; no member is gathered.
  assert info["collectives"]["all-gather"] == 0 and info["collectives"]["all-reduce"] > 0
  # A batch shard: one member's half of its batch.
  batch_size = tiny_config("unused").train.batch_size
  assert {tuple(s)[:2] for s in info["batch_shards"]} == {(1, batch_size // 2)}


def test_member_mesh_settings_and_errors(worker):
  out, info, _, stdout = worker
  # mesh.member = 1: the single-run mesh as it always was.
  assert info["single_run_mesh"] == {"data": DEVICES, "expert": 1}
  assert "config.mesh.member" in info["indivisible"] and "3 member" in info["indivisible"]
  assert info["e2e_reports"] == MEMBERS
  assert "mesh {'member': 4, 'data': 2, 'expert': 1}" in stdout, stdout[-2000:]
  for i in range(MEMBERS):
    with open(out / f"run{i}" / "metrics.jsonl") as f:
      assert len(f.read().splitlines()) == 1  # One epoch.
    assert os.path.exists(out / f"run{i}" / "report.json")
  here = ml_collections.ConfigDict({"data": -1, "expert": 1, "member": 2})
  with pytest.raises(ValueError, match="member=2 x data=-1 x expert=1 does not cover"):
    parallel.make_mesh(here)  # This process has one device.
  for bad in (0, -2):
    c = tiny_config("unused", {"mesh.member": bad})
    with pytest.raises(config_check.ConfigError, match="config.mesh.member"):
      config_check.validate(c)
  config_check.validate(tiny_config("unused", {"mesh.member": -1}))


if __name__ == "__main__":
  _worker(sys.argv[1])
