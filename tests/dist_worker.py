"""Run by tests/test_parallel.py in a subprocess (device count is fixed at jax import).

  python tests/dist_worker.py steps MODEL OUT.npz       a few train steps on random data
  python tests/dist_worker.py train_moe WORKDIR DATA    a tiny MoE run on mesh.expert=2
  python tests/dist_worker.py agree                     a SIGTERM on process 1 only
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxquant import cli  # noqa: E402
from jaxquant import losses  # noqa: E402
from jaxquant import parallel  # noqa: E402
from jaxquant import train  # noqa: E402
from jaxquant import state as state_lib  # noqa: E402
from jaxquant import steps as steps_lib  # noqa: E402


def tiny_config(model):
  from configs import gru, moe, resnet
  c = {"gru": gru, "resnet": resnet, "moe": moe}[model].get_config("quick")
  c.data.window = 16
  c.train.batch_size = 16
  c.train.epochs = 1
  if model == "resnet":
    c.model.depth = 10  # Same blocks and BatchNorms as 18, a quarter of the compile time.
    c.model.width = 4
    c.model.plane_width = 4
    c.model.head_features = (16, 8)
    # Sharding is what is compared here, and XLA's convolutions compile in 2/3 of the
    # time of the CPU default's patch convolutions (checked on their own in
    # tests/test_patch_conv.py).
    c.model.conv_impl = "xla"
  if model == "moe":
    c.mesh.expert = 2 if jax.device_count() % 2 == 0 and jax.device_count() > 1 else 1
  return c


def run_steps(model_name, out, steps=3):
  c = tiny_config(model_name)
  mesh = parallel.make_mesh(c.mesh)
  model = state_lib.make_model(c, 2)
  tx, schedule = state_lib.make_optimizer(c.train, steps)
  loss_fn = losses.make_loss_fn(c.loss, np.array([0.6, 3.0], np.float32))
  state = state_lib.create_train_state(model, tx, 6, c.data.window, 0)
  step = steps_lib.make_train_step(model, tx, loss_fn, schedule, c, 2, steps)
  runner = steps_lib.ShardedSteps(model, mesh, state, step)
  state = runner.place_state(state)
  rng = np.random.default_rng(0)
  record = {}
  for i in range(steps):
    batch = {"x": rng.normal(size=(16, c.data.window, 6)).astype(np.float32),
             "y": (rng.random(16) < 0.3).astype(np.int32),
             "r": rng.normal(size=16).astype(np.float32) * 0.01}
    if i == 0:  # Which parameters have a (numerically) zero gradient at all?
      g = _grad_absmax(model, loss_fn, state, batch)
      for path, leaf in jax.tree_util.tree_leaves_with_path({"params": g}):
        record["g" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    state, m = runner.train_step(state, runner.put_batch(batch), jax.random.key(1))
    record[f"loss_{i}"] = np.asarray(m["loss"])
  leaves = jax.tree_util.tree_leaves_with_path(
      {"params": state.params, "batch_stats": state.batch_stats})
  for path, leaf in leaves:
    record["p" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  np.savez(out, devices=jax.device_count(), **record)


def _grad_absmax(model, loss_fn, state, batch):
  import jax.numpy as jnp

  def objective(params):
    # Train mode: BatchNorm normalises with batch statistics, as in the step.
    out, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["x"],
                         train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(0)})
    value, _ = loss_fn(out["logits"], jax.nn.one_hot(batch["y"], 2), jnp.ones(16), 0.0)
    return value + out["aux_loss"]

  return jax.tree.map(lambda x: jnp.abs(x).max(), jax.grad(objective)(state.params))


def run_train_moe(workdir, data_dir):
  """The quick MoE, experts split over 2 devices (its saved mesh needs an even count)."""
  from conftest import tiny_config
  from configs import moe
  config = tiny_config(data_dir, {"mesh.expert": 2, "data.synth.days": 4},
                       config=moe.get_config("quick"))
  train.train_and_evaluate(config, workdir)


def run_agree():
  """Process 1 alone gets a SIGTERM at batch 3; both must stop at the same batch."""
  import signal
  from jaxquant import resume
  cli.initialize_distributed()
  with resume.Preemption() as preemption:
    for batch in range(1, 17):
      if batch == 3 and jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      stop = preemption.agreed(batch)
      if stop:
        print(f"process {jax.process_index()} stops at batch {batch} on {stop}", flush=True)
        break
    print(f"process {jax.process_index()} after the loop: {preemption.agreed()}", flush=True)


if __name__ == "__main__":
  if sys.argv[1] == "agree":
    run_agree()
  elif sys.argv[1] == "steps":
    run_steps(sys.argv[2], sys.argv[3])
  elif sys.argv[1] == "train_moe":
    run_train_moe(sys.argv[2], sys.argv[3])
  else:
    raise SystemExit(f"unknown mode {sys.argv[1]!r}")
