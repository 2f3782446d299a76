"""The 2-D "feature planes" view of a window, for image-style models (ResNet).

A window of T bars with F features becomes an H×W image with F channels: the
bars are written row-major in time, oldest first, like text on a page. Rows are
then W bars apart, so a 3×3 convolution sees both neighbouring bars (along a
row) and the same phase of the previous/next row (W bars earlier/later).
"""

import math

import jax.numpy as jnp


def planes_shape(T, F, width):
  """Shape `(H, W, C)` of one window's planes.

  Args:
    T: bars per window.
    F: features per bar (becomes the channel count C).
    width: W, bars per row.

  Returns:
    `(ceil(T / width), width, F)`.
  """
  if T < 1 or F < 1 or width < 1:
    raise ValueError(f"planes_shape needs positive sizes, got T={T}, F={F}, width={width}")
  return (math.ceil(T / width), width, F)


def to_planes(x, width):
  """Lays out windows `[..., T, F]` as feature planes `[..., H, W, F]`.

  Bar t of the (left-padded) window goes to row t // W, column t % W; each
  feature is one channel. When T is not a multiple of W, `H * W - T` zero bars
  are prepended (the *oldest* end is padded) so that the most recent bar always
  sits at the bottom-right corner, H and W fixed for a given T. Zero is the
  "no information" value of normalised features, which is why zeros are used.

  Example (B = 1, F = 1, T = 7 bars with values 1..7, width = 3):

      x[0, :, 0] = [1, 2, 3, 4, 5, 6, 7]
      to_planes(x, 3)[0, :, :, 0] = [[0, 0, 1],
                                     [2, 3, 4],
                                     [5, 6, 7]]      # H = ceil(7 / 3) = 3

  Pure jnp with static shapes, so it can be used inside `jax.jit`.

  Args:
    x: array `[..., T, F]` (usually `[B, T, F]`).
    width: W, bars per row (a Python int).

  Returns:
    Array `[..., H, W, F]` of x's dtype, H = ceil(T / W).
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"to_planes expects [..., T, F], got shape {x.shape}")
  *lead, T, F = x.shape
  H, W, _ = planes_shape(T, F, width)
  pad = H * W - T
  if pad:
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(pad, 0), (0, 0)])
  return x.reshape(*lead, H, W, F)
