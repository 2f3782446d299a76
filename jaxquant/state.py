"""The train state and what builds it: model, optimizer, trainable partition, counts.

Every builder is a pure function of the config (and a seed), and the initial state
comes from `init_fn`'s pure `init(key)`: a population of models trained together
is `jax.vmap(init)(keys)` over a leading member axis, with no change here.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxquant import models
from jaxquant import optim
from jaxquant.models import lora
from jaxquant.models import param_count

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
  """Everything a train step reads and writes. Only arrays: it is checkpointed as is."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def make_model(config, num_classes):
  """The Flax module of `config.model`, computing in `config.train.dtype`."""
  return models.build_model(config.model, num_classes, COMPUTE_DTYPES[config.train.dtype])


def make_optimizer(train_config, steps_per_epoch, trainable=None):
  """clip by global norm → AdamW on a warmup + cosine schedule (decay masked to kernels).

  Args:
    train_config: config.train.
    steps_per_epoch: optimizer steps per epoch (sets warmup and decay lengths).
    trainable: None (train everything) or a function params → pytree of bools;
      frozen parameters get `optax.set_to_zero` — no update and no optimizer state.

  Returns:
    (optax transformation, learning-rate schedule).
  """
  total, warmup = schedule_lengths(train_config, steps_per_epoch)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=total, end_value=train_config.end_lr)
  return optimizer_on(train_config, schedule, trainable), schedule


def schedule_lengths(train_config, steps_per_epoch):
  """(total, warmup) optimizer steps of the learning-rate schedule."""
  total = max(train_config.epochs * steps_per_epoch, 2)
  return total, min(int(round(train_config.warmup_epochs * steps_per_epoch)), total - 1)


def optimizer_on(train_config, schedule, trainable=None):
  """make_optimizer's transformation on a given schedule (a population member's has a
  traced peak: member_step.py)."""
  tx = optim.clip_adamw(schedule, train_config.clip_norm, train_config.weight_decay,
                        mask=decay_mask)
  if trainable is not None:
    tx = optax.multi_transform(
        {"train": tx, "freeze": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda t: "train" if t else "freeze", trainable(params)))
  return tx


def trainable_partition(train_config):
  """The `trainable` argument of make_optimizer for `train.trainable`.

  "all" trains every parameter (None); "heads" (PEFT) trains only the output heads
  (the top-level "head" module every model has) and freezes the rest; "lora" trains
  the LoRA adapters (models/lora.py, config.model.lora_rank > 0) and the heads.
  """
  if train_config.trainable == "all":
    return None
  if train_config.trainable == "heads":
    def heads_only(params):
      return {k: jax.tree.map(lambda _, k=k: k == "head", v) for k, v in params.items()}
    return heads_only
  if train_config.trainable == "lora":
    def adapters_and_heads(params):
      if not lora.has_adapters(params):
        raise ValueError("config.train.trainable='lora' trains LoRA adapters, but this model "
                         "has none: set config.model.lora_rank >= 1 (models with adapters: "
                         f"{models.adapted_names()})")
      return jax.tree_util.tree_map_with_path(
          lambda path, _: path[0].key == "head" or lora.is_adapter(path), params)
    return adapters_and_heads
  raise ValueError(f"config.train.trainable={train_config.trainable!r}: "
                   "use 'all', 'heads' or 'lora'")


def decay_mask(params):
  """Weight decay on matrices/kernels only, chosen by parameter name, not by ndim
  (stacked per-expert biases are 2-D but must not decay); LoRA's A and B are matrices
  too (decaying B pulls the adapted model towards its base)."""
  def wants_decay(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name in ("kernel", "embedding") or name.startswith("w_") or name in lora.ADAPTER_NAMES
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def init_fn(model, tx, num_features, window):
  """The pure `init(key) -> TrainState`: parameters from `key`, batch statistics,
  optimizer state."""
  x = jnp.zeros((1, window, num_features), jnp.float32)

  def init(key):
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))
  return init


def create_train_state(model, tx, num_features, window, seed, abstract=False):
  """The initial state from `seed` (init_fn run once).

  Args:
    abstract: return only shapes and dtypes (jax.ShapeDtypeStruct leaves).
  """
  init = init_fn(model, tx, num_features, window)
  if abstract:
    return jax.eval_shape(init, jax.random.key(seed))
  # Run once, so compile it without optimisation: XLA:CPU spends far longer
  # optimising the random initialisers of a ResNet than running them unoptimised.
  return jax.jit(init, compiler_options={"xla_backend_optimization_level": 0})(
      jax.random.key(seed))


def parameter_counts(params, trainable=None):
  """{"total": ..., "trainable": ...} parameter counts."""
  total = param_count.count_parameters(params)
  if trainable is None:
    return {"total": total, "trainable": total}
  frozen = jax.tree.map(lambda p, t: None if t else p, params, trainable(params))
  return {"total": total, "trainable": total - param_count.count_parameters(frozen)}
