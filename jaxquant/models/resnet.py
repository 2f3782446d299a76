"""ResNet-18/34 over the 2-D feature-planes view of a window.

The window `[B, T, F]` is laid out as `[B, H, W, F]` images (see
`jaxquant.models.planes.to_planes`: bars row-major in time, one channel per
feature) and classified by a BasicBlock ResNet followed by the original
system's MLP head. The trunk follows google/flax examples/imagenet/models.py
(ResNetBlock with a 1×1 projection shortcut whenever the shape changes).
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.models import dropout as dropout_lib
from jaxquant.models import heads as heads_lib
from jaxquant.models import planes
from jaxquant.models import settings

ModuleDef = Any

# BasicBlocks per stage; stage i has width * 2**i channels.
STAGE_SIZES = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

# torchvision-style "pad 1" for 3×3 convolutions. XLA's "SAME" pads stride-2
# convolutions asymmetrically on even sizes (0 before, 1 after), which would
# shift every downsampled grid by half a cell relative to the original PyTorch
# model; explicit symmetric padding keeps the two numerically identical.
_PAD3 = ((1, 1), (1, 1))

CONV_IMPLS = ("auto", "xla", "patches")

# config.model's settings and their ranges (config_check reads them via models.check_model_config).
SETTINGS = {
    "depth": settings.one_of(tuple(STAGE_SIZES)),
    "width": settings.at_least(1),
    "plane_width": settings.at_least(1),
    "head_features": settings.sizes(1),
    "dropout": settings.fraction(),
    "conv_impl": settings.one_of(CONV_IMPLS),
}


class PatchConv(nn.Module):
  """Bias-free 2-D convolution as shifted-slice patches + one matmul.

  A drop-in for `nn.Conv(use_bias=False)` with explicit or "VALID" padding: the
  same parameter (`kernel`, `[kh, kw, Cin, Cout]`, LeCun-normal init), the same
  outputs. XLA:CPU's convolution backward is slow (the input gradient's kernel
  flip/transpose alone took ~28% of a ResNet train step); here autodiff turns
  the slices into pads and the concatenation into splits, so the backward pass
  is pads + matmuls too.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: "VALID" or ((top, bottom), (left, right)).
    use_bias: must be False (kept so `nn.Conv`'s keyword arguments fit).
    dtype: compute dtype.
    param_dtype: kernel dtype.
    kernel_init: kernel initializer (`nn.Conv`'s default).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = "VALID"
  use_bias: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x):
    if self.use_bias:
      raise ValueError("PatchConv has no bias")
    if isinstance(self.padding, str) and self.padding != "VALID":
      raise ValueError(f"PatchConv takes 'VALID' or explicit padding, got {self.padding!r}")
    kh, kw = self.kernel_size
    sh, sw = self.strides
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, self.features),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.padding != "VALID":
      x = jnp.pad(x, ((0, 0), *self.padding, (0, 0)))
    b, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    # lax.slice with strides: its transpose is a pad (interior padding for
    # stride 2), not a gather/scatter.
    patches = [jax.lax.slice(x, (0, i, j, 0), (b, i + (ho - 1) * sh + 1,
                                               j + (wo - 1) * sw + 1, cin),
                             (1, sh, sw, 1))
               for i in range(kh) for j in range(kw)]
    # (i, j, c) order on the channel axis = kernel.reshape's row-major order.
    p = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)
    y = p.reshape(b * ho * wo, kh * kw * cin) @ kernel.reshape(kh * kw * cin, self.features)
    return y.reshape(b, ho, wo, self.features)


def conv_module(conv_impl):
  """`nn.Conv` or `PatchConv` for `conv_impl` ("auto": patches on CPU only)."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
  if conv_impl == "auto":
    # GPU/TPU convolutions (cuDNN, ...) are fast; only XLA:CPU's backward is slow.
    conv_impl = "patches" if jax.default_backend() == "cpu" else "xla"
  return PatchConv if conv_impl == "patches" else nn.Conv


class ResNetBlock(nn.Module):
  """BasicBlock: two 3×3 convolutions plus a (projected when needed) shortcut.

  Attributes:
    filters: output channels.
    conv: partially applied `nn.Conv` or `PatchConv` (no bias, compute dtype set).
    norm: partially applied `nn.BatchNorm` (train/eval mode set).
    act: activation.
    strides: strides of the first convolution (and of the projection).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    # Explicit names = `nn.Conv`'s automatic ones, so PatchConv keeps the checkpoint keys.
    y = self.conv(self.filters, (3, 3), self.strides, padding=_PAD3, name="Conv_0")(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3), padding=_PAD3, name="Conv_1")(y)
    # Zero-init the last BN scale (as the Flax example, Goyal et al. 2017): each
    # block starts as the identity, which makes deep stacks stable early on.
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, padding="VALID",
                           name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """BasicBlock ResNet on feature planes, with the original MLP head.

  Trunk: 3×3/1 stem conv → BN → ReLU → 4 stages of BasicBlocks (the first block
  of stages 2-4 downsamples by 2) → global average pool. Head: for each size in
  `head_features`, Dropout → Dense → BN → ReLU; then `heads.ClassAndReturnHead`, whose
  own leading Dropout is the head's last dropout.

  Attributes:
    depth: 10, 18 or 34 (BasicBlock stage sizes [1,1,1,1] / [2,2,2,2] / [3,4,6,3]).
    width: base channels; the stages have width × (1, 2, 4, 8).
    plane_width: W of the feature planes (bars per row); H = ceil(T / W).
    head_features: hidden sizes of the MLP head ((512, 256) in the original).
    dropout: rate of every head dropout.
    bn_axis_name: `axis_name` of every BatchNorm, to average batch statistics
      across devices under pmap/shard_map (None: per-device statistics).
    num_classes: classes of the classification head.
    dtype: compute dtype (parameters and batch statistics stay float32).
    conv_impl: "xla" (`nn.Conv`), "patches" (`PatchConv`, faster on XLA:CPU)
      or "auto" (patches on CPU, xla elsewhere); same parameters and outputs.
  """
  depth: int = 18
  width: int = 64
  plane_width: int = 25
  head_features: Sequence[int] = (512, 256)
  dropout: float = 0.3
  bn_axis_name: str | None = None
  num_classes: int = 2
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies windows.

    Args:
      x: `[B, T, F]` windows (F features become F input channels).
      train: batch statistics + dropout (True) or running statistics (False).

    Returns:
      `{"logits": [B, K] float32, "ret": [B] float32, "aux_loss": () float32}`.
    """
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}")
    conv = functools.partial(conv_module(self.conv_impl), use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32, axis_name=self.bn_axis_name)

    h = planes.to_planes(x.astype(self.dtype), self.plane_width)
    # Stem: a 3×3 stride-1 conv and no max-pool. ImageNet's 7×7/2 conv + 3×3/2
    # pool shrinks 224² inputs 4× before the first block; our planes are only
    # ~20×25, so that would leave a 5×7 grid for stage 1 and 1×1 by stage 4,
    # throwing away the bar-level detail the model is meant to see.
    h = conv(self.width, (3, 3), padding=_PAD3, name="conv_init")(h)
    h = norm(name="bn_init")(h)
    h = nn.relu(h)
    for i, block_count in enumerate(STAGE_SIZES[self.depth]):
      for j in range(block_count):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        h = ResNetBlock(self.width * 2**i, conv=conv, norm=norm, act=nn.relu,
                        strides=strides, name=f"stage{i + 1}_block{j + 1}")(h)
    # Pool in float32: a bf16 sum over hundreds of cells loses precision.
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)

    for k, features in enumerate(tuple(self.head_features)):
      h = dropout_lib.Dropout(self.dropout, deterministic=not train)(h)
      h = nn.Dense(features, dtype=self.dtype, name=f"head_dense{k + 1}")(h)
      h = norm(name=f"head_bn{k + 1}")(h)
      h = nn.relu(h)
    out = heads_lib.ClassAndReturnHead(self.num_classes, self.dropout, self.dtype, name="head")(
        h, train=train)
    out["aux_loss"] = jnp.zeros((), jnp.float32)
    return out
