"""One population member's train step, with its hyperparameters as traced arrays.

steps.make_train_step's arithmetic (the one body both run, steps.step_update), reading
the numbers members may differ in (population.MEMBER_KEYS) from `hp` instead of the
config, so one compiled program serves every value: the loss is
losses.make_traced_loss_fn, the optimizer is optim.clip_adamw on optax's warmup + cosine
pieces with the member's peak and end rate, mixup is mixup.mixup with the member's
probability. jaxquant/population.py runs it over a leading member axis;
tests/test_population.py checks it against single runs.
"""

import jax
import jax.numpy as jnp
import optax

from jaxquant import losses
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib


def member_schedule(train_config, steps_per_epoch, lr, end_lr):
  """state.make_optimizer's warmup + cosine schedule with a traced peak and end rate.

  Built from the pieces optax.warmup_cosine_decay_schedule joins (its `peak == 0`
  test needs a concrete number), so the arithmetic is optax's.
  """
  total, warmup = state_lib.schedule_lengths(train_config, steps_per_epoch)
  ratio = jnp.where(lr == 0.0, 0.0, end_lr / jnp.where(lr == 0.0, 1.0, lr))
  return optax.join_schedules(
      [optax.linear_schedule(init_value=0.0, end_value=lr, transition_steps=warmup),
       optax.cosine_decay_schedule(init_value=lr, decay_steps=total - warmup, alpha=ratio)],
      [warmup])


def make_member_step(model, config, num_classes, steps_per_epoch, return_scale=1.0,
                     trainable=None, mixup=False):
  """Returns `step(state, batch, rng, hp) -> (state, metrics)` for ONE member (pure).

  steps.make_train_step's step (steps.step_update), reading lr/end_lr, class weights, gamma, label
  smoothing, composite alpha, mixup probability and return weight from `hp` (one
  member's entries of member_hparams). A non-finite step leaves the member's
  parameters, moments and counts as they were (`skipped=1`); `hp["frozen"]` leaves
  its whole state, step included, bit for bit as it was.

  Args:
    mixup: whether any member mixes up (mixup_prob > 0): with False the step has
      no mixup at all; with True a member's coin comes up with its own probability.
  """
  loss_fn = losses.make_traced_loss_fn(config.loss, num_classes)
  mix_alpha = float(config.train.mixup_alpha)
  total_steps = config.train.epochs * steps_per_epoch

  def step(state, batch, rng, hp):
    schedule = member_schedule(config.train, steps_per_epoch, hp["lr"], hp["end_lr"])
    tx = state_lib.optimizer_on(config.train, schedule, trainable)
    new, metrics = steps_lib.step_update(
        model, tx, schedule, lambda *a: loss_fn(*a, hp), state, batch, rng, num_classes,
        total_steps, return_scale, hp["return_weight"], mix_alpha, hp["mixup_prob"], mixup,
        hold=hp["frozen"])
    # A frozen member's state as it was, bit for bit (p + 0.0 would turn -0.0 into 0.0).
    new = jax.tree.map(lambda old, upd: jnp.where(hp["frozen"], old, upd), state, new)
    return new, metrics

  return step
