"""The hashed dropout (jaxquant.models.dropout) against flax's semantics."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.models import dropout


def _apply(rate, key, x, deterministic=False):
  rngs = {"dropout": key} if key is not None else {}
  return dropout.Dropout(rate, deterministic=deterministic).apply({}, x, rngs=rngs)


def test_keep_rate_and_scale():
  x = jnp.ones((64, 100, 32))
  y = np.asarray(_apply(0.1, jax.random.key(0), x))
  kept = y != 0
  assert abs(kept.mean() - 0.9) < 0.005
  np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)


def test_deterministic_and_key_dependent():
  x = jnp.ones((8, 16, 4))
  a = _apply(0.5, jax.random.key(1), x)
  np.testing.assert_array_equal(a, _apply(0.5, jax.random.key(1), x))
  b = _apply(0.5, jax.random.key(2), x)
  agree = float(jnp.mean((a != 0) == (b != 0)))
  assert 0.4 < agree < 0.6  # Independent masks agree half the time at rate 0.5.


def test_masks_of_two_keys_are_not_index_permutations():
  # A single xor-keyed hash would make every mask a permutation of one pattern:
  # the count of kept elements would be identical for any two keys.
  x = jnp.ones((1024,))
  counts = {int(jnp.sum(_apply(0.5, jax.random.key(k), x) != 0)) for k in range(8)}
  assert len(counts) > 1


def test_bits_are_uniform():
  bits = np.asarray(dropout.hash_bits(jax.random.key(3), (256, 256)))
  # Each of the 32 bits is set about half the time; bytes cover all values.
  frac = ((bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=(0, 1))
  assert np.all(np.abs(frac - 0.5) < 0.01)
  hist = np.bincount((bits & 0xFF).ravel(), minlength=256) / bits.size
  assert np.abs(hist - 1 / 256).max() < 0.0015


def test_identity_cases():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(_apply(0.3, None, x, deterministic=True), x)
  np.testing.assert_array_equal(_apply(0.0, None, x), x)
  np.testing.assert_array_equal(_apply(1.0, jax.random.key(0), x), jnp.zeros_like(x))
