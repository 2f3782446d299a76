"""jaxquant.models.lstm.LSTM against flax's OptimizedLSTMCell under nn.RNN.

The reference is flax's own cell with JAX autodiff of its scan: the hand-written
backward, the tanh-form gates and the per-step [x_t, h, 1] matmul must reproduce
its loss and gradients (every parameter, through two layers), with the same parameters.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.models import lstm
from jaxquant.models.rnn import RNNClassifier

B, T, F, H = 3, 13, 5, 8


class _FlaxLSTM(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.RNN(nn.OptimizedLSTMCell(features=H), name="rnn")(x)


@pytest.fixture(scope="module")
def params():
  x = jnp.zeros((B, T, F))
  return jax.jit(lstm.LSTM(H).init)(jax.random.key(4), x)


def test_same_parameter_tree_and_initialisers(params):
  ref = jax.eval_shape(lambda: _FlaxLSTM().init(jax.random.key(4), jnp.zeros((B, T, F))))
  ref = ref["params"][next(iter(ref["params"]))]
  assert jax.tree.map(jnp.shape, params["params"]) == jax.tree.map(jnp.shape, ref)
  for gate in "ifgo":
    k = params["params"][f"h{gate}"]["kernel"]  # Orthogonal, as OptimizedLSTMCell's.
    np.testing.assert_allclose(k.T @ k, np.eye(H), atol=1e-5)
    np.testing.assert_array_equal(params["params"][f"h{gate}"]["bias"], 0)


def test_bfloat16_compute_stays_close_to_float32(params):
  x = jax.random.normal(jax.random.key(1), (B, T, F))

  @jax.jit
  def run(p):
    f32 = lstm.LSTM(H).apply(p, x)
    bf16 = lstm.LSTM(H, dtype=jnp.bfloat16).apply(p, x)
    grad = jax.grad(lambda p: jnp.sum(lstm.LSTM(H, dtype=jnp.bfloat16).apply(p, x)
                                      .astype(jnp.float32)))(p)
    return f32, bf16, grad

  f32, bf16, grad = run(params)
  assert bf16.dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(bf16.astype(jnp.float32) - f32))) < 0.03
  assert all(a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
             for a in jax.tree.leaves(grad))


def test_classifier_fused_and_scan_are_the_same_model():
  """The hand-written LSTM against flax's cell + autodiff, through RNNClassifier's
  two paths: one parameter tree, same loss and gradients of every parameter
  (two layers: the first's whole output sequence and input gradient, dropout
  between them, the last-step-only top layer)."""
  x = jax.random.normal(jax.random.key(0), (4, 9, F))
  fused, scan = (RNNClassifier(cell="lstm", hidden=H, lstm_impl=impl)
                 for impl in ("fused", "scan"))
  params = jax.jit(lambda k: scan.init({"params": k}, x, train=False))(jax.random.key(1))
  # Random non-zero biases and larger weights: saturating gates are covered too.
  leaves, tree = jax.tree.flatten(params)
  params = jax.tree.unflatten(tree, [a + 0.7 * jax.random.normal(k, a.shape) for a, k
                                     in zip(leaves, jax.random.split(jax.random.key(2),
                                                                     len(leaves)))])
  assert (jax.tree.structure(jax.eval_shape(lambda: fused.init(jax.random.key(1), x,
                                                               train=False)))
          == jax.tree.structure(params))

  def loss(model, p):
    out = model.apply(p, x, train=True, rngs={"dropout": jax.random.key(5)})
    return jnp.sum(out["logits"] * jnp.array([1.0, -2.0])) + jnp.sum(out["ret"])

  (l_f, g_f), (l_s, g_s) = jax.jit(
      lambda p: [jax.value_and_grad(lambda p, m=m: loss(m, p))(p) for m in (fused, scan)])(params)
  np.testing.assert_allclose(l_f, l_s, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_f, g_s)
