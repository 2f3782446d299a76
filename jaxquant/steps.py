"""The pure train and predict steps, and their jitted, sharded form.

`make_train_step` and `make_predict_step` return pure functions of explicit state
(jit or vmap them); `ShardedSteps` jits them on a mesh with the batch split over
the data axis; `setup_run` builds everything a run's steps need, once, for the
training loop and for benchmarks/epoch_time.py alike.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxquant import device_windows
from jaxquant import host_memory
from jaxquant import losses
from jaxquant import mixup as mixup_lib
from jaxquant import optim
from jaxquant import parallel
from jaxquant import state as state_lib
from jaxquant import xla_options
from jaxquant.data import loader

# What every train step reports; the rest of its metrics are the model's own stats.
STEP_METRICS = ("loss", "class_loss", "return_loss", "grad_norm", "lr", "skipped", "mixup")


def make_train_step(model, tx, loss_fn, schedule, config, num_classes, total_steps,
                    return_scale=1.0):
  """Returns `train_step(state, batch, rng) -> (state, metrics)` (pure; jit it).

  The objective is the class loss (on one-hot targets, mixed up when configured) + `loss.return_weight` · MSE of the return head on the forward
  return / `return_scale` (its training-split std) + the model's auxiliary loss
  (MoE load balancing). A step whose loss or gradient is not finite leaves the
  state unchanged and reports `skipped=1`.
  """
  return_weight = float(config.loss.return_weight)
  mix_alpha, mix_prob = float(config.train.mixup_alpha), float(config.train.mixup_prob)

  def train_step(state, batch, rng):
    return step_update(model, tx, schedule, loss_fn, state, batch, rng, num_classes,
                       total_steps, return_scale, return_weight, mix_alpha, mix_prob,
                       mixup=mix_prob > 0)

  return train_step


def step_update(model, tx, schedule, loss_fn, state, batch, rng, num_classes, total_steps,
                return_scale, return_weight, mix_alpha, mix_prob, mixup, hold=None):
  """One train step's arithmetic, for make_train_step and a population member's step
  (member_step.py), whose numbers (return_weight, mix_prob, the schedule's rates) may be
  traced arrays.

  Args:
    loss_fn: `(logits, targets, mask, progress) -> (class loss, parts)`.
    mixup: whether the step mixes up at all (static); a batch is mixed with `mix_prob`.
    hold: None, or a traced bool that, when set, keeps the parameters, moments and
      counts as they were (as a non-finite step does), without `skipped`.

  Returns:
    (state, metrics).
  """
  rng = jax.random.fold_in(rng, state.step)
  mix_rng, dropout_rng = jax.random.split(rng)
  # Label smoothing, when configured, happens inside loss_fn (CE/focal terms only).
  targets = jax.nn.one_hot(batch["y"], num_classes)
  x, returns, mixed = batch["x"], batch["r"], jnp.zeros((), bool)
  if mixup:
    x, targets, returns, mixed = mixup_lib.mixup(mix_rng, x, targets, returns,
                                                 mix_alpha, mix_prob)
  progress = jnp.minimum(state.step / total_steps, 1.0)

  def objective(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    out, updates = model.apply(variables, x, train=True, rngs={"dropout": dropout_rng},
                               mutable=["batch_stats"])
    mask = jnp.ones(returns.shape, jnp.float32)
    class_loss, parts = loss_fn(out["logits"], targets, mask, progress)
    return_loss = jnp.mean((out["ret"] - returns / return_scale) ** 2)
    loss = class_loss + return_weight * return_loss + out["aux_loss"]
    return loss, (class_loss, return_loss, {**parts, **out.get("stats", {})}, updates)

  (loss, (class_loss, return_loss, stats, updates)), grads = jax.value_and_grad(
      objective, has_aux=True)(state.params)
  grad_norm = optim.global_norm(grads)  # The clipping's expression: XLA computes it once.
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A non-finite step keeps the old state: the optimizer leaves parameters,
  # moments and counts as they were (`apply`), and jnp.where the batch statistics.
  apply = ok if hold is None else ok & ~hold
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params, apply=apply)
  batch_stats = jax.tree.map(lambda a, b: jnp.where(ok, a, b),
                             updates.get("batch_stats", state.batch_stats),
                             state.batch_stats)
  new = state.replace(step=state.step + 1,
                      params=optax.apply_updates(state.params, param_updates),
                      batch_stats=batch_stats, opt_state=opt_state)
  metrics = {"loss": loss, "class_loss": class_loss, "return_loss": return_loss,
             "grad_norm": grad_norm, "lr": schedule(state.step),
             "skipped": (~ok).astype(jnp.int32), "mixup": mixed.astype(jnp.float32),
             **stats}
  return new, metrics


def make_predict_step(model):
  """Returns `predict(state, x) -> (class probabilities [B, K], return [B])` (pure)."""
  def predict(state, x):
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                      train=False)
    return jax.nn.softmax(out["logits"], axis=-1), out["ret"]
  return predict


class ShardedSteps:
  """The jitted steps of one model on one mesh, with the host-side batch plumbing."""

  def __init__(self, model, mesh, state, train_step=None, windows=None):
    # Freed memory stays in the process from the first step on (host_memory), not while the
    # data loads: its temporaries would stay resident too.
    host_memory.keep_freed_memory()
    self.mesh = mesh
    self.batch_sharding = parallel.batch_sharding(mesh)
    self.state_sharding = parallel.state_shardings(state, mesh)
    repl = parallel.replicated(mesh)
    # windows (device_windows.DeviceWindows): training batches carry window ends, the
    # step gathers them from the placed matrix (its last argument, bound here).
    self.windows = windows
    if train_step is not None and windows is not None:
      gather = jax.jit(device_windows.gather_step(train_step, windows.window), donate_argnums=0,
                       in_shardings=(self.state_sharding, self.batch_sharding, repl, repl),
                       out_shardings=(self.state_sharding, repl),
                       compiler_options=xla_options.step_options())
      self.train_step = lambda state, batch, rng: gather(state, batch, rng, windows.features)
    elif train_step is not None:
      self.train_step = jax.jit(train_step, donate_argnums=0,
                                in_shardings=(self.state_sharding, self.batch_sharding, repl),
                                out_shardings=(self.state_sharding, repl),
                                compiler_options=xla_options.step_options())
    if windows is not None:
      self._predict_ends = jax.jit(
          device_windows.gather_predict(make_predict_step(model), windows.window),
          in_shardings=(self.state_sharding, self.batch_sharding, repl),
          out_shardings=(repl, repl), compiler_options=xla_options.step_options())
    self._predict = jax.jit(make_predict_step(model),
                            in_shardings=(self.state_sharding, self.batch_sharding),
                            out_shardings=(repl, repl),
                            compiler_options=xla_options.step_options())

  def place_state(self, state):
    return jax.device_put(state, self.state_sharding)

  def put_batch(self, local):
    return parallel.global_batch(local, self.batch_sharding)

  def predict_split(self, state, dataset, split, batch_size):
    """Class probabilities [n, K] and predicted returns [n] for every window of a split.

    Deterministic, and independent of how many devices or processes run it.
    """
    rows = parallel.process_slice(batch_size)
    probs, rets = [], []
    # Window ends where this dataset's matrix is the placed one (other data: host gather).
    ends = (self.windows is not None
            and device_windows.host_matrix(dataset)[0] is self.windows.host)
    for batch in loader.eval_batches(dataset, split, batch_size, rows, ends=ends):
      p, r = (self._predict_ends(state, self.put_batch(batch["ends"]), self.windows.features)
              if ends else self._predict(state, self.put_batch(batch["x"])))
      probs.append(np.asarray(p))
      rets.append(np.asarray(r))
    n = len(dataset.splits[split])
    if not probs:
      return np.zeros((0, dataset.num_classes), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(probs)[:n], np.concatenate(rets)[:n]


def eval_batch_size(config, mesh):
  """eval.batch_size rounded up to a multiple of the device count (padding is masked)."""
  n = mesh.size
  return -(-config.eval.batch_size // n) * n


def split_loss(loss_fn, probs, labels, num_classes):
  """The class loss of a split from its predicted probabilities (at the end of training)."""
  logits = jnp.log(jnp.clip(jnp.asarray(probs), 1e-12, 1.0))
  targets = jax.nn.one_hot(jnp.asarray(labels), num_classes)
  value, _ = loss_fn(logits, targets, jnp.ones(len(labels)), jnp.ones(()))
  return float(value)


class RunSetup(NamedTuple):
  """What `setup_run` builds."""
  trainable: Any  # state.trainable_partition's function, or None.
  tx: optax.GradientTransformation
  alpha: np.ndarray  # Class weights.
  loss_fn: Any
  return_scale: float  # Std of the training split's forward returns.
  state: state_lib.TrainState  # Initial, from train.seed, on the host.
  steps: ShardedSteps  # With the jitted train step.


def setup_run(config, ds, mesh, steps_per_epoch, windows=None):
  """The model, optimizer, loss, initial state and jitted steps of a run on `ds`.

  `train.train_and_evaluate` trains with these, and benchmarks/epoch_time.py times the
  same step, so a benchmarked step is the one a run takes. With `windows`
  (device_windows.for_run's), the train step takes window ends (loader.train_ends).
  """
  model = state_lib.make_model(config, ds.num_classes)
  trainable = state_lib.trainable_partition(config.train)
  tx, schedule = state_lib.make_optimizer(config.train, steps_per_epoch, trainable)
  train_split = ds.splits["train"]
  alpha = losses.class_weights(config.loss, train_split.labels, train_split.fwd_returns,
                               ds.num_classes)
  loss_fn = losses.make_loss_fn(config.loss, alpha)
  return_scale = float(np.std(train_split.fwd_returns)) or 1.0
  state = state_lib.create_train_state(model, tx, ds.num_features, ds.window,
                                       config.train.seed)
  # The shardings come from the state's structure, which init_from keeps.
  steps = ShardedSteps(model, mesh, state, make_train_step(
      model, tx, loss_fn, schedule, config, ds.num_classes,
      config.train.epochs * steps_per_epoch, return_scale), windows=windows)
  return RunSetup(trainable, tx, alpha, loss_fn, return_scale, state, steps)
