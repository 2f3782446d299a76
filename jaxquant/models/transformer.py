"""Pre-LN Transformer encoder classifier with local (banded) self-attention.

The encoder block takes its feed-forward layer from a factory, so the MoE model
(jaxquant.models.moe) reuses everything here and only swaps that layer.
A feed-forward layer is called as `ffn(h, train=...)` and returns
`(output, extras)`, where extras is a dict of per-layer scalars/arrays (empty
for the dense MLP; losses and routing statistics for MoE).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxquant.models import attention as attention_lib
from jaxquant.models import dropout as dropout_lib
from jaxquant.models import heads as heads_lib
from jaxquant.models import lora
from jaxquant.models import settings

# config.model's settings and their ranges (config_check reads them via models.check_model_config).
SETTINGS = {
    "d_model": settings.at_least(1),
    "num_heads": settings.at_least(1),
    "num_layers": settings.at_least(1),
    "mlp_dim": settings.at_least(1),
    "attention_radius": settings.at_least(0),
    "causal": settings.boolean(),
    "attention": settings.one_of(("local", "dense")),
    "positions": settings.one_of(("learned", "sinusoidal")),
    "max_len": settings.at_least(1),
    "dropout": settings.fraction(),
    "head_dropout": settings.fraction(),
    "pooling": settings.one_of(("mean", "last")),
    "lora_rank": settings.at_least(0),
}


def heads_divide_width(vals):
  """Each head takes d_model // num_heads channels: they must divide evenly."""
  if vals["d_model"] % vals["num_heads"]:
    raise settings.invalid("num_heads", vals["num_heads"],
                           f"model.d_model={vals['d_model']} must be a multiple of it")


# Rules between fields, checked after each field passed SETTINGS.
CROSS_RULES = (heads_divide_width,)


def sinusoidal_positions(seq_len: int, d_model: int):
  """Fixed sine/cosine position encodings ("Attention Is All You Need").

  Args:
    seq_len: T.
    d_model: width (odd widths drop the last cosine channel).

  Returns:
    [T, d_model] float32 numpy array.
  """
  pos = np.arange(seq_len, dtype=np.float64)[:, None]
  half = (d_model + 1) // 2
  freq = np.exp(-np.log(10000.0) * np.arange(half) * 2.0 / d_model)
  ang = pos * freq[None, :]
  enc = np.zeros((seq_len, 2 * half))
  enc[:, 0::2] = np.sin(ang)
  enc[:, 1::2] = np.cos(ang)
  return enc[:, :d_model].astype(np.float32)


def as_rows(x):
  """[..., d] → [N, d]. XLA:CPU runs Dense layers on 2-D rows without the
  transposes it inserts around a dot with two batch-like leading axes."""
  return x.reshape(-1, x.shape[-1])


class MlpBlock(nn.Module):
  """d_model → mlp_dim (GELU, dropout) → d_model (dropout).

  Returns `(y, {})` to match the feed-forward interface of `Block`; lora_rank > 0 adds
  LoRA adapters to wi and wo.
  """
  mlp_dim: int = 512
  dropout: float = 0.1
  lora_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    d = x.shape[-1]
    dense = lambda width, name: lora.adapt(
        nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=name), self.lora_rank)
    h = dense(self.mlp_dim, "wi")(as_rows(x))
    h = nn.gelu(h)
    h = dropout_lib.Dropout(self.dropout, deterministic=not train)(h)
    y = dense(d, "wo")(h)
    return dropout_lib.Dropout(self.dropout, deterministic=not train)(y.reshape(x.shape)), {}


class Block(nn.Module):
  """Pre-LN encoder block: x + Attn(LN(x)), then x + FFN(LN(x)).

  Attributes:
    ffn_factory: called as `ffn_factory(name="ffn")` inside the block to build
      the feed-forward module (`MlpBlock` or `MoEFeedForward` partials).
    num_heads, radius, causal, attention, head_dropout: see attention.LocalSelfAttention.
    dropout: dropout on the attention branch output.
    lora_rank: LoRA adapter rank of the attention projections (0 = none).
    dtype: compute dtype.
  """
  ffn_factory: Callable[..., nn.Module]
  num_heads: int = 4
  radius: int = 20
  causal: bool = False
  attention: str = "local"
  dropout: float = 0.1
  head_dropout: float = 0.1
  lora_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Returns (x [B, T, d], extras dict from the feed-forward layer)."""
    ln = lambda name: nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name=name)
    h = attention_lib.LocalSelfAttention(num_heads=self.num_heads, radius=self.radius,
                           causal=self.causal, head_dropout=self.head_dropout,
                           attention=self.attention, lora_rank=self.lora_rank,
                           dtype=self.dtype, name="attn")(ln("ln_attn")(x), train=train)
    x = x + dropout_lib.Dropout(self.dropout, deterministic=not train)(h)
    h, extras = self.ffn_factory(name="ffn")(ln("ln_ffn")(x), train=train)
    return x + h, extras


class Transformer(nn.Module):
  """Encoder classifier over `[B, T, F]` windows with local self-attention.

  Attributes:
    d_model: residual width.
    num_heads: attention heads (head_dim = d_model // num_heads).
    num_layers: encoder blocks.
    mlp_dim: hidden width of the feed-forward layers.
    attention_radius: attention half-width w (|i - j| <= w).
    causal: attend only to the past.
    attention: "local" (blockwise band, O(T·w)) or "dense" (full T×T, for comparison).
    positions: "learned" (nn.Embed over max_len) or "sinusoidal".
    max_len: longest T supported by learned positions.
    dropout: embedding / residual-branch / MLP / head dropout.
    head_dropout: probability of dropping a whole attention head.
    pooling: "mean" over time or "last" position.
    num_classes: classes of the classification head.
    lora_rank: rank of LoRA adapters on the attention and feed-forward kernels (0 = none;
      the input projection, positions, norms and head have none).
    dtype: compute dtype (params float32).
  """
  d_model: int = 128
  num_heads: int = 4
  num_layers: int = 4
  mlp_dim: int = 512
  attention_radius: int = 20
  causal: bool = False
  attention: str = "local"
  positions: str = "learned"
  max_len: int = 4096
  dropout: float = 0.1
  head_dropout: float = 0.1
  pooling: str = "mean"
  num_classes: int = 2
  lora_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  def ffn_factory(self, layer: int) -> Callable[..., nn.Module]:
    """Feed-forward module factory of block `layer` (MoETransformer overrides this)."""
    del layer
    return functools.partial(MlpBlock, mlp_dim=self.mlp_dim, dropout=self.dropout,
                             lora_rank=self.lora_rank, dtype=self.dtype)

  def combine_extras(self, extras: list) -> dict:
    """Turns per-layer feed-forward extras into {"aux_loss", "stats"} (none for MLP)."""
    del extras
    return {"aux_loss": jnp.zeros((), jnp.float32), "stats": {}}

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Args: x [B, T, F]. Returns {"logits" [B, K], "ret" [B], "aux_loss" (), "stats"}."""
    seq_len = x.shape[1]
    h = nn.Dense(self.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                 name="input_proj")(as_rows(x.astype(self.dtype)))
    h = h.reshape(x.shape[:-1] + (self.d_model,))
    if self.positions == "learned":
      if seq_len > self.max_len:
        raise ValueError(f"T={seq_len} > max_len={self.max_len} of learned positions")
      pos = nn.Embed(self.max_len, self.d_model, param_dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(0.02),
                     name="pos_embed").embedding[:seq_len]
    elif self.positions == "sinusoidal":
      pos = jnp.asarray(sinusoidal_positions(seq_len, self.d_model))
    else:
      raise ValueError(f"positions must be 'learned' or 'sinusoidal', got {self.positions!r}")
    h = h + pos.astype(self.dtype)[None]
    h = dropout_lib.Dropout(self.dropout, deterministic=not train)(h)

    extras = []
    for i in range(self.num_layers):
      h, e = Block(ffn_factory=self.ffn_factory(i), num_heads=self.num_heads,
                   radius=self.attention_radius, causal=self.causal, attention=self.attention,
                   dropout=self.dropout, head_dropout=self.head_dropout,
                   lora_rank=self.lora_rank, dtype=self.dtype, name=f"block_{i}")(h, train=train)
      extras.append(e)
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln_final")(h)

    if self.pooling == "mean":
      pooled = jnp.mean(h.astype(jnp.float32), axis=1).astype(self.dtype)
    elif self.pooling == "last":
      pooled = h[:, -1]
    else:
      raise ValueError(f"pooling must be 'mean' or 'last', got {self.pooling!r}")
    out = heads_lib.ClassAndReturnHead(self.num_classes, self.dropout, self.dtype, name="head")(
        pooled, train=train)
    out.update(self.combine_extras(extras))
    return out
