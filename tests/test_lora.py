"""LoRA adapters (models/lora.py): the adapted model starts as its base, only adapters and
heads train under train.trainable="lora", gradients match a hand-written formula, and
merged weights run in the plain model give the adapted model's outputs."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gru as gru_config
from configs import moe as moe_config
from configs import transformer as transformer_config
from jaxquant import checkpoints
from jaxquant import config_check
from jaxquant import losses
from jaxquant import resume
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
from jaxquant.models import lora
from jaxquant.models import moe

T, F, RANK = 16, 6, 2
CONFIGS = {"transformer": transformer_config, "moe": moe_config}
# Compiled unoptimised: XLA:CPU's optimisation takes longer than these tiny runs.
FAST = {"xla_backend_optimization_level": 0}


def _config(name, rank, trainable="all"):
  c = CONFIGS[name].get_config("quick")
  c.model.lora_rank = rank
  c.model.dropout = c.model.head_dropout = 0.0  # Outputs compared across models.
  c.train.trainable = trainable
  c.train.warmup_epochs = 0.0  # The first step already moves the parameters.
  c.train.lr = 1e-2
  c.train.epochs = 1
  return c


@functools.lru_cache(maxsize=None)
def _build(name, rank, trainable="all", seed=0):
  c = _config(name, rank, trainable)
  model = state_lib.make_model(c, 2)
  trainable_fn = state_lib.trainable_partition(c.train)
  tx, schedule = state_lib.make_optimizer(c.train, steps_per_epoch=10, trainable=trainable_fn)
  state = state_lib.create_train_state(model, tx, F, T, seed)
  return c, model, tx, schedule, trainable_fn, state


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, T, F)).astype(np.float32)
  return {"x": x, "y": (x[:, -1, 0] > 0).astype(np.int32), "r": np.zeros(n, np.float32)}


@functools.lru_cache(maxsize=None)
def _apply(model):
  return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)["logits"],
                 compiler_options=FAST)


def _logits(model, params, x):
  return np.asarray(_apply(model)(params, x))


def _flat(params):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}


def _is_trained(key):  # keystr form: "['head']..." or "...['lora_a']".
  return key.startswith("['head']") or any(f"['{n}']" in key for n in lora.ADAPTER_NAMES)


@pytest.fixture(scope="module")
def trained():
  """{model: (plain model, adapted model, initial state, state after 3 LoRA steps, ...)}."""
  out = {}
  for name in CONFIGS:
    c, model, tx, schedule, trainable_fn, state = _build(name, RANK, "lora")
    loss_fn = losses.make_loss_fn(c.loss, np.array([1.0, 1.0], np.float32))
    step = jax.jit(steps_lib.make_train_step(model, tx, loss_fn, schedule, c, 2, 10),
                   compiler_options=FAST)
    first, _ = step(state, _batch(), jax.random.key(0))
    last = first
    for i in range(2):
      last, _ = step(last, _batch(seed=i + 1), jax.random.key(i + 1))
    plain = _build(name, 0)[1]
    out[name] = {"plain": plain, "model": model, "init": state, "first": first, "last": last,
                 "trainable": trainable_fn}
  return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_at_init_the_adapted_model_is_its_base(name):
  _, plain, _, _, _, base = _build(name, 0)
  _, adapted, _, _, _, state = _build(name, RANK, "lora")  # (The `trained` fixture's.)
  base_flat, adapted_flat = _flat(base.params), _flat(state.params)
  adapters = {k: v for k, v in adapted_flat.items() if k not in base_flat}
  # Same names plus adapters only; the base part draws the same values from the seed.
  assert adapters and all(k.endswith(("['lora_a']", "['lora_b']")) for k in adapters)
  for k, v in base_flat.items():
    np.testing.assert_array_equal(adapted_flat[k], v, err_msg=k)
  for k, v in adapters.items():  # B = 0, A small and random.
    assert np.all(v == 0) if k.endswith("['lora_b']") else np.std(v) > 0, k
  x = _batch()["x"]
  np.testing.assert_array_equal(_logits(adapted, state.params, x),
                                _logits(plain, base.params, x))
  # Every attention and feed-forward kernel got one; router, input projection, head none.
  adapted_modules = {k.rsplit("['lora_", 1)[0] for k in adapters}
  want = {"query", "key", "value", "out"} | ({"w_in_lora", "w_out_lora"} if name == "moe"
                                             else {"wi", "wo"})
  assert {k.rsplit("['", 1)[1].rstrip("']") for k in adapted_modules} == want


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lora_step_trains_only_adapters_and_heads(trained, name):
  run = trained[name]
  before, first, last = _flat(run["init"].params), _flat(run["first"].params), \
      _flat(run["last"].params)
  for k, v in before.items():
    if _is_trained(k):
      # B starts at 0, so A's first gradient is 0: A moves from the second step on.
      # (The return head has no loss here: loss.return_weight = 0.)
      assert "['ret']" in k or not np.array_equal(last[k], v), f"{k} did not train"
    else:
      np.testing.assert_array_equal(last[k], v, err_msg=f"{k} is frozen but changed")
  assert all(not np.array_equal(first[k], before[k]) for k in before if k.endswith("['lora_b']"))

  # Parameter counts and optimizer memory: adapters + head only (Adam's mu and nu).
  n_trained = sum(v.size for k, v in before.items() if _is_trained(k))
  counts = state_lib.parameter_counts(run["init"].params, run["trainable"])
  assert counts["trainable"] == n_trained < counts["total"] == sum(v.size for v in before.values())
  opt_floats = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(run["last"].opt_state)
                   if np.ndim(x) > 0)
  assert opt_floats == 2 * n_trained


class _Layers(nn.Module):
  """A Dense-like and a multi-axis (attention "out"-like) adapted layer in a row."""
  @nn.compact
  def __call__(self, x):
    h = lora.adapt(nn.DenseGeneral((2, 3), name="q"), RANK)(x)
    return lora.adapt(nn.DenseGeneral(4, axis=(-2, -1), name="out"), RANK)(jnp.tanh(h))


def test_gradients_equal_a_hand_written_formula():
  rng = np.random.default_rng(1)  # (numpy draws: no compiles.)
  x = rng.normal(size=(5, 7)).astype(np.float32)
  shapes = jax.eval_shape(lambda: _Layers().init(jax.random.key(2), x)["params"])
  # Random values everywhere (B too), so every gradient is non-trivial.
  params = jax.tree.map(lambda v: rng.normal(size=v.shape).astype(np.float32), shapes)

  def by_module(p):
    return jnp.sum(jnp.sin(_Layers().apply({"params": p}, x)))

  def by_hand(p):  # x·(W + A·B) + b, written out with einsum.
    q, o = p["q"], p["out"]
    wq = q["kernel"] + jnp.einsum("dr,rhk->dhk", q["lora_a"], q["lora_b"])
    h = jnp.tanh(jnp.einsum("nd,dhk->nhk", x, wq) + q["bias"])
    wo = o["kernel"] + jnp.einsum("hkr,ro->hko", o["lora_a"], o["lora_b"])
    return jnp.sum(jnp.sin(jnp.einsum("nhk,hko->no", h, wo) + o["bias"]))

  grad = lambda f: _flat(jax.jit(jax.grad(f), compiler_options=FAST)(params))
  got, want = grad(by_module), grad(by_hand)
  assert got.keys() == want.keys()
  for k in got:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert np.abs(got[k]).max() > 0, k  # Base kernels too: computed, but frozen by the optimizer.


def test_expert_adapters_equal_merged_expert_weights():
  """The MoE experts' forward and gradients with adapters = with W + A·B per expert."""
  rng = np.random.default_rng(3)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  e, c, d, h, r = 3, 4, 5, 6, RANK
  params = {"w_in": normal(e, d, h), "b_in": normal(e, h),
            "w_out": normal(e, h, d), "b_out": normal(e, d)}
  adapters = {"w_in": (normal(e, d, r), normal(e, r, h)),
              "w_out": (normal(e, h, r), normal(e, r, d))}
  xs = normal(e, c, d)

  def adapted(ad):
    return jnp.sum(moe._expert_mlp(params, xs, jnp.float32, ad) ** 2)

  def merged(ad):
    w = {**params, **{k: params[k] + jnp.stack([a[i] @ b[i] for i in range(e)])
                      for k, (a, b) in ad.items()}}
    return jnp.sum(moe._expert_mlp(w, xs, jnp.float32) ** 2)

  both = lambda f: jax.jit(jax.value_and_grad(f), compiler_options=FAST)(adapters)
  (value, grads), (value_ref, grads_ref) = both(adapted), both(merged)
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_merged_weights_in_the_plain_model_give_the_adapted_outputs(trained, name):
  run = trained[name]
  params = run["last"].params
  assert any(np.abs(v).max() > 0 for k, v in _flat(params).items() if k.endswith("['lora_b']"))
  merged = lora.merge(params)
  plain_params = _build(name, 0)[-1].params
  assert jax.tree.structure(merged) == jax.tree.structure(plain_params)
  x = _batch(seed=7)["x"]
  adapted_logits = _logits(run["model"], params, x)
  np.testing.assert_allclose(_logits(run["plain"], merged, x), adapted_logits,
                             rtol=1e-5, atol=1e-5)
  # The adapters matter: the base weights alone give other logits.
  assert np.abs(_logits(run["plain"], lora.merge(run["init"].params), x)
                - adapted_logits).max() > 1e-4


def test_lora_settings_are_checked():
  c = gru_config.get_config("quick")
  c.model.lora_rank = 4
  with pytest.raises(config_check.ConfigError, match=r"config\.model\.lora_rank=4 .*'gru'"):
    config_check.validate(c)
  c.model.lora_rank = 0  # No adapters: what a GRU is anyway.
  config_check.validate(c)
  state_lib.make_model(c, 2)
  c = _config("transformer", -1)
  with pytest.raises(config_check.ConfigError, match=r"config\.model\.lora_rank=-1"):
    config_check.validate(c)
  c = _config("moe", 0, trainable="lora")
  c.train.init_from = "some/run"
  with pytest.raises(config_check.ConfigError, match=r"config\.model\.lora_rank=0 .*lora"):
    config_check.validate(c)
  params = _build("transformer", 0)[-1].params
  with pytest.raises(ValueError, match="lora_rank"):
    state_lib.trainable_partition(c.train)(params)


def test_plain_checkpoint_initialises_the_adapted_model(tmp_path):
  """init_from_run: a plain run's params restore by name, the adapters keep their init;
  an adapted run's checkpoint refuses a model without adapters."""
  base = _build("transformer", 0)[-1]
  # Other values than the adapted model's own initial base (same seed).
  base = base.replace(params=jax.tree.map(lambda v: v + 1.0, base.params))
  meta = lambda rank: {"progress": {}, "fingerprint": {"config": {"model": {
      "name": "transformer", "lora_rank": rank}}}}
  store = checkpoints.CheckpointStore(os.path.join(tmp_path / "plain", "checkpoints"))
  store.save(1, base, meta(0), 0.5)
  store.close()
  _, _, tx, _, _, fresh = _build("transformer", RANK, "lora")
  got = resume.init_from_run(fresh, tx, str(tmp_path / "plain"), log=lambda _: None)
  base_flat, fresh_flat = _flat(base.params), _flat(fresh.params)
  for k, v in _flat(got.params).items():
    np.testing.assert_array_equal(v, base_flat.get(k, fresh_flat[k]), err_msg=k)
  assert set(_flat(got.params)) - set(base_flat)  # The adapters are there.

  store = checkpoints.CheckpointStore(os.path.join(tmp_path / "adapted", "checkpoints"))
  store.save(1, got, meta(RANK), 0.5)
  store.close()
  _, _, tx0, _, _, plain = _build("transformer", 0)
  with pytest.raises(ValueError, match=f"model.lora_rank={RANK}"):
    resume.init_from_run(plain, tx0, str(tmp_path / "adapted"), log=lambda _: None)
