"""jaxquant.optim.clip_adamw against optax's clip_by_global_norm → adamw chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxquant import optim
from jaxquant import state as state_lib

CLIP, WD = 1.0, 0.05
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=2, decay_steps=20,
                                              end_value=1e-5)


def _params(key):
  k = jax.random.split(key, 4)
  return {"dense": {"kernel": jax.random.normal(k[0], (7, 5)),
                    "bias": jax.random.normal(k[1], (5,))},
          "head": {"kernel": jax.random.normal(k[2], (5, 2)),
                   "bias": jax.random.normal(k[3], (2,))}}


def _grads(key, params, size):
  """Gradients of global norm `size` (below or above the clipping norm)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  g = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  norm = np.sqrt(sum(float(np.sum(np.square(x))) for x in g))
  return jax.tree.unflatten(treedef, [x * (size / norm) for x in g])


def _reference(schedule=SCHEDULE, clip=CLIP, weight_decay=WD):
  return optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(schedule, weight_decay=weight_decay, mask=state_lib.decay_mask))


def _close(a, b, rtol=2e-5, atol=1e-7):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_global_norm_matches_float64():
  params = _params(jax.random.key(0))
  want = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                     for x in jax.tree.leaves(params)))
  np.testing.assert_allclose(float(optim.global_norm(params)), want, rtol=1e-6)
  assert float(optim.global_norm({})) == 0.0


def test_state_has_optax_structure():
  # Checkpoints written with the optax chain restore into this optimizer and back.
  params = _params(jax.random.key(0))
  ours = optim.clip_adamw(SCHEDULE, CLIP, WD, mask=state_lib.decay_mask).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(_reference().init(params))


@pytest.mark.parametrize("grad_size", [0.3, 25.0], ids=["unclipped", "clipped"])
def test_steps_match_optax(grad_size):
  params = _params(jax.random.key(1))
  ours_tx = optim.clip_adamw(SCHEDULE, CLIP, WD, mask=state_lib.decay_mask)
  ref_tx = _reference()
  ours_update = jax.jit(lambda g, s, p: ours_tx.update(g, s, p, apply=True))
  ref_update = jax.jit(ref_tx.update)
  p_ours, s_ours = params, ours_tx.init(params)
  p_ref, s_ref = params, ref_tx.init(params)
  for step in range(6):  # Through warmup into the cosine, bias corrections far from 1.
    g = _grads(jax.random.key(10 + step), params, grad_size)
    u_ours, s_ours = ours_update(g, s_ours, p_ours)
    u_ref, s_ref = ref_update(g, s_ref, p_ref)
    _close(u_ours, u_ref)
    _close(s_ours, s_ref)
    p_ours = optax.apply_updates(p_ours, u_ours)
    p_ref = optax.apply_updates(p_ref, u_ref)
  _close(p_ours, p_ref)


def test_a_constant_learning_rate_matches_optax():
  params = _params(jax.random.key(4))
  ours, ref = optim.clip_adamw(1e-3, CLIP, WD, mask=state_lib.decay_mask), _reference(1e-3)
  s_ours, s_ref = ours.init(params), ref.init(params)
  for step in range(2):
    g = _grads(jax.random.key(30 + step), params, 3.0)
    u_ours, s_ours = ours.update(g, s_ours, params)
    u_ref, s_ref = ref.update(g, s_ref, params)
    _close(u_ours, u_ref)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_skipped_step_changes_nothing(bad):
  params = _params(jax.random.key(2))
  tx = optim.clip_adamw(SCHEDULE, CLIP, WD, mask=state_lib.decay_mask)
  state = tx.init(params)
  for step in range(3):  # Non-zero moments and counts.
    u, state = tx.update(_grads(jax.random.key(step), params, 2.0), state, params)
    params = optax.apply_updates(params, u)
  g = _grads(jax.random.key(9), params, 2.0)
  g["dense"]["kernel"] = g["dense"]["kernel"].at[3, 1].set(bad)
  for apply in (False, jnp.isfinite(optim.global_norm(g))):
    u, new_state = jax.jit(lambda g, s, p, a: tx.update(g, s, p, apply=a))(g, state, params,
                                                                           apply)
    for x in jax.tree.leaves(u):
      assert np.all(np.asarray(x) == 0)
    _identical(new_state, state)


def test_frozen_parameters_under_peft():
  """make_optimizer(trainable=heads): the body gets no update, the head optax's."""
  params = _params(jax.random.key(3))
  from configs import default
  cfg = default.get_config().train
  peft = _with(cfg, trainable="heads")
  heads = state_lib.trainable_partition(peft)
  tx, schedule = state_lib.make_optimizer(peft, steps_per_epoch=5, trainable=heads)
  ref = optax.multi_transform(
      {"train": _reference(schedule, cfg.clip_norm, cfg.weight_decay),
       "freeze": optax.set_to_zero()},
      lambda p: jax.tree.map(lambda t: "train" if t else "freeze", heads(p)))
  s, s_ref = tx.init(params), ref.init(params)
  assert jax.tree.structure(s) == jax.tree.structure(s_ref)
  for step in range(3):
    g = _grads(jax.random.key(20 + step), params, 5.0)
    u, s = tx.update(g, s, params, apply=True)
    u_ref, s_ref = ref.update(g, s_ref, params)
    _close(u, u_ref)
    _close(s, s_ref)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u["dense"]))
    if step:  # The warmup starts at a learning rate of 0.
      assert all(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(u["head"]))
  u, s2 = tx.update(g, s, params, apply=False)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  _identical(s2, s)


def _with(cfg, **changes):
  cfg = cfg.copy_and_resolve_references()
  for k, v in changes.items():
    cfg[k] = v
  return cfg
