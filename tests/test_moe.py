"""MoE dispatch vs dense reference and numpy recounts; Transformer/MoE forward; param counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import moe as moe_config
from configs import transformer as transformer_config
from jaxquant import models
from jaxquant.models import moe
from jaxquant.models import param_count
from jaxquant.models import transformer

# Compile without backend optimisation: these programs are tiny and the 2-core
# CI machine spends far longer compiling them than running them.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

D, E, K = 8, 4, 2


def moe_dense_reference(params, x, top_k, cap=None):
  """Every expert on every token, combined with the router's top-k weights — the
  test's own oracle (its MLP written out here, not the layer's).

  Non-selected experts get weight 0. With `cap` = None nothing is dropped; with the
  layer's `cap`, the assignments it drops (choice-major) get weight 0 too.
  """
  shape = x.shape
  xf = x.reshape(-1, shape[-1]).astype(jnp.float32)
  n = xf.shape[0]
  logits = xf @ params["router"]["kernel"] + params["router"]["bias"]
  _, expert_idx, weights = moe.route(logits, top_k)
  num_experts = params["w_in"].shape[0]
  if cap is not None:
    keep = moe.count_assignments(expert_idx, num_experts, cap)["keep"]
    weights = weights * keep.reshape(top_k, n).T
  dense_w = jnp.zeros((n, num_experts), jnp.float32)
  dense_w = dense_w.at[jnp.arange(n)[:, None], expert_idx].set(weights)
  outs = []
  for e in range(num_experts):
    h = jax.nn.gelu(xf @ params["w_in"][e] + params["b_in"][e], approximate=True)
    outs.append(h @ params["w_out"][e] + params["b_out"][e])
  y = jnp.einsum("ne,end->nd", dense_w, jnp.stack(outs))
  return y.reshape(shape)


def _layer_and_params(capacity_factor, x):
  layer = moe.MoEFeedForward(num_experts=E, top_k=K, capacity_factor=capacity_factor,
                             expert_dim=16, dropout=0.0)
  # Parameters are built in numpy from the init's shapes (no compile needed);
  # non-zero biases make a wrongly included empty buffer slot show.
  shapes = jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), x, train=False))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[-2] if len(s.shape) > 1 else 10)
                 ).astype(np.float32), shapes)
  return layer, params


def _x(batch=2, seq_len=16, seed=1):
  # numpy, not jax.random: every new shape would cost an eager compile.
  return np.random.default_rng(seed).standard_normal((batch, seq_len, D)).astype(np.float32)


def _gelu(x):  # flax nn.gelu default: the tanh approximation.
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _numpy_moe(params, x, capacity_factor):
  """Independent numpy recount: routing, choice-major capacity dropping, outputs."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xf = np.asarray(x, np.float64).reshape(-1, D)
  n = xf.shape[0]
  logits = xf @ p["router"]["kernel"] + p["router"]["bias"]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  choice = np.argsort(-probs, axis=-1, kind="stable")[:, :K]  # [N, K]
  top = np.take_along_axis(probs, choice, -1)
  weights = top / top.sum(-1, keepdims=True)
  cap = min(max(int(np.ceil(capacity_factor * n * K / E)), 1), n)
  used = np.zeros(E, int)
  y = np.zeros_like(xf)
  dropped = 0
  for c in range(K):  # All first choices before any second choice...
    for t in range(n):  # ...then by token index.
      e = choice[t, c]
      if used[e] >= cap:
        dropped += 1
        continue
      used[e] += 1
      h = _gelu(xf[t] @ p["w_in"][e] + p["b_in"][e])
      y[t] += weights[t, c] * (h @ p["w_out"][e] + p["b_out"][e])
  return {"y": y.reshape(x.shape), "dropped": dropped, "cap": cap, "probs": probs,
          "choice": choice, "logits": logits}


def test_sort_assignments_docstring_example():
  a = moe.sort_assignments(jnp.array([[0, 1], [0, 1], [1, 0]]), 2, 2)
  np.testing.assert_array_equal(a["order"], [0, 1, 5, 2, 3, 4])
  np.testing.assert_array_equal(a["slot"], [0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(a["keep"], [1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(a["token"], [0, 1, 2, 2, 0, 1])
  np.testing.assert_array_equal(a["counts"], [3, 3])


def test_count_assignments_equals_sort_assignments():
  idx = jax.random.randint(jax.random.key(0), (37, 3), 0, 5)
  want = moe.sort_assignments(idx, 5, 6)
  got = moe.count_assignments(idx, 5, 6)
  # sort_assignments lists assignments in sorted order; put them back.
  for key in ("expert", "slot", "token", "choice", "keep"):
    back = np.zeros_like(np.asarray(want[key]))
    back[np.asarray(want["order"])] = np.asarray(want[key])
    np.testing.assert_array_equal(got[key], back, err_msg=key)
  np.testing.assert_array_equal(got["counts"], want["counts"])


def test_top_k_indices_equals_lax_top_k_with_ties():
  scores = jax.random.normal(jax.random.key(1), (50, 8))
  # Many ties (+ 0.0: no -0.0, which lax.top_k orders below +0.0; probabilities
  # from a softmax are never -0.0).
  scores = scores.at[:10].set(jnp.round(scores[:10]) + 0.0)
  scores = scores.at[10].set(0.5)  # All equal.
  for k in (1, 2, 3, 8):
    np.testing.assert_array_equal(moe.top_k_indices(scores, k), jax.lax.top_k(scores, k)[1])


def test_dispatch_equals_dense_reference_without_drops():
  x = _x()
  layer, params = _layer_and_params(E / K, x)  # C = N: nothing can drop.
  g = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)

  @jit
  def both(params, x):
    sparse = lambda p, x: layer.apply({"params": p}, x, train=False)
    dense = lambda p, x: (moe_dense_reference(p, x, K), {})
    def value_and_grads(f):
      (_, (y, extras)), grads = jax.value_and_grad(
          lambda p, x: (jnp.sum(f(p, x)[0] * g), f(p, x)), argnums=(0, 1), has_aux=True)(params, x)
      return y, extras, grads
    return value_and_grads(sparse), value_and_grads(dense)

  (y, extras, grads), (want_y, _, want_grads) = both(params, x)
  assert float(extras["dropped_fraction"]) == 0.0
  np.testing.assert_allclose(y, want_y, atol=1e-5, rtol=1e-5)
  assert jax.tree.structure(grads) == jax.tree.structure(want_grads)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_gradients_with_dropped_assignments_match_a_masked_dense_reference():
  """The gather-only dispatch/combine backward, where capacity drops assignments."""
  x = _x(batch=2, seq_len=24, seed=3)
  layer, params = _layer_and_params(0.6, x)
  g = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
  n = x.shape[0] * x.shape[1]
  cap = moe.capacity(n, E, K, 0.6)

  def masked_dense(p, x):
    # Every expert on every token; a dropped assignment's weight is 0.
    _, idx, _ = moe.route(x.reshape(-1, D) @ p["router"]["kernel"] + p["router"]["bias"], K)
    dropped = jnp.mean(~moe.count_assignments(idx, E, cap)["keep"])
    return moe_dense_reference(p, x, K, cap), dropped

  @jit
  def both(params, x):
    sparse = lambda p, x: layer.apply({"params": p}, x, train=False)
    f = lambda fn: jax.value_and_grad(
        lambda p, x: (jnp.sum(fn(p, x)[0] * g), fn(p, x)[1]), argnums=(0, 1),
        has_aux=True)(params, x)
    return f(sparse), f(masked_dense)

  ((_, extras), grads), ((_, dropped), want_grads) = both(params, x)
  assert float(extras["dropped_fraction"]) > 0.1
  np.testing.assert_allclose(float(extras["dropped_fraction"]), float(dropped), atol=1e-7)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@functools.lru_cache(maxsize=None)
def _run_layer(capacity_factor):
  """(x, params, outputs of the jitted layer) — shared by the tests below."""
  x = _x(batch=2, seq_len=24, seed=2)
  layer, params = _layer_and_params(capacity_factor, x)
  y, extras = jit(lambda p, x: layer.apply({"params": p}, x, train=False))(params, x)
  return x, params, y, extras


@pytest.mark.parametrize("capacity_factor", [0.25, 0.6])
def test_dropping_matches_numpy_recount(capacity_factor):
  x, params, y, extras = _run_layer(capacity_factor)
  ref = _numpy_moe(params, x, capacity_factor)
  n_assign = x.shape[0] * x.shape[1] * K
  assert ref["dropped"] > 0
  np.testing.assert_allclose(float(extras["dropped_fraction"]), ref["dropped"] / n_assign,
                             atol=1e-7)
  np.testing.assert_allclose(y, ref["y"], atol=1e-5, rtol=1e-5)
  load = np.bincount(ref["choice"].reshape(-1), minlength=E) / n_assign
  np.testing.assert_allclose(extras["expert_load"], load, atol=1e-7)


def test_load_balancing_and_z_loss_match_formula():
  x, params, _, extras = _run_layer(0.6)
  ref = _numpy_moe(params, x, 0.6)
  f = np.bincount(ref["choice"][:, 0], minlength=E) / ref["choice"].shape[0]
  lb = E * np.sum(f * ref["probs"].mean(0))
  m = ref["logits"].max(-1)
  z = np.mean((m + np.log(np.exp(ref["logits"] - m[:, None]).sum(-1))) ** 2)
  np.testing.assert_allclose(float(extras["lb_loss"]), lb, rtol=1e-5)
  np.testing.assert_allclose(float(extras["z_loss"]), z, rtol=1e-5)
  # A perfectly uniform router would give exactly 1.
  assert lb >= 0.9


SMALL = dict(d_model=16, num_heads=2, num_layers=1, mlp_dim=32, attention_radius=3, max_len=64)


def _numpy_params(model, x):
  """Random parameters built in numpy from the init's shapes (keeps init out of
  the compiled programs, which is most of their compile time)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
  rng = np.random.default_rng(0)
  def make(path, s):
    if getattr(path[-1], "key", None) == "scale":  # LayerNorm.
      return np.ones(s.shape, np.float32)
    fan_in = s.shape[-2] if len(s.shape) > 1 else 10
    return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(make, shapes)


@pytest.mark.parametrize("model", [
    transformer.Transformer(**SMALL),
    # dropout=0 (head dropout stays): every dropout site adds PRNG code that
    # costs seconds of compile time on the CI machine.
    transformer.Transformer(**SMALL, causal=True, pooling="last", positions="sinusoidal",
                attention="dense", dropout=0.0),
    moe.MoETransformer(**SMALL, num_experts=4, top_k=2, dropout=0.0),
], ids=["transformer", "causal-last-sinusoidal-dense", "moe"])
def test_forward_shapes_and_finite(model):
  x = _x(batch=3, seq_len=11)[..., :5]
  params = _numpy_params(model, x)

  @jit
  def run(params, x):
    def loss(params):
      out = model.apply({"params": params}, x, train=True,
                        rngs={"dropout": jax.random.PRNGKey(1)})
      return jnp.sum(out["logits"]) + jnp.sum(out["ret"]) + out["aux_loss"], out
    return jax.grad(loss, has_aux=True)(params)

  grads, out = run(params, x)
  assert out["logits"].shape == (3, 2) and out["logits"].dtype == jnp.float32
  assert out["ret"].shape == (3,) and out["ret"].dtype == jnp.float32
  assert out["aux_loss"].shape == ()
  for leaf in jax.tree.leaves((out, grads)):
    assert np.all(np.isfinite(leaf))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  if isinstance(model, moe.MoETransformer):
    assert float(out["aux_loss"]) > 0
    assert out["stats"]["expert_load"].shape == (4,)
    np.testing.assert_allclose(np.sum(out["stats"]["expert_load"]), 1.0, rtol=1e-5)
    assert 0.0 <= float(out["stats"]["dropped_fraction"]) < 1.0
  else:
    assert float(out["aux_loss"]) == 0.0


def test_bfloat16_compute_keeps_float32_outputs():
  model = moe.MoETransformer(**SMALL, num_experts=4, dtype=jnp.bfloat16)
  x = _x(batch=2, seq_len=9)[..., :5]
  params = _numpy_params(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
  assert out["logits"].dtype == jnp.float32 and np.all(np.isfinite(out["logits"]))
  assert out["aux_loss"].dtype == jnp.float32


def test_moe_transformer_combines_layers():
  model = moe.MoETransformer(num_experts=2, aux_loss_weight=0.5, z_loss_weight=0.1)
  extras = [{"lb_loss": 1.0, "z_loss": 2.0, "expert_load": np.array([0.25, 0.75]),
             "dropped_fraction": 0.0},
            {"lb_loss": 3.0, "z_loss": 4.0, "expert_load": np.array([0.75, 0.25]),
             "dropped_fraction": 0.5}]
  out = model.combine_extras(extras)
  np.testing.assert_allclose(float(out["aux_loss"]), 0.5 * (1 + 3) + 0.1 * (2 + 4), rtol=1e-6)
  np.testing.assert_allclose(out["stats"]["expert_load"], [0.5, 0.5])
  np.testing.assert_allclose(float(out["stats"]["dropped_fraction"]), 0.25)


def _param_shapes(config, num_features=6):
  model = models.build_model(config.model, num_classes=2)
  x = jnp.zeros((1, config.data.window, num_features), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return model, shapes["params"]


def test_full_config_param_counts():
  _, params = _param_shapes(transformer_config.get_config())
  total = param_count.count_parameters(params)
  print(f"transformer: {total / 1e6:.2f} M parameters (original 26.9 M)")
  assert abs(total - 26.9e6) / 26.9e6 < 0.05
  model, params = _param_shapes(moe_config.get_config())
  total = param_count.count_parameters(params)
  active = moe.active_params(params, model.top_k, model.num_experts)
  print(f"moe: {total / 1e6:.2f} M total / {active / 1e6:.2f} M active (original ~30 / ~7.5)")
  assert abs(total - 30e6) / 30e6 < 0.05
  # Shared (non-expert) weights are always active, so active > total·k/E = 7.5 M.
  assert 7.5e6 < active < 9e6


@pytest.mark.parametrize("config", [transformer_config, moe_config])
def test_quick_configs_build_and_trace(config):
  c = config.get_config("quick")
  model = models.build_model(c.model, num_classes=2)
  x = jnp.ones((2, c.data.window, 6))
  # Shapes only (tracing, no compile): the config keys are module attributes.
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x, train=False),
                                           x, train=False))
  assert out["logits"].shape == (2, 2)


def test_active_params_counts_only_expert_share():
  params = {"block": {"ffn": {"w_in": jnp.zeros((8, 3, 5)), "b_in": jnp.zeros((8, 5)),
                              "router": {"kernel": jnp.zeros((3, 8))}}}}
  assert param_count.count_parameters(params) == 120 + 40 + 24
  assert moe.active_params(params, top_k=2, num_experts=8) == 184 - 160 * 6 // 8
