"""PatchConv (slices + one matmul) against lax.conv_general_dilated and nn.Conv.

Forward values and input/kernel gradients for every convolution shape the
ResNet uses (3×3/1 and 3×3/2 with the torchvision padding, 1×1/2 "VALID"), on
odd and even sizes; then the whole ResNet under both `conv_impl`s with the same
parameters (eval mode).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet as resnet_config
from jaxquant import config_check
from jaxquant.models.resnet import _PAD3, PatchConv, ResNet, conv_module

# Unoptimised XLA:CPU compiles several times faster; the shapes are tiny.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

CASES = [((3, 3), (1, 1), _PAD3), ((3, 3), (2, 2), _PAD3), ((1, 1), (2, 2), "VALID")]


def lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("kernel_size,strides,padding", CASES)
def test_values_and_gradients_match_lax_conv(kernel_size, strides, padding):
  rng = np.random.default_rng(0)
  # An even and an odd side: where stride-2 padding conventions would differ.
  x = jnp.asarray(rng.normal(size=(2, 4, 7, 3)), jnp.float32)
  conv = PatchConv(5, kernel_size, strides, padding=padding)
  params = conv.init(jax.random.key(0), x)
  kernel = params["params"]["kernel"]
  assert kernel.shape == (*kernel_size, 3, 5)
  # A random cotangent, so every output cell weighs differently in the gradient.
  ct = jnp.asarray(rng.normal(size=lax_conv(x, kernel, strides, padding).shape), jnp.float32)

  def loss_patch(x, k):
    y = conv.apply({"params": {"kernel": k}}, x)
    return jnp.sum(y * ct), y

  def loss_lax(x, k):
    y = lax_conv(x, k, strides, padding)
    return jnp.sum(y * ct), y

  (_, y1), g1 = jit(jax.value_and_grad(loss_patch, (0, 1), has_aux=True))(x, kernel)
  (_, y2), g2 = jit(jax.value_and_grad(loss_lax, (0, 1), has_aux=True))(x, kernel)
  np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g1[0], g2[0], rtol=1e-5, atol=1e-5)  # d/dx
  np.testing.assert_allclose(g1[1], g2[1], rtol=1e-5, atol=1e-5)  # d/dkernel


@pytest.mark.parametrize("kernel_size,strides,padding", CASES)
def test_same_param_and_init_as_nn_conv(kernel_size, strides, padding):
  x = jnp.ones((1, 4, 4, 3))
  a = nn.Conv(5, kernel_size, strides, padding=padding, use_bias=False).init(jax.random.key(3), x)
  b = PatchConv(5, kernel_size, strides, padding=padding).init(jax.random.key(3), x)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  np.testing.assert_array_equal(a["params"]["kernel"], b["params"]["kernel"])


def test_conv_module_choice():
  assert conv_module("xla") is nn.Conv and conv_module("patches") is PatchConv
  want = PatchConv if jax.default_backend() == "cpu" else nn.Conv
  assert conv_module("auto") is want
  with pytest.raises(ValueError, match="conv_impl"):
    conv_module("cudnn")


def test_resnet_outputs_and_params_equal_under_both_impls():
  small = dict(depth=10, width=4, plane_width=6, head_features=(8,), dropout=0.0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 22, 3)), jnp.float32)  # 4×6 planes.
  xla, patches = ResNet(conv_impl="xla", **small), ResNet(conv_impl="patches", **small)
  v = jax.eval_shape(lambda x: xla.init({"params": jax.random.key(0)}, x, train=False), x)
  v2 = jax.eval_shape(lambda x: patches.init({"params": jax.random.key(0)}, x, train=False), x)
  assert v == v2  # Same names, shapes and dtypes.
  # Random values (no compiled init): init zeroes each block's last BN scale,
  # which would hide its convs.
  rng = np.random.default_rng(2)
  v = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if a.ndim == 1
                                                   else rng.normal(0, 0.5, a.shape),
                                                   jnp.float32), v)

  # Eval mode: train-mode BN over 3 examples × 1 cell (stage 4) divides by tiny
  # batch variances, which magnifies the two impls' different summation orders.
  o1, o2 = (jit(lambda v, x, m=m: m.apply(v, x, train=False))(v, x) for m in (xla, patches))
  np.testing.assert_allclose(o1["logits"], o2["logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(o1["ret"], o2["ret"], rtol=1e-5, atol=1e-5)


def test_config_check_rejects_unknown_conv_impl():
  config = resnet_config.get_config("quick")
  config_check.validate(config)
  config.model.conv_impl = "cudnn"
  with pytest.raises(config_check.ConfigError, match="model.conv_impl"):
    config_check.validate(config)
