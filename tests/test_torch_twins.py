"""The PyTorch twins of benchmarks/torch_reference.py are the Flax models' twins.

For every model at a small config (the `:quick` configs, shrunk): the twin has
exactly the Flax model's trainable parameter count, computes the same outputs
from the same (Flax) weights in eval mode, and its training step runs.
Parameter shapes come from `jax.eval_shape` and the weights from numpy, so no
initialiser is compiled (keeps the file fast).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference  # noqa: E402
from configs import gru, lstm, moe, resnet, transformer  # noqa: E402
from jaxquant import state as state_lib

NUM_FEATURES = 6
WINDOW = 21  # Not a multiple of the plane width: exercises the planes' padding.
MODELS = ("gru", "lstm", "resnet", "transformer", "moe")
# The attention models: radius 4 → blocks of 8 (attention.default_block_size), and
# T = 37 > 3 blocks → 5 blocks, the last one 3 positions padded: the blockwise band
# (previous/current/next block) runs and masks most of T×T, against the twin's dense
# band mask. (At T = 21 with the quick radius 20 nothing is masked and it is one block.)
ATTENTION_WINDOW, ATTENTION_RADIUS = 37, 4


def _window(name):
  return ATTENTION_WINDOW if name in ("transformer", "moe") else WINDOW


def _config(name):
  module = {"gru": gru, "lstm": lstm, "resnet": resnet, "transformer": transformer,
            "moe": moe}[name]
  c = module.get_config("quick")
  assert c.model.name == name
  c.data.window = _window(name)
  if name in ("transformer", "moe"):
    c.model.attention_radius = ATTENTION_RADIUS
  if name in ("gru", "lstm"):
    c.model.num_layers = 2  # Two layers: the inter-layer dropout and input sizes.
    c.model.hidden = 16
  if name == "resnet":
    c.model.width = 4
    c.model.plane_width = 5  # 21 bars → 5×5 planes, 4 padded.
  if name == "moe":
    c.model.capacity_factor = 4.0  # = E / k: no token dropped, like the torch loop.
  return c


def _flax_variables(config, seed=0):
  model = state_lib.make_model(config, 2)
  shapes = jax.eval_shape(
      lambda k: model.init({"params": k, "dropout": k},
                           jnp.zeros((1, config.data.window, NUM_FEATURES)), train=False),
      jax.random.key(0))
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(
      lambda s: (rng.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
  if "batch_stats" in variables:  # Positive variances, non-trivial means.
    variables["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5,
                                            variables["batch_stats"])
  return model, variables


def test_attention_configs_run_several_blocks_with_the_band_active():
  from jaxquant.models.attention import default_block_size
  for name in ("transformer", "moe"):
    c = _config(name)
    t, w = c.data.window, c.model.attention_radius
    blocks = -(-t // default_block_size(t, w))
    assert blocks >= 3 and 2 * w + 1 < t, (name, t, w, blocks)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_match(name):
  config = _config(name)
  _, variables = _flax_variables(config)
  flax_count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  twin = torch_reference.build_torch_model(config, 2, NUM_FEATURES)
  assert sum(p.numel() for p in twin.parameters()) == flax_count
  assert torch_reference.count_params(twin) == flax_count


@pytest.mark.parametrize("name", ("gru", "transformer"))
def test_quick_configs_as_is_match(name):
  """The unmodified `:quick` configs (what the benchmark runs) match too."""
  module = {"gru": gru, "transformer": transformer}[name]
  config = module.get_config("quick")
  model = state_lib.make_model(config, 2)
  shapes = jax.eval_shape(
      lambda k: model.init({"params": k, "dropout": k},
                           jnp.zeros((1, config.data.window, NUM_FEATURES)), train=False),
      jax.random.key(0))
  twin = torch_reference.build_torch_model(config, 2, NUM_FEATURES)
  assert (sum(p.numel() for p in twin.parameters())
          == sum(x.size for x in jax.tree.leaves(shapes["params"])))


@pytest.mark.parametrize("name", MODELS)
def test_same_outputs_from_same_weights(name):
  config = _config(name)
  model, variables = _flax_variables(config)
  x = np.random.default_rng(1).normal(size=(3, _window(name), NUM_FEATURES)).astype(np.float32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False),
                  compiler_options={"xla_backend_optimization_level": 0})
  expected = apply(variables, x)
  twin = torch_reference.build_torch_model(config, 2, NUM_FEATURES)
  torch_reference.load_flax_params(twin, variables["params"], variables.get("batch_stats"))
  twin.eval()
  with torch.no_grad():
    got = twin(torch.from_numpy(x))
  for key in ("logits", "ret"):
    np.testing.assert_allclose(got[key].numpy(), np.asarray(expected[key]),
                               rtol=1e-4, atol=1e-4)
  if name == "moe":
    np.testing.assert_allclose(float(got["aux_loss"]), float(expected["aux_loss"]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_torch_train_step_runs(name):
  config = _config(name)
  torch.manual_seed(0)
  twin = torch_reference.build_torch_model(config, 2, NUM_FEATURES)
  step = torch_reference.make_torch_train_step(twin, config, [0.5, 7.0])
  x = torch.randn(8, _window(name), NUM_FEATURES)
  y = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0])
  r = torch.zeros(8)
  before = [p.detach().clone() for p in twin.parameters()]
  losses = [float(step(x, y, r)) for _ in range(2)]
  assert all(np.isfinite(losses))
  assert any(not torch.equal(a, b) for a, b in zip(before, twin.parameters()))


@pytest.mark.parametrize("name", ["transformer", "moe"])
def test_bfloat16_autocast_step_tracks_float32(name):
  """The benchmark's bf16 step (torch.autocast) trains the same model: from the same
  weights, one step's loss and parameter updates agree with float32 to bf16 accuracy."""
  config = _config(name)
  x = torch.randn(8, _window(name), NUM_FEATURES, generator=torch.Generator().manual_seed(1))
  y = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0])
  results = {}
  for dtype in (None, torch.bfloat16):
    torch.manual_seed(0)
    twin = torch_reference.build_torch_model(config, 2, NUM_FEATURES)
    before = [p.detach().clone() for p in twin.parameters()]
    seen = []  # The compute dtype: what the first Linear layer puts out.
    linear = next(m for m in twin.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, out, seen=seen: seen.append(out.dtype))
    step = torch_reference.make_torch_train_step(twin, config, [0.5, 7.0],
                                                 autocast_dtype=dtype)
    torch.manual_seed(1)  # Same dropout masks.
    loss = float(step(x, y, torch.zeros(8)))
    assert seen[0] == (dtype or torch.float32)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(twin.parameters(), before)])
    results[dtype] = loss, delta
    assert all(p.dtype == torch.float32 for p in twin.parameters())
  (loss32, d32), (loss16, d16) = results[None], results[torch.bfloat16]
  assert loss16 == pytest.approx(loss32, rel=0.05)
  cos = float(torch.dot(d32, d16) / (d32.norm() * d16.norm()))
  assert cos > 0.9, cos


def test_focal_loss_matches_jaxquant():
  from jaxquant import losses
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 2)).astype(np.float32)
  y = np.array([0, 1, 1, 0, 1])
  alpha = np.array([0.5, 7.0], np.float32)
  loss_fn = losses.make_loss_fn(_config("gru").loss, alpha)
  expected, _ = loss_fn(jnp.asarray(logits), jax.nn.one_hot(y, 2), jnp.ones(5), jnp.zeros(()))
  got = torch_reference.focal_loss(torch.from_numpy(logits), torch.from_numpy(y),
                                   torch.from_numpy(alpha), 2.0)
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
