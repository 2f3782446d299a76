"""Mixup (Zhang et al. 2018) for a training batch, jit-compatible.

The original system mixed inputs and return targets (alpha 0.2, half the batches).
Here the soft class targets are mixed too, so the class loss sees the same
convex combination as the inputs.
"""

import jax
import jax.numpy as jnp


def mixup(rng, x, targets, returns, alpha=0.2, prob=0.5):
  """Mixes the whole batch with a shuffled copy of itself, with probability `prob`.

  One coin decides for the whole batch. When it is applied: lam ~ Beta(alpha, alpha),
  lam = max(lam, 1 − lam) (each row stays dominated by its own sample), one random
  permutation π, and every output row i is lam·a[i] + (1 − lam)·a[π(i)] for the
  inputs, the soft targets and the returns alike. Otherwise everything is returned
  unchanged. Pure jax: works inside jit, with traced `alpha`/`prob` too.

  Apply it to full training batches only: a padding row would be mixed into real ones.

  Args:
    rng: a jax PRNG key.
    x: [B, ...] inputs.
    targets: [B, K] soft class targets (one-hot before mixing).
    returns: [B] (or [B, ...]) return targets.
    alpha: Beta concentration (> 0); small values keep lam near 1.
    prob: probability that this batch is mixed (0 = never, 1 = always).

  Returns:
    (x, targets, returns, applied) — `applied` a bool scalar.
  """
  k_coin, k_lam, k_perm = jax.random.split(rng, 3)
  applied = jax.random.uniform(k_coin) < prob
  lam = jax.random.beta(k_lam, alpha, alpha)
  lam = jnp.maximum(lam, 1.0 - lam)
  perm = jax.random.permutation(k_perm, x.shape[0])

  def mix(a):
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
      a = a.astype(jnp.float32)  # int one-hot targets become soft targets.
    lam_a = lam.astype(a.dtype)
    # where, not lam = 1: an unmixed batch comes back bit-for-bit.
    return jnp.where(applied, lam_a * a + (1 - lam_a) * a[perm], a)

  return mix(x), mix(targets), mix(returns), applied
