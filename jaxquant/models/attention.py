"""Banded (local) self-attention, computed blockwise in O(T·w) time and memory.

Position i attends to keys j with |i - j| <= radius (causal: i - radius <= j <= i).
The sequence is cut into blocks of `b >= radius` positions; every query block
only needs the keys of the previous, current and next block (flaxformer's
"concat_3_blocks" long-attention layout), so the largest score tensor is
`[B, H, nb, b, 3b]` ≈ 3·T·b entries instead of T².
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.models import lora


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def default_block_size(seq_len: int, radius: int) -> int:
  """Block size used when `local_attention(..., block_size=None)`.

  The radius rounded up to a multiple of 8 (at least 8). When the whole
  sequence (rounded up to 8) is no longer than three such blocks, it becomes a
  single block instead: the previous/current/next concatenation would hold
  every key anyway, and one [T, T] block is cheaper than three padded ones
  (still O(T·w), since then T <= 3·b). Example: T=64, w=20 → b=24, 3b=72 >= 64
  → one block of 64; T=500, w=20 → b=24.

  Args:
    seq_len: T.
    radius: the attention half-width w.

  Returns:
    The block size b (b >= radius, or b >= T so that there is only one block).
  """
  b = _round_up(max(radius, 1), 8)
  whole = _round_up(max(seq_len, 1), 8)
  return whole if whole <= 3 * b else b


def _masked_softmax(scores, mask):
  """Float32 softmax over the last axis with masked-out entries at exactly 0.

  Args:
    scores: [..., k] float32 logits (already scaled).
    mask: boolean, broadcastable to `scores`; False = never attended.

  Returns:
    Probabilities shaped like `scores`. Rows with no allowed key (only padded
    queries can have none) come out as all zeros, without NaNs in values or
    gradients.
  """
  scores = jnp.where(mask, scores, -jnp.inf)
  # Max-subtraction for stability; the max is a constant shift of every logit of
  # the row, so it needs no gradient. Empty rows have max -inf → use 0 instead.
  m = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(scores - m)  # exp(-inf) = 0: masked keys get exactly 0 weight.
  denom = jnp.sum(p, axis=-1, keepdims=True)
  return p / jnp.where(denom > 0, denom, 1.0)


def local_attention(q, k, v, radius: int, *, causal: bool = False,
                    block_size: Optional[int] = None):
  """Banded attention computed blockwise, never building a T×T score matrix.

  Scores are `q·k / sqrt(D)`; the softmax runs in float32 whatever the input
  dtype. Position i attends to j with |i - j| <= radius (causal: i - radius <=
  j <= i), i.e. up to 2·radius + 1 keys (radius + 1 if causal).

  Args:
    q: queries [B, T, H, D].
    k: keys [B, T, H, D].
    v: values [B, T, H, D].
    radius: w >= 0, the half-width of the band (0 = each position sees itself).
    causal: if True, only keys at or before the query position.
    block_size: b; None picks `default_block_size(T, radius)`. Must be >= radius
      unless the whole (padded) sequence fits in one block.

  Returns:
    [B, T, H, D] attention outputs, in q's dtype.
  """
  if radius < 0:
    raise ValueError(f"radius must be >= 0, got {radius}")
  batch, seq_len, heads, depth = q.shape
  b = default_block_size(seq_len, radius) if block_size is None else int(block_size)
  if b < 1:
    raise ValueError(f"block_size must be >= 1, got {b}")
  nb = -(-seq_len // b)  # Number of blocks after padding T up to nb·b.
  if b < radius and nb > 1:
    # A query at offset r of block n may need key r - w of block n - 2 otherwise.
    raise ValueError(f"block_size={b} < radius={radius}: keys would fall outside "
                     "the previous/current/next blocks")
  padded = nb * b
  pad = padded - seq_len

  # Example (T=10, w=3, b=4): nb=3, padded=12, pad=2. Positions 10, 11 are padding.
  # Heads-major blocks [B, H, nb, b, D]: the einsums below then have their batch
  # dimensions (B, H, nb) leading, which XLA:CPU runs faster than the
  # [B, nb, b, H, D] layout (no transposes inside every dot).
  def to_blocks(x):
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return x.transpose(0, 2, 1, 3).reshape(batch, heads, nb, b, depth)

  qb, kb, vb = to_blocks(q), to_blocks(k), to_blocks(v)

  # Keys/values of the previous, current (and, non-causal, next) block side by
  # side: [B, H, nb, nk·b, D]. A zero block is padded on at both ends, so key
  # slot s of query block n holds absolute position j = (n - first)·b + s, with
  # `first` = the number of blocks before the current one (1; 0 for one block).
  # Example (b=4): query block n=1 (positions 4..7) sees slots 0..11 = positions 0..11;
  # query block 0 sees slots 0..3 = positions -4..-1 (the zero block, masked) and 0..7.
  # Causal attention never looks ahead, so the "next" block is left out
  # (2b keys instead of 3b). A single block only needs itself.
  if nb == 1:
    first, num_kblocks = 0, 1
  else:
    first, num_kblocks = 1, (2 if causal else 3)

  def concat_blocks(x):
    if nb == 1:
      return x
    x = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))  # [B, H, nb + 2, b, D]
    parts = [x[:, :, i:i + nb] for i in range(num_kblocks)]  # prev, cur(, next)
    return jnp.concatenate(parts, axis=3)

  k3, v3 = concat_blocks(kb), concat_blocks(vb)

  # Mask, built from small index grids only.
  # Query i = n·b + r, key j = (n - first)·b + s  ⇒  i - j = r - s + first·b
  # (the same for every block n).
  # Example (b=4, w=3, first=1): r=0, s=1 → i - j = 3 (allowed); r=0, s=0 → 4 (outside).
  r = jnp.arange(b)[:, None]
  s = jnp.arange(num_kblocks * b)[None, :]
  offset = r - s + first * b  # [b, nk·b] = i - j
  band = (offset <= radius) & (offset >= (0 if causal else -radius))
  # Key validity depends on the block n and slot s only: j must lie in [0, T).
  # Example (T=10, b=4): block n=0, slots 0..3 → j=-4..-1 (invalid);
  # block n=2, slots 6..7 → j=10, 11 (padding, invalid).
  j = (jnp.arange(nb)[:, None] - first) * b + jnp.arange(num_kblocks * b)[None, :]
  key_ok = (j >= 0) & (j < seq_len)  # [nb, nk·b]
  mask = band[None, :, :] & key_ok[:, None, :]  # [nb, b, nk·b] ↔ scores [B, H, nb, b, nk·b]

  scale = 1.0 / jnp.sqrt(jnp.asarray(depth, jnp.float32))
  scores = jnp.einsum("bhnqd,bhnkd->bhnqk", qb, k3,
                      preferred_element_type=jnp.float32) * scale
  p = _masked_softmax(scores, mask)
  out = jnp.einsum("bhnqk,bhnkd->bhnqd", p.astype(v.dtype), v3)
  # Rows of padded queries are sliced off (their keys were masked anyway).
  out = out.reshape(batch, heads, padded, depth)[:, :, :seq_len].transpose(0, 2, 1, 3)
  return out.astype(q.dtype)


def dense_local_attention_reference(q, k, v, radius: Optional[int],
                                    causal: bool = False):
  """Dense T×T attention with the band mask — for tests, benchmarks, comparisons.

  Args:
    q: queries [B, T, H, D].
    k: keys [B, T, H, D].
    v: values [B, T, H, D].
    radius: half-width of the band; None = full (global) attention.
    causal: if True, only keys at or before the query position.

  Returns:
    [B, T, H, D] attention outputs in q's dtype (same math as `local_attention`).
  """
  seq_len, depth = q.shape[1], q.shape[3]
  i = jnp.arange(seq_len)[:, None]
  j = jnp.arange(seq_len)[None, :]
  mask = jnp.ones((seq_len, seq_len), bool)
  if radius is not None:
    mask &= jnp.abs(i - j) <= radius
  if causal:
    mask &= j <= i
  scale = 1.0 / jnp.sqrt(jnp.asarray(depth, jnp.float32))
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                      preferred_element_type=jnp.float32) * scale
  p = _masked_softmax(scores, mask[None, None])
  out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v)
  return out.astype(q.dtype)


def head_dropout_mask(rng, batch: int, num_heads: int, rate: float, dtype=jnp.float32):
  """Per-(example, head) keep mask for dropping whole heads, already rescaled.

  Args:
    rng: PRNG key.
    batch: B.
    num_heads: H.
    rate: drop probability p of each head.
    dtype: dtype of the mask.

  Returns:
    [B, 1, H, 1] array of 0 (dropped) or 1/(1-p) (kept); broadcasts over
    per-head outputs [B, T, H, D].
  """
  if rate >= 1.0:
    return jnp.zeros((batch, 1, num_heads, 1), dtype)
  keep = jax.random.bernoulli(rng, 1.0 - rate, (batch, 1, num_heads, 1))
  return (keep / (1.0 - rate)).astype(dtype)


class LocalSelfAttention(nn.Module):
  """Multi-head self-attention restricted to a band |i - j| <= radius.

  Attributes:
    num_heads: H.
    head_dim: D per head; None = d_model // num_heads.
    d_model: output width; None = the input's last dimension.
    radius: band half-width w.
    causal: only attend to the past (and the position itself).
    head_dropout: probability of zeroing a whole head's output (per example)
      during training; kept heads are scaled by 1/(1-p).
    attention: "local" (blockwise band) or "dense" (full T×T attention over all
      positions via the dense reference, ignoring `radius` — for comparison).
    block_size: block size of the local kernel; None = automatic.
    lora_rank: rank of LoRA adapters on the query/key/value/out kernels (0 = none).
    dtype: compute dtype (params float32).
  """
  num_heads: int = 4
  head_dim: Optional[int] = None
  d_model: Optional[int] = None
  radius: int = 20
  causal: bool = False
  head_dropout: float = 0.0
  attention: str = "local"
  block_size: Optional[int] = None
  lora_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Args: x [B, T, d_in]; train enables head dropout. Returns [B, T, d_model]."""
    d_model = self.d_model or x.shape[-1]
    head_dim = self.head_dim or d_model // self.num_heads
    if head_dim < 1:
      raise ValueError(f"d_model={d_model} too small for {self.num_heads} heads")
    proj = lambda name: lora.adapt(nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype, param_dtype=jnp.float32, name=name),
        self.lora_rank)
    x = x.astype(self.dtype)
    # Projections on 2-D rows [B·T, d] (see transformer.as_rows), then [B, T, H, D].
    rows = x.reshape(-1, x.shape[-1])
    split = lambda y: y.reshape(x.shape[:-1] + (self.num_heads, head_dim))
    q, k, v = (split(proj(name)(rows)) for name in ("query", "key", "value"))
    if self.attention == "local":
      h = local_attention(q, k, v, self.radius, causal=self.causal,
                          block_size=self.block_size)
    elif self.attention == "dense":
      h = dense_local_attention_reference(q, k, v, None, causal=self.causal)
    else:
      raise ValueError(f"attention must be 'local' or 'dense', got {self.attention!r}")
    self.sow("intermediates", "head_outputs", h)
    if train and self.head_dropout > 0.0:
      mask = head_dropout_mask(self.make_rng("dropout"), h.shape[0], self.num_heads,
                               self.head_dropout, h.dtype)
      h = h * mask
    self.sow("intermediates", "head_outputs_dropped", h)
    h = h.reshape((-1,) + h.shape[-2:])
    y = lora.adapt(nn.DenseGeneral(d_model, axis=(-2, -1), dtype=self.dtype,
                                   param_dtype=jnp.float32, name="out"), self.lora_rank)(h)
    return y.reshape(x.shape[:-1] + (d_model,))
