"""Clip by global norm + AdamW in one elementwise pass per parameter, with skippable steps.

`clip_adamw` has the state and the arithmetic of
`optax.chain(optax.clip_by_global_norm(c), optax.adamw(lr, weight_decay=wd, mask=m))`
(tests/test_optim.py checks both against optax), and an extra argument `apply`:
a step with `apply=False` (a non-finite loss or gradient) returns zero updates and
leaves the moments and both step counts as they were.

Why not optax plus a `jnp.where(ok, new, old)` over the state afterwards: the
parameter update reads the moments before that select overwrites them in place,
so XLA:CPU copied every moment buffer each step, and it wrote the squared and
the clipped gradients to memory before reading them again: on the full-scale
ResNet-18 that tail was a large share of the step. Here the norm is a dot of each gradient with itself (one read), clipping is a
multiplication by a scalar (fused into its consumers), the moments are
selected as they are computed and the update reads the selected moments.
"""

import jax
import jax.numpy as jnp
import optax


def global_norm(tree):
  """sqrt(sum of squares) of every leaf: one dot per leaf (no squared copy in memory)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  total = sum(jnp.vdot(x.ravel(), x.ravel()).astype(jnp.float32) for x in leaves)
  return jnp.sqrt(total)


def clip_adamw(learning_rate, clip_norm, weight_decay, mask=None, b1=0.9, b2=0.999,
               eps=1e-8):
  """Clip by global norm → AdamW (decoupled weight decay on `mask`) → -learning_rate.

  Args:
    learning_rate: a float or a schedule (step count → rate).
    clip_norm: gradients are scaled down to this global norm when above it.
    weight_decay: AdamW's decoupled weight decay.
    mask: None (decay every parameter) or a function params → pytree of bools.
    b1, b2, eps: Adam's moment decays and denominator epsilon.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update(grads, state,
    params, apply=True)` takes `apply` (a boolean scalar): False gives zero
    updates and the unchanged state.
  """
  # A float becomes a constant schedule, so the state always has the rate's step count.
  schedule = (learning_rate if callable(learning_rate)
              else optax.constant_schedule(learning_rate))
  # The reference chain: it builds the state (same structure as before, so older
  # checkpoints restore) and documents what `update` computes.
  reference = optax.chain(
      optax.clip_by_global_norm(clip_norm),
      optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask))

  def update(grads, state, params=None, *, apply=True, **_):
    if params is None:
      raise ValueError("clip_adamw needs params (for the weight decay)")
    clip_state, (adam, decay_state, lr_state) = state
    apply = jnp.asarray(apply, bool)
    norm = global_norm(grads)
    clip_scale = jnp.where(norm < clip_norm, 1.0, clip_norm / norm)
    count = jnp.where(apply, optax.safe_increment(adam.count), adam.count)
    mu_correction = (1 - b1**count).astype(jnp.float32)
    nu_correction = (1 - b2**count).astype(jnp.float32)
    step_size = -jnp.asarray(schedule(lr_state.count), jnp.float32)
    decays = (jax.tree.map(lambda _: True, params) if mask is None
              else (mask(params) if callable(mask) else mask))

    def moments(g, mu, nu):
      g = g * clip_scale.astype(g.dtype)
      new_mu = (1 - b1) * g + b1 * mu
      new_nu = (1 - b2) * (g * g) + b2 * nu
      return jnp.where(apply, new_mu, mu), jnp.where(apply, new_nu, nu)

    mu_nu = jax.tree.map(moments, grads, adam.mu, adam.nu)
    new_mu = jax.tree.map(lambda _, t: t[0], grads, mu_nu)
    new_nu = jax.tree.map(lambda _, t: t[1], grads, mu_nu)

    def param_update(mu, nu, p, decay):
      u = (mu / mu_correction) / (jnp.sqrt(nu / nu_correction) + eps)
      if decay:
        u = u + weight_decay * p
      return jnp.where(apply, step_size * u, 0.0).astype(p.dtype)

    updates = jax.tree.map(param_update, new_mu, new_nu, params, decays)
    lr_count = jnp.where(apply, optax.safe_increment(lr_state.count), lr_state.count)
    new_state = (clip_state, (adam._replace(count=count, mu=new_mu, nu=new_nu),
                              decay_state, lr_state._replace(count=lr_count)))
    return updates, new_state

  return optax.GradientTransformationExtraArgs(reference.init, update)
