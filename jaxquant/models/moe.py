"""Mixture-of-experts feed-forward layer and the MoE Transformer.

Routing is top-k softmax (Switch/GShard style) with a fixed per-expert capacity.
Dispatch gives every token→expert assignment a slot in its expert (choice-major
priority; `count_assignments`, or the equivalent `sort_assignments`) and
gathers the token vectors into a dense `[E, C, d]` buffer, so memory is
O(E·C·d) = O(N·k·d), not the O(N·E·C) of a one-hot dispatch einsum. Dispatch
and combine are row gathers both ways (`dispatch`, `combine`): no scatter.
"""

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.models import dropout as dropout_lib
from jaxquant.models import lora
from jaxquant.models import param_count
from jaxquant.models import settings
from jaxquant.models import transformer as transformer_lib

# Leaves of MoEFeedForward that hold per-expert (stacked [E, ...]) weights.
EXPERT_PARAM_NAMES = ("w_in", "b_in", "w_out", "b_out")

# config.model's settings: the Transformer's and the experts' (models.check_model_config reads them).
SETTINGS = {
    **transformer_lib.SETTINGS,
    "num_experts": settings.at_least(1),
    "top_k": settings.at_least(1),
    "capacity_factor": settings.above(0),
    "expert_dim": settings.optional(settings.at_least(1)),
    "aux_loss_weight": settings.at_least(0, float),
    "z_loss_weight": settings.at_least(0, float),
}


def top_k_within_experts(vals):
  """A token cannot pick more experts than there are."""
  if vals["top_k"] > vals["num_experts"]:
    raise settings.invalid("top_k", vals["top_k"],
                           f"must be <= model.num_experts={vals['num_experts']}")


CROSS_RULES = transformer_lib.CROSS_RULES + (top_k_within_experts,)


def capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
  """Slots per expert: ceil(capacity_factor · tokens · top_k / E), within [1, tokens].

  Args:
    num_tokens: N = B·T.
    num_experts: E.
    top_k: experts per token.
    capacity_factor: 1.0 = exactly a uniform share.

  Returns:
    C as a Python int (shapes must be static). More than N slots are never
    needed: an expert gets at most one assignment per token.
  """
  c = math.ceil(capacity_factor * num_tokens * top_k / num_experts)
  return int(min(max(c, 1), num_tokens))


def route(router_logits, top_k: int):
  """Top-k routing.

  Args:
    router_logits: [N, E] float32.
    top_k: experts per token.

  Returns:
    probs [N, E] (softmax), expert_idx [N, k] int32 (choice 0 = most likely),
    combine_weights [N, k] (the top-k probabilities renormalised to sum to 1).
  """
  probs = jax.nn.softmax(router_logits, axis=-1)
  expert_idx = top_k_indices(probs, top_k)
  top_p = jnp.take_along_axis(probs, expert_idx, axis=-1)
  weights = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
  return probs, expert_idx, weights


def top_k_indices(scores, k: int):
  """`jax.lax.top_k(scores, k)[1]` as k argmax passes (ties: lower index first;
  unlike top_k, -0.0 ties with +0.0 — router probabilities are never -0.0).

  XLA:CPU runs top_k as a sort of every row; for k << E a few argmaxes are
  much cheaper (the sort was ~5 % of the quick MoE step).

  Args:
    scores: [..., E] float.
    k: how many, k <= E.

  Returns:
    [..., k] int32 indices, largest score first.
  """
  e = scores.shape[-1]
  picked = []
  for _ in range(k):
    i = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    picked.append(i)
    scores = jnp.where(jax.nn.one_hot(i, e, dtype=bool), -jnp.inf, scores)
  return jnp.stack(picked, axis=-1)


def sort_assignments(expert_idx, num_experts: int, cap: int):
  """Orders the N·k (token, expert) assignments by expert and gives each a slot.

  Priority inside an expert is choice-major: every token's first choice comes
  before any second choice, then by token index (GShard). Assignments whose
  slot is >= `cap` are dropped.

  Example (N=3, k=2, E=2, cap=2): expert_idx = [[0, 1], [0, 1], [1, 0]].
    Flattened choice-major (a = choice·N + token): experts [0, 0, 1, 1, 1, 0].
    Stable argsort by expert: order = [0, 1, 5, 2, 3, 4].
    sorted experts [0, 0, 0, 1, 1, 1]; counts [3, 3]; starts [0, 3];
    slot = arange(6) - starts[sorted] = [0, 1, 2, 0, 1, 2] → the 3rd of each
    expert (token 2's second choice, token 1's second choice) is dropped.

  Args:
    expert_idx: [N, k] int expert choices.
    num_experts: E.
    cap: capacity C per expert.

  Returns:
    dict of [N·k] arrays in sorted order: "expert", "slot", "token", "choice",
    "keep" (slot < cap), plus "order" (indices into the choice-major
    flattening) and "counts" [E] (assignments per expert, before dropping).
  """
  n, k = expert_idx.shape
  flat_expert = expert_idx.T.reshape(-1)  # [k·N], index a = choice·N + token.
  order = jnp.argsort(flat_expert, stable=True)  # Stable: keeps choice-major priority.
  sorted_expert = flat_expert[order]
  counts = jnp.bincount(flat_expert, length=num_experts)
  starts = jnp.cumsum(counts) - counts  # First sorted index of each expert's run.
  slot = jnp.arange(n * k) - starts[sorted_expert]
  return {
      "expert": sorted_expert,
      "slot": slot,
      "token": order % n,
      "choice": order // n,
      "keep": slot < cap,
      "order": order,
      "counts": counts,
  }


def count_assignments(expert_idx, num_experts: int, cap: int):
  """`sort_assignments` without the sort: the same slots, in choice-major order.

  An assignment's slot is the number of earlier (choice-major) assignments to
  its expert: an exclusive cumulative sum of the one-hot expert matrix, which
  XLA:CPU runs faster than an argsort of the N·k expert ids.

  Args:
    expert_idx: [N, k] int expert choices.
    num_experts: E.
    cap: capacity C per expert.

  Returns:
    dict of [N·k] arrays indexed a = choice·N + token: "expert", "slot",
    "token", "choice", "keep" (slot < cap), and "counts" [E].
  """
  n, k = expert_idx.shape
  flat_expert = expert_idx.T.reshape(-1)
  onehot = jax.nn.one_hot(flat_expert, num_experts, dtype=jnp.int32)  # [k·N, E]
  earlier = jnp.cumsum(onehot, axis=0) - onehot
  slot = jnp.sum(earlier * onehot, axis=1)
  a = jnp.arange(n * k)
  return {"expert": flat_expert, "slot": slot, "token": a % n, "choice": a // n,
          "keep": slot < cap, "counts": jnp.sum(onehot, axis=0)}


def slot_maps(assignments, num_tokens: int, num_experts: int, cap: int):
  """Index maps between assignments and expert slots (flat slot = expert·C + slot).

  Args:
    assignments: `count_assignments`'s dict ([N·k] arrays, choice-major).
    num_tokens: N.
    num_experts: E.
    cap: capacity C.

  Returns:
    dict of int32 arrays: "slot_of_assignment" [N·k] (E·C = dropped),
    "assignment_of_slot" [E·C] (N·k = empty), "token_of_slot" [E·C] (N = empty).
  """
  num_slots = num_experts * cap
  num_assignments = assignments["expert"].shape[0]
  flat = jnp.where(assignments["keep"], assignments["expert"] * cap + assignments["slot"],
                   num_slots).astype(jnp.int32)
  # Kept assignments own distinct slots; dropped ones (index E·C) are discarded.
  owner = jnp.full((num_slots,), num_assignments, jnp.int32).at[flat].set(
      jnp.arange(num_assignments, dtype=jnp.int32), mode="drop")
  tokens = jnp.concatenate([assignments["token"].astype(jnp.int32),
                            jnp.full((1,), num_tokens, jnp.int32)])
  return {"slot_of_assignment": flat, "assignment_of_slot": owner,
          "token_of_slot": tokens[owner]}


def _rows(x, index):
  """x[index] with one extra zero row at index len(x) (the "empty" index)."""
  padded = jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])
  return jnp.take(padded, index, axis=0, mode="clip")


@jax.custom_vjp
def dispatch(xf, token_of_slot, slot_of_assignment):
  """Expert slots from token rows: [N, d] → [E·C, d] (empty slots 0).

  The backward is a gather too (each token sums the gradients of its k
  assignments' slots) instead of autodiff's scatter-add: XLA:CPU's scatters
  (and the zero buffers they start from) cost more than the expert matmuls at
  small widths.
  """
  return _rows(xf, token_of_slot)


def _dispatch_fwd(xf, token_of_slot, slot_of_assignment):
  return dispatch(xf, token_of_slot, slot_of_assignment), (slot_of_assignment, xf.shape[0])


def _dispatch_bwd(res, d_buf):
  slot_of_assignment, n = res
  per_assignment = _rows(d_buf, slot_of_assignment)  # [k·N, d], choice-major.
  d_xf = per_assignment.reshape(-1, n, d_buf.shape[-1]).sum(0)
  return d_xf, None, None


dispatch.defvjp(_dispatch_fwd, _dispatch_bwd)


@jax.custom_vjp
def combine(out_buf, slot_of_assignment, assignment_of_slot):
  """Each assignment's expert output: [E·C, d] → [N·k, d] (dropped → 0).

  Backward: each slot takes the gradient of the one assignment it holds (a
  gather by the inverse map), not a scatter-add.
  """
  return _rows(out_buf, slot_of_assignment)


def _combine_fwd(out_buf, slot_of_assignment, assignment_of_slot):
  return combine(out_buf, slot_of_assignment, assignment_of_slot), assignment_of_slot


def _combine_bwd(assignment_of_slot, d_y):
  return _rows(d_y, assignment_of_slot), None, None


combine.defvjp(_combine_fwd, _combine_bwd)


def _expert_mlp(params, xs, dtype, adapters=None):
  """Runs every expert on its own rows: xs [E, C, d] → [E, C, d] (GELU MLP), with
  `adapters` {"w_in": (A, B), "w_out": (A, B)} adding each expert's LoRA update."""
  h = jnp.einsum("ecd,edh->ech", xs, params["w_in"].astype(dtype))
  if adapters:
    h = h + lora.expert_delta(xs, adapters["w_in"], dtype)
  h = nn.gelu(h + params["b_in"].astype(dtype)[:, None, :])
  y = jnp.einsum("ech,ehd->ecd", h, params["w_out"].astype(dtype))
  if adapters:
    y = y + lora.expert_delta(h, adapters["w_out"], dtype)
  return y + params["b_out"].astype(dtype)[:, None, :]


class MoEFeedForward(nn.Module):
  """Top-k mixture-of-experts MLP with slot-based capacity dispatch.

  Attributes:
    num_experts: E.
    top_k: experts per token.
    capacity_factor: C = ceil(capacity_factor · N · top_k / E) slots per expert.
    expert_dim: hidden width of each expert.
    dropout: dropout on the layer output.
    lora_rank: rank of per-expert LoRA adapters on w_in and w_out (0 = none; the router
      never has one: its choices stay those of the base model).
    dtype: compute dtype of the experts (the router always runs in float32).

  Call: `(y, extras) = layer(x [B, T, d], train=...)`, extras =
  {"lb_loss", "z_loss", "expert_load" [E], "dropped_fraction"} (unweighted).
  """
  num_experts: int = 8
  top_k: int = 2
  capacity_factor: float = 1.25
  expert_dim: int = 512
  dropout: float = 0.0
  lora_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    shape = x.shape
    d, e, k = shape[-1], self.num_experts, self.top_k
    if not 1 <= k <= e:
      raise ValueError(f"top_k={k} must be in [1, num_experts={e}]")
    xf = jnp.asarray(x).reshape(-1, d)  # [N, d]
    n = xf.shape[0]

    # Router in float32: small logit errors flip top-k choices.
    router_logits = nn.Dense(e, dtype=jnp.float32, param_dtype=jnp.float32,
                             name="router")(xf.astype(jnp.float32))
    probs, expert_idx, weights = route(router_logits, k)

    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=-2, out_axis=-1, batch_axis=(0,))
    params = {
        "w_in": self.param("w_in", init, (e, d, self.expert_dim), jnp.float32),
        "b_in": self.param("b_in", nn.initializers.zeros, (e, self.expert_dim),
                                jnp.float32),
        "w_out": self.param("w_out", init, (e, self.expert_dim, d), jnp.float32),
        "b_out": self.param("b_out", nn.initializers.zeros, (e, d), jnp.float32),
    }
    adapters = None
    if self.lora_rank:  # {"w_in_lora": {"lora_a", "lora_b"}, ...} beside the kernels.
      adapters = {name: lora.ExpertAdapters(e, self.lora_rank, name=name + lora.EXPERT_SUFFIX)(
          *params[name].shape[1:]) for name in ("w_in", "w_out")}

    cap = capacity(n, e, k, self.capacity_factor)
    a = count_assignments(expert_idx, e, cap)
    slots = slot_maps(a, n, e, cap)
    # Token rows into [E, C, d] (empty slots 0), each assignment's expert output
    # back (dropped → 0): both are row gathers, forward and backward.
    buf = dispatch(xf.astype(self.dtype), slots["token_of_slot"],
                   slots["slot_of_assignment"]).reshape(e, cap, d)
    out_buf = _expert_mlp(params, buf, self.dtype, adapters)
    y_assign = combine(out_buf.reshape(e * cap, d), slots["slot_of_assignment"],
                       slots["assignment_of_slot"])
    # Weight and sum the k assignments of every token (choice-major: a = choice·N
    # + token). A token whose assignments were all dropped gets 0 here; the
    # residual connection carries it.
    w = weights.T.reshape(-1) * a["keep"]
    y = (w[:, None] * y_assign.astype(jnp.float32)).reshape(k, n, d).sum(0)
    y = dropout_lib.Dropout(self.dropout, deterministic=not train)(y.astype(self.dtype))

    # Switch/GShard load balancing: E · Σ_e f_e · P_e with f_e = share of tokens
    # whose FIRST choice is e (non-differentiable) and P_e = mean router prob.
    f = jnp.mean(jax.nn.one_hot(expert_idx[:, 0], e, dtype=jnp.float32), axis=0)
    p_mean = jnp.mean(probs, axis=0)
    lb_loss = e * jnp.sum(f * p_mean)
    # Router z-loss (ST-MoE) keeps the router logits small.
    z_loss = jnp.mean(jax.nn.logsumexp(router_logits, axis=-1) ** 2)
    extras = {
        "lb_loss": lb_loss,
        "z_loss": z_loss,
        "expert_load": a["counts"].astype(jnp.float32) / (n * k),
        "dropped_fraction": 1.0 - jnp.mean(a["keep"].astype(jnp.float32)),
    }
    return y.reshape(shape), extras


class MoETransformer(transformer_lib.Transformer):
  """The Transformer with every feed-forward layer replaced by `MoEFeedForward`.

  Attributes (besides transformer_lib.Transformer's):
    num_experts: experts per layer.
    top_k: experts per token.
    capacity_factor: slots per expert relative to a uniform share.
    expert_dim: hidden width of each expert; None = mlp_dim.
    aux_loss_weight: weight of the load-balancing loss (summed over layers).
    z_loss_weight: weight of the router z-loss (summed over layers).

  Outputs add "aux_loss" = aux_loss_weight·Σ lb + z_loss_weight·Σ z and stats
  {"expert_load" [E], "dropped_fraction", "lb_loss", "z_loss"} averaged over layers.
  """
  num_experts: int = 8
  top_k: int = 2
  capacity_factor: float = 1.25
  expert_dim: Optional[int] = None
  aux_loss_weight: float = 0.01
  z_loss_weight: float = 1e-3

  def ffn_factory(self, layer: int):
    del layer
    return functools.partial(MoEFeedForward, num_experts=self.num_experts,
                             top_k=self.top_k, capacity_factor=self.capacity_factor,
                             expert_dim=self.expert_dim or self.mlp_dim,
                             dropout=self.dropout, lora_rank=self.lora_rank, dtype=self.dtype)

  def combine_extras(self, extras: list) -> dict:
    mean = lambda key: jnp.mean(jnp.stack([x[key] for x in extras]), axis=0)
    total = lambda key: jnp.sum(jnp.stack([x[key] for x in extras]))
    aux = self.aux_loss_weight * total("lb_loss") + self.z_loss_weight * total("z_loss")
    stats = {key: mean(key) for key in ("expert_load", "dropped_fraction", "lb_loss", "z_loss")}
    return {"aux_loss": aux.astype(jnp.float32), "stats": stats}


def active_params(params, top_k: int, num_experts: int) -> int:
  """Parameters used per token: total minus the (E - k)/E share of expert weights.

  Args:
    params: a params pytree (MoE expert leaves are named as in EXPERT_PARAM_NAMES).
    top_k: experts per token.
    num_experts: E.

  Returns:
    The active parameter count (rounded to an int).
  """
  def per_expert(names):  # Expert weights and their per-expert LoRA adapters.
    adapter = len(names) > 1 and names[-2].removesuffix(lora.EXPERT_SUFFIX) in EXPERT_PARAM_NAMES
    return bool(names) and (names[-1] in EXPERT_PARAM_NAMES or adapter)
  expert = param_count.count_parameters(params, where=per_expert)
  total = param_count.count_parameters(params)
  return int(round(total - expert * (num_experts - top_k) / num_experts))
