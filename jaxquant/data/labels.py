"""Labels from forward returns."""

import numpy as np


def forward_return(close, horizon):
  """Simple return from bar t's close to bar t+horizon's close.

  Args:
    close: [n] closes of one instrument.
    horizon: h >= 1 bars.

  Returns:
    [n] float64; the last h entries (no future bar) are NaN.
  """
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1, got {horizon}")
  r = np.full(close.shape, np.nan)
  if len(close) > horizon:
    r[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
  return r


def binary_labels(fwd_return, threshold):
  """Class 1 when the forward return exceeds `threshold`, else 0."""
  return (fwd_return > threshold).astype(np.int32)
