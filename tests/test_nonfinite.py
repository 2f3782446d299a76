"""Non-finite losses and gradients inside a real run: skipped, counted, logged with
their steps; a streak stops the run; no checkpoint ever holds a non-finite value."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxquant import checkpoints as checkpoints_lib
from jaxquant import losses
from jaxquant import state as state_lib
from jaxquant import train

EPOCHS = 4
ISOLATED_NAN_LOSS = (2, 5)  # Optimizer steps (0-based, before the update) with a NaN loss...
ISOLATED_INF_GRAD = (8,)    # ...one with a finite loss but an infinite gradient...
STREAK_FROM_EPOCH = 2       # ...and every step from the start of this (0-based) epoch on.


@jax.custom_vjp
def _poison_grad(x, bad):
  return x


def _poison_fwd(x, bad):
  return x, bad


def _poison_bwd(bad, g):
  return jnp.where(bad, jnp.inf, g), jnp.zeros_like(bad)


_poison_grad.defvjp(_poison_fwd, _poison_bwd)


def nonfinite_config(data_dir):
  return tiny_config(data_dir, {"train.epochs": EPOCHS, "train.batch_size": 128,
                                "train.max_bad_steps": 3, "train.patience": 100,
                                "eval.collapse_patience": 100})


@pytest.fixture(scope="module")
def poisoned_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("nonfinite")
  config = nonfinite_config(root / "data")
  real = losses.make_loss_fn
  steps_per_epoch = {}

  def poisoned_make_loss_fn(loss_config, alpha):
    loss_fn = real(loss_config, alpha)
    total = EPOCHS * steps_per_epoch["n"]

    def loss(logits, targets, mask, progress):
      value, parts = loss_fn(logits, targets, mask, progress)
      step = jnp.round(progress * total).astype(jnp.int32)
      nan_loss = jnp.isin(step, jnp.array(ISOLATED_NAN_LOSS))
      nan_loss |= step >= STREAK_FROM_EPOCH * steps_per_epoch["n"]
      value = jnp.where(nan_loss, jnp.nan, value)
      value = _poison_grad(value, jnp.isin(step, jnp.array(ISOLATED_INF_GRAD)))
      return value, parts
    return loss

  from jaxquant.data import dataset as dataset_lib
  from jaxquant.data import loader
  data_dir = dataset_lib.ensure_data(config.data, log=lambda *a: None)
  ds = dataset_lib.build_dataset(config.data, data_dir)
  steps_per_epoch["n"] = loader.train_plan(ds, config.data, config.train.batch_size,
                                           config.train.seed, 0).shape[0]
  mp = pytest.MonkeyPatch()
  mp.setattr(losses, "make_loss_fn", poisoned_make_loss_fn)
  try:
    workdir = str(root / "run")
    report = train.train_and_evaluate(config, workdir)
  finally:
    mp.undo()
  return workdir, report, steps_per_epoch["n"]


def test_bad_steps_are_skipped_counted_and_logged_with_their_step(poisoned_run):
  workdir, _, _ = poisoned_run
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  first = rows[0]
  # Steps are reported 1-based (the optimizer step count after the batch).
  expected = sorted(s + 1 for s in ISOLATED_NAN_LOSS + ISOLATED_INF_GRAD)
  assert first["skipped_steps"] == len(expected)
  assert first["skipped_at"] == expected
  assert np.isfinite(first["train_loss"])  # The mean is over the good steps only.
  assert rows[1]["skipped_steps"] == 0


def test_a_streak_stops_the_run_and_keeps_the_last_good_checkpoint(poisoned_run):
  workdir, report, steps = poisoned_run
  assert "consecutive steps with a non-finite loss or gradient" in report["stop_reason"]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows] == list(range(1, STREAK_FROM_EPOCH + 1))
  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"))
  try:
    assert store.latest_step() == STREAK_FROM_EPOCH * steps  # The last good epoch's end.
    for step in store.all_steps():
      state, meta = store.restore(step, _abstract_state(workdir))
      assert meta["progress"]["epoch"] <= STREAK_FROM_EPOCH
      for leaf in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64))), step
  finally:
    store.close()
  # The test report comes from a finite best checkpoint.
  assert np.isfinite(report["test"]["roc_auc"])


def _abstract_state(workdir):
  from jaxquant import evaluate
  config = evaluate.load_run_config(workdir)
  model = state_lib.make_model(config, 2)
  tx, _ = state_lib.make_optimizer(config.train, 10)
  return state_lib.create_train_state(model, tx, 6, config.data.window, 0, abstract=True)
