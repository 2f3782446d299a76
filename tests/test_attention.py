"""Blockwise local attention vs the dense band reference; head dropout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.models.attention import (LocalSelfAttention, default_block_size,
                                       dense_local_attention_reference, local_attention)

# Compile without backend optimisation: these programs are tiny and the 2-core
# CI machine spends far longer compiling them than running them.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# (T, radius, block_size, causal): T not a multiple of the block (all but one),
# default and explicit blocks > radius, T < radius (one block), w = 0;
# causal and not. Each case is one compile, so the list is kept short.
CASES = [
    (37, 5, None, False),  # b = 8, nb = 5, 3 padded positions.
    (37, 5, 8, True),
    (33, 3, 4, False),  # b = 4 > w, nb = 9.
    (10, 20, None, False),  # T < w: a single block of 16.
    (50, 0, None, True),  # w = 0: each position sees only itself.
]


def _reference(q, k, v, radius, causal=False):
  """Dense banded attention from the formula, sharing no code with the module:
  p_ij = exp(s_ij - m_i) / sum_{j' allowed} exp(s_ij' - m_i) over the allowed keys
  (|i - j| <= radius, and j <= i if causal), p_ij = 0 elsewhere, with
  s = q·k / sqrt(D) in float32 and m_i the row's largest allowed score."""
  seq_len, depth = q.shape[1], q.shape[3]
  i, j = np.arange(seq_len)[:, None], np.arange(seq_len)[None, :]
  allowed = np.abs(i - j) <= radius
  if causal:
    allowed &= j <= i
  s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  s = s / np.sqrt(depth)
  m = jnp.max(jnp.where(allowed, s, jnp.finfo(jnp.float32).min), axis=-1, keepdims=True)
  e = jnp.where(allowed, jnp.exp(s - m), 0.0)  # Every row allows j = i: sum(e) >= 1.
  p = e / jnp.sum(e, axis=-1, keepdims=True)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32))


def _normal(shape, seed=0):
  # numpy, not jax.random: every new shape would cost an eager compile.
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _qkv(seq_len, batch=2, heads=3, depth=4, seed=0):
  return tuple(_normal((batch, seq_len, heads, depth), seed + i) for i in range(4))


@pytest.mark.parametrize("seq_len,radius,block,causal", CASES)
def test_matches_dense_reference_values_and_grads(seq_len, radius, block, causal):
  q, k, v, g = _qkv(seq_len)

  @jit
  def both(q, k, v, g):
    # Values and the gradient of a random linear functional <out, g> w.r.t.
    # q, k and v, for the blockwise and the dense version, in one program.
    def value_and_grads(f):
      return jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(q, k, v), f(q, k, v)
    local = lambda q, k, v: local_attention(q, k, v, radius, causal=causal, block_size=block)
    dense = lambda q, k, v: _reference(q, k, v, radius, causal)
    return value_and_grads(local), value_and_grads(dense)

  (got_grads, got), (want_grads, want) = both(q, k, v, g)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
  for a, b in zip(got_grads, want_grads):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_band_is_exact():
  # With v = one-hot positions, out[i] is the attention distribution of row i.
  seq_len, radius = 12, 2
  q = np.zeros((1, seq_len, 1, seq_len), np.float32)  # Equal scores → uniform over the band.
  v = np.eye(seq_len, dtype=np.float32)[None, :, None, :]
  for causal in (False, True):
    fn = jit(lambda q, v: local_attention(q, q, v, radius, causal=causal, block_size=4))
    p = np.asarray(fn(q, v))[0, :, 0]
    for i in range(seq_len):
      lo, hi = max(0, i - radius), (i if causal else min(seq_len - 1, i + radius))
      want = np.zeros(seq_len)
      want[lo:hi + 1] = 1.0 / (hi - lo + 1)
      np.testing.assert_allclose(p[i], want, atol=1e-6)


def test_block_smaller_than_window_is_rejected():
  q, k, v, _ = _qkv(40)
  with pytest.raises(ValueError, match="block_size"):
    local_attention(q, k, v, 10, block_size=8)


def test_default_block_size():
  assert default_block_size(500, 20) == 24
  assert default_block_size(500, 0) == 8
  assert default_block_size(10, 20) == 16  # One block holds every key.
  assert default_block_size(64, 20) == 64  # 64 <= 3·24: one block is cheaper.
  assert default_block_size(80, 20) == 24


def test_bfloat16_inputs():
  q, k, v, _ = _qkv(30)
  out = jit(lambda *a: local_attention(*(x.astype(jnp.bfloat16) for x in a), 4))(q, k, v)
  assert out.dtype == jnp.bfloat16
  want = jit(lambda *a: _reference(*a, 4))(q, k, v)
  np.testing.assert_allclose(out.astype(jnp.float32), want, atol=5e-2)


def test_module_dense_reference_matches_the_formula():
  # The module's dense path (LocalSelfAttention(attention="dense"), benchmarks), causal
  # and not, in one program.
  q, k, v, _ = _qkv(23)
  pairs = jit(lambda q, k, v: [(dense_local_attention_reference(q, k, v, 3, causal),
                                _reference(q, k, v, 3, causal))
                               for causal in (False, True)])(q, k, v)
  for got, want in pairs:
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


def _all_shapes(jaxpr):
  """Shapes of every variable in a (closed) jaxpr, including nested sub-jaxprs."""
  shapes = []
  for eqn in jaxpr.eqns:
    for var in list(eqn.invars) + list(eqn.outvars):
      shapes.append(tuple(getattr(var.aval, "shape", ())))
    for param in eqn.params.values():
      subs = param if isinstance(param, (list, tuple)) else [param]
      for sub in subs:
        if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):  # ClosedJaxpr
          shapes += _all_shapes(sub.jaxpr)
        elif hasattr(sub, "eqns"):  # Jaxpr
          shapes += _all_shapes(sub)
  return shapes


def _has_txt_array(fn, seq_len, *args):
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return [s for s in _all_shapes(jaxpr) if sum(d >= seq_len for d in s) >= 2]


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_never_builds_a_txt_array(causal):
  seq_len, radius = 512, 8
  q, k, v, _ = _qkv(seq_len, batch=1, heads=2, depth=4)
  fwd_bwd = jax.value_and_grad(
      lambda q, k, v: jnp.sum(local_attention(q, k, v, radius, causal=causal) ** 2),
      argnums=(0, 1, 2))
  assert _has_txt_array(fwd_bwd, seq_len, q, k, v) == []
  # The check itself works: the dense reference does build [.., T, T] scores.
  dense = lambda q, k, v: dense_local_attention_reference(q, k, v, radius, causal)
  assert _has_txt_array(dense, seq_len, q, k, v)


def _head_outputs_fn(layer, x, train):
  """Jitted (rng) → (output, per-head outputs before / after head dropout)."""
  variables = jit(lambda key: layer.init(key, x, train=False))(jax.random.PRNGKey(0))

  @jit
  def run(rng):
    out, state = layer.apply(variables, x, train=train, rngs={"dropout": rng},
                             mutable=["intermediates"])
    inter = state["intermediates"]
    return out, inter["head_outputs"][0], inter["head_outputs_dropped"][0]
  return lambda seed: run(jax.random.PRNGKey(seed))


def test_head_dropout_drops_whole_heads():
  p, heads = 0.5, 4
  layer = LocalSelfAttention(num_heads=heads, radius=3, head_dropout=p)
  x = _normal((16, 10, 16), 1)
  run = _head_outputs_fn(layer, x, train=True)
  _, before, after = run(3)
  before, after = np.asarray(before), np.asarray(after)
  assert before.shape == (16, 10, heads, 4)
  dropped = np.all(after == 0.0, axis=(1, 3))  # [B, H]
  kept = np.all(np.isclose(after, before / (1 - p), rtol=1e-6, atol=1e-7), axis=(1, 3))
  assert np.all(dropped ^ kept)  # Each (example, head) is wholly dropped or wholly kept.
  assert dropped.any() and kept.any()
  assert 0.2 < dropped.mean() < 0.8  # 64 Bernoulli(0.5) draws.
  # A different dropout key gives a different mask.
  _, _, after2 = run(4)
  assert not np.array_equal(np.all(np.asarray(after2) == 0, axis=(1, 3)), dropped)


def test_head_dropout_is_identity_in_eval():
  layer = LocalSelfAttention(num_heads=4, radius=3, head_dropout=0.5)
  x = _normal((4, 10, 16), 1)
  run = _head_outputs_fn(layer, x, train=False)
  out1, before, after = run(3)
  out2, _, _ = run(4)
  np.testing.assert_array_equal(before, after)
  np.testing.assert_array_equal(out1, out2)


def test_layer_local_matches_dense_when_window_covers_sequence():
  x = _normal((2, 9, 8), 2)
  local = LocalSelfAttention(num_heads=2, radius=9, head_dropout=0.0)
  dense = LocalSelfAttention(num_heads=2, radius=9, head_dropout=0.0, attention="dense")

  @jit
  def both(key):
    variables = local.init(key, x, train=False)
    return local.apply(variables, x, train=False), dense.apply(variables, x, train=False)

  got, want = both(jax.random.PRNGKey(0))
  np.testing.assert_allclose(got, want, atol=1e-5)
