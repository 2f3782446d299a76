"""Per-bar features and their normalisation (fitted on the training split only).

The spec's lesson: scale each feature by statistics of the whole training split,
never by per-window min/max, which erases the level information a model needs.
"""

import numpy as np

FEATURE_NAMES = (
    "log_return",     # log(close_t / close_{t-1})
    "log_range",      # log(high_t / low_t)
    "log_body",       # log(close_t / open_t)
    "log_volume",     # log(1 + volume_t)
    "volume_change",  # log(1 + volume_t) - log(1 + volume_{t-1})
    "oi_change",      # log(open_interest_t / open_interest_{t-1})
)

_EPS = 1e-12


def bar_features(bars):
  """Features of every bar of one instrument.

  Args:
    bars: [n, 6] float64 columns open, high, low, close, volume, open_interest.

  Returns:
    [n, len(FEATURE_NAMES)] float64. Row 0 has no predecessor, so its change
    features are 0; windows never start there (see splits.window_ends).
  """
  o, h, l, c, v, oi = (bars[:, i] for i in range(6))
  log_c = np.log(c)
  log_v = np.log1p(np.maximum(v, 0.0))
  # Open interest can legitimately be 0 for some contracts (or be absent in a CSV).
  log_oi = np.log(np.maximum(oi, 0.0) + 1.0)
  feats = np.stack([
      _diff(log_c),
      np.log(h / l),
      np.log(c / o),
      log_v,
      _diff(log_v),
      _diff(log_oi),
  ], axis=1)
  return feats


def _diff(x):
  d = np.empty_like(x)
  d[0] = 0.0
  d[1:] = np.diff(x)
  return d


def fit_normalizer(features, rows):
  """Mean and std of each feature over the given rows (the training split's bars).

  Args:
    features: [n, F] features.
    rows: int indices (or boolean mask) of the rows to fit on.

  Returns:
    {"mean": [F] list, "std": [F] list, "feature_names": [...]} — JSON-ready, saved
    with every checkpoint so evaluation uses exactly these statistics.
  """
  x = features[rows]
  if len(x) == 0:
    raise ValueError("cannot fit the normaliser: the training split has no bars")
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > _EPS, std, 1.0)  # A constant feature stays 0 after centring.
  return {"mean": mean.tolist(), "std": std.tolist(),
          "feature_names": list(FEATURE_NAMES)}


def normalize(features, normalizer):
  """Applies a fitted normaliser; returns float32."""
  mean = np.asarray(normalizer["mean"], np.float64)
  std = np.asarray(normalizer["std"], np.float64)
  if features.shape[-1] != mean.shape[0]:
    raise ValueError(f"normaliser has {mean.shape[0]} features, data has "
                     f"{features.shape[-1]}")
  return ((features - mean) / std).astype(np.float32)
