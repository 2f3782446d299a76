"""The jitted train step: learns a learnable batch, skips non-finite updates, decays kernels only."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import default
from jaxquant import losses
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib


def _setup(epochs=50, lr=1e-2):
  config = default.get_config()
  config.model.hidden = 16
  config.model.num_layers = 1
  config.model.dropout = 0.0
  config.train.epochs = epochs
  config.train.lr = lr
  config.train.warmup_epochs = 0.0
  model = state_lib.make_model(config, 2)
  tx, schedule = state_lib.make_optimizer(config.train, steps_per_epoch=1)
  loss_fn = losses.make_loss_fn(config.loss, np.array([1.0, 1.0], np.float32))
  state = state_lib.create_train_state(model, tx, num_features=3, window=12, seed=0)
  step = steps_lib.make_train_step(model, tx, loss_fn, schedule, config, num_classes=2,
                               total_steps=epochs)
  return model, state, jax.jit(step)


def _learnable_batch(n=64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 12, 3)).astype(np.float32)
  y = (x[:, -3:, 0].sum(1) > 0).astype(np.int32)  # Visible in the last bars.
  return {"x": x, "y": y, "r": np.zeros(n, np.float32)}


def test_train_step_decreases_loss():
  _, state, step = _setup()
  batch = _learnable_batch()
  rng = jax.random.key(0)
  losses_seen = []
  for _ in range(40):
    state, m = step(state, batch, rng)
    losses_seen.append(float(m["loss"]))
  assert losses_seen[-1] < 0.3 * losses_seen[0], losses_seen
  assert int(state.step) == 40


def test_non_finite_batch_is_skipped_and_state_unchanged():
  _, state, step = _setup()
  batch = _learnable_batch()
  state, _ = step(state, batch, jax.random.key(0))
  before = jax.tree.map(np.asarray, state.params)
  bad = dict(batch, x=batch["x"].copy())
  bad["x"][0, 0, 0] = np.nan
  state, m = step(state, bad, jax.random.key(0))
  assert int(m["skipped"]) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.opt_state)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating))


def test_weight_decay_only_on_kernels():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "ln": {"scale": jnp.ones(2)}, "experts": {"w_in": jnp.ones((4, 2, 3)),
                                                      "b_in": jnp.ones((4, 3))}}
  mask = state_lib.decay_mask(params)
  assert mask == {"dense": {"kernel": True, "bias": False}, "ln": {"scale": False},
                  "experts": {"w_in": True, "b_in": False}}


def test_schedule_warms_up_then_decays_to_end_lr():
  cfg = ml_collections.ConfigDict(dict(epochs=10, lr=1e-3, end_lr=1e-6, warmup_epochs=1.0,
                                       weight_decay=0.0, clip_norm=1.0))
  _, schedule = state_lib.make_optimizer(cfg, steps_per_epoch=100)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(1000)), 1e-6, rtol=1e-5)
  assert float(schedule(550)) < float(schedule(200))


def test_checkpoint_store_takes_a_relative_directory(tmp_path, monkeypatch):
  # The default workdir (runs/<name>-<time>) is relative; Orbax needs absolute paths.
  from jaxquant import checkpoints
  monkeypatch.chdir(tmp_path)
  store = checkpoints.CheckpointStore(os.path.join("runs", "x", "checkpoints"))
  tree = {"w": jnp.arange(3.0)}
  store.save(1, tree, {"epoch": 0}, score=0.5)
  restored, meta = store.restore(1, checkpoints.abstract_like(tree))
  store.close()
  np.testing.assert_array_equal(restored["w"], tree["w"])
  assert meta == {"epoch": 0}
