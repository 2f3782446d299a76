"""Dropout whose keep mask comes from a cheap counter-based hash, not threefry.

`flax.linen.Dropout` draws 32 threefry bits per element: 20 rounds of 32-bit
mixing on two lanes. On a CPU that was 10-40 % of a small Transformer's train
step. Here one threefry call per layer draws a 64-bit key; each element's bits
are then a keyed integer hash of its flat index (two rounds of the "lowbias32"
mixer, ~12 integer ops), fused by XLA into the consumer. Dropout needs
independent-looking bits, not cryptographic ones, so this is enough.

Same seed → same mask; the mask of an element depends only on the key and its
index, so it is the same whatever the sharding (the index is an iota).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _mix32(x):
  """lowbias32 (C. Wellons): a bijective 32-bit mixer with low avalanche bias."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _flat_index(shape):
  """uint32 row-major index of every element, from per-axis iotas (shardable)."""
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return idx


def hash_bits(rng, shape):
  """uint32 bits of `shape`, a keyed hash of each element's index.

  Args:
    rng: a PRNG key; one 2-word threefry draw from it keys the hash.
    shape: output shape (< 2**32 elements).

  Returns:
    uint32 array of `shape`.
  """
  if int(np.prod(shape)) >= 2**32:
    raise ValueError(f"hash_bits: {shape} has more than 2**32 elements")
  k = jax.random.bits(rng, (2,), jnp.uint32)
  # Key before each round: with a single xor the masks of two keys would be
  # index-permutations of each other.
  return _mix32(_mix32(_flat_index(shape) ^ k[0]) ^ k[1])


def keep_mask(rng, rate, shape):
  """Boolean mask, True with probability 1 - rate (rate quantised to 2**-32)."""
  threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
  return hash_bits(rng, shape) >= jnp.uint32(threshold)


class Dropout(nn.Module):
  """Drop-in for `flax.linen.Dropout` (rate, deterministic; "dropout" RNG stream)
  with a hashed keep mask. Kept elements are scaled by 1 / (1 - rate)."""
  rate: float
  deterministic: bool = False
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = keep_mask(self.make_rng(self.rng_collection), self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
