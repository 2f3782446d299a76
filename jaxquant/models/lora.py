"""LoRA: low-rank adapters on frozen dense kernels (Hu et al. 2021, arXiv:2106.09685).

An adapted layer computes y = x·W (+ b) + scale·(x·A)·B with A [in, r] drawn small
and random (peft's default: kaiming-uniform, U(±1/sqrt(fan_in))) and B [r, out]
zeros, so at initialisation it is its base layer exactly. scale = alpha / r with
alpha = r (scale 1, `SCALE`): the rank then changes capacity, not the step size,
and a run at another rank needs no other learning rate.

Names: the base kernel and bias stay where the Dense they extend keeps them
(`{"wi": {"kernel", "bias"}}` → `{"wi": {"kernel", "bias", "lora_a", "lora_b"}}`), so
a checkpoint of the plain model restores into the adapted one by name. The MoE's
stacked expert matrices get one adapter per expert beside them:
`{"w_in": [E, d, h], "w_in_lora": {"lora_a": [E, d, r], "lora_b": [E, r, h]}}`.
`merge` folds adapters into their kernels: the plain model's params tree.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Leaf names of the adapter matrices (train.trainable="lora" trains these and the head).
ADAPTER_NAMES = ("lora_a", "lora_b")
# `<kernel><EXPERT_SUFFIX>` holds the per-expert adapters of stacked kernel `<kernel>`.
EXPERT_SUFFIX = "_lora"
# alpha / rank with alpha = rank (see the module docstring).
SCALE = 1.0


def _tuple(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v,)


class LoRA(nn.Module):
  """A Dense / DenseGeneral `base` plus a rank-`rank` update, in the base's own scope.

  Attributes:
    base: an unapplied nn.Dense or nn.DenseGeneral (its name is where every
      parameter of the adapted layer lives).
    rank: r >= 1.
    scale: alpha / r.
  """
  base: nn.Module
  rank: int
  scale: float = SCALE

  def setup(self):
    # The adapters join the base's kernel and bias under its name.
    nn.share_scope(self, self.base)

  @nn.compact
  def __call__(self, x):
    """Args: x [..., in]. Returns base(x) + scale·(x·A)·B, shaped like base(x)."""
    # The base first: its kernel then draws the same initial values as the plain model's.
    y = self.base(x)
    axis = tuple(a % x.ndim for a in _tuple(getattr(self.base, "axis", -1)))
    features = _tuple(self.base.features)
    in_shape = tuple(x.shape[a] for a in axis)
    n_in = len(in_shape)
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                              in_axis=tuple(range(n_in)), out_axis=-1)
    a = self.param("lora_a", a_init, in_shape + (self.rank,), self.base.param_dtype)
    b = self.param("lora_b", nn.initializers.zeros, (self.rank,) + features,
                   self.base.param_dtype)
    dtype = self.base.dtype or x.dtype
    xa = jnp.tensordot(x.astype(dtype), a.astype(dtype), axes=(axis, tuple(range(n_in))))
    delta = jnp.tensordot(xa, b.astype(dtype), axes=1)  # [..., *features]
    return y + (self.scale * delta).astype(y.dtype)


def adapt(base, rank):
  """`base` itself when rank is 0 (the plain layer, unchanged), else `LoRA(base, rank)`.

  Args:
    base: an unapplied nn.Dense / nn.DenseGeneral, created with its name.
    rank: the adapter rank (config.model.lora_rank).

  Returns:
    A module to call like `base`.
  """
  return LoRA(base, rank) if rank else base


class ExpertAdapters(nn.Module):
  """Per-expert adapters of a stacked kernel [E, in, out]: A [E, in, r], B [E, r, out]."""
  num_experts: int
  rank: int

  @nn.compact
  def __call__(self, d_in: int, d_out: int):
    """Returns (A, B), float32."""
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-2,
                                              out_axis=-1, batch_axis=(0,))
    a = self.param("lora_a", a_init, (self.num_experts, d_in, self.rank), jnp.float32)
    b = self.param("lora_b", nn.initializers.zeros, (self.num_experts, self.rank, d_out),
                   jnp.float32)
    return a, b


def expert_delta(xs, adapters, dtype, scale=SCALE):
  """scale·(xs·A)·B per expert: xs [E, C, in] → [E, C, out].

  Args:
    xs: each expert's rows.
    adapters: (A [E, in, r], B [E, r, out]) of `ExpertAdapters`.
    dtype: compute dtype.
    scale: alpha / r.
  """
  a, b = adapters
  xa = jnp.einsum("ecd,edr->ecr", xs, a.astype(dtype))
  return scale * jnp.einsum("ecr,erh->ech", xa, b.astype(dtype))


def has_adapters(params) -> bool:
  """Whether a params tree holds any LoRA adapter leaf."""
  names = [getattr(p, "key", None) for path, _ in jax.tree_util.tree_leaves_with_path(params)
           for p in path]
  return any(n in ADAPTER_NAMES for n in names)


def is_adapter(path) -> bool:
  """Whether the leaf at pytree `path` is an adapter matrix (named in ADAPTER_NAMES)."""
  return bool(path) and getattr(path[-1], "key", None) in ADAPTER_NAMES


def merge(params, scale=SCALE) -> Any:
  """The plain model's params from the adapted model's: W + scale·A·B, adapters dropped.

  Run with the same model built with lora_rank=0, the merged tree gives the adapted
  model's outputs (to float rounding).

  Args:
    params: a params tree of a model built with lora_rank > 0 (dicts or FrozenDicts).
    scale: the adapters' alpha / r.

  Returns:
    A plain dict tree with the names and shapes of the plain model's params.
  """
  if not hasattr(params, "items"):
    return params
  node = {k: merge(v, scale) for k, v in params.items()
          if k not in ADAPTER_NAMES and not k.endswith(EXPERT_SUFFIX)}
  if "lora_a" in params or "lora_b" in params:  # A Dense's own adapters.
    a, b = params["lora_a"], params["lora_b"]
    node["kernel"] = _merged(params["kernel"], jnp.tensordot(a, b, axes=1), scale)
  for key, value in params.items():  # Stacked expert kernels' adapters.
    if key.endswith(EXPERT_SUFFIX):
      target = key[:-len(EXPERT_SUFFIX)]
      node[target] = _merged(params[target], jnp.matmul(value["lora_a"], value["lora_b"]),
                             scale)
  return node


def _merged(kernel, update, scale):
  """kernel + scale·update, computed in float32 and kept in the kernel's dtype."""
  return (jnp.asarray(kernel, jnp.float32) + scale * update.astype(jnp.float32)).astype(
      jnp.asarray(kernel).dtype)
