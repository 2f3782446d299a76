"""Per-bar features: a registry of causal features, and their normalisation.

`config.data.features` names the columns, comma-separated; presets and names mix
and `name:N` sets a parameter: "default" (today's six, FEATURE_NAMES), "original"
(the original's 10 channels, PRESETS), "default,realized_vol:60,oi_level", or
"mypkg.feats.spread:5" (a function of your own by dotted path; register_feature
adds one by name from a config file). A feature maps one instrument's bars [n, 6]
and timestamps [n] (int64 ns, exchange-local as stored) to a column [n] whose
value at bar t reads only bars <= t (tests/test_features.py proves it for each).
Sessions: the first bar opens one, and so does every bar more than G minutes
after its predecessor (G: the session features' parameter, default 30).
docs/ingest.md lists every feature.

The spec's lesson: scale each feature by statistics of the whole training split,
never by per-window min/max, which erases the level information a model needs.
"""

import dataclasses
import importlib

import numpy as np

FEATURE_NAMES = (
    "log_return",     # log(close_t / close_{t-1})
    "log_range",      # log(high_t / low_t)
    "log_body",       # log(close_t / open_t)
    "log_volume",     # log(1 + volume_t)
    "volume_change",  # log(1 + volume_t) - log(1 + volume_{t-1})
    "oi_change",      # log(1 + open_interest_t) - log(1 + open_interest_{t-1})
)

_EPS = 1e-12
_MINUTE_NS = 60_000_000_000
_DAY_NS = 1440 * _MINUTE_NS
# A rolling variance below this (log-volume units squared) is a constant volume:
# its z-score is 0, not the rounding noise of the running sums.
_MIN_VAR = 1e-8


@dataclasses.dataclass(frozen=True)
class _Feature:
  fn: object            # fn(bars, timestamps[, param]) -> [n].
  default: int = None   # The parameter when none is given; None: takes no parameter.
  minimum: int = 1      # Smallest valid parameter.
  builtin: bool = False


_REGISTRY = {}


def register_feature(name, fn, default=None, minimum=1):
  """Adds a feature that `config.data.features` can name (e.g. from a config file).

  Args:
    name: identifier ("spread"); with a parameter it is used as "spread:5".
    fn: fn(bars [n, 6] float64, timestamps [n] int64 ns) -> [n], or with a
      parameter fn(bars, timestamps, param: int). The value at bar t must read
      only bars <= t.
    default: the parameter when the name comes without one; None: the feature
      takes no parameter.
    minimum: the smallest valid parameter.

  Raises:
    ValueError: a bad name, or the name of a built-in feature.
  """
  if not name.isidentifier():
    raise ValueError(f"feature name {name!r} must be an identifier (letters, digits, _)")
  if name in PRESETS or (name in _REGISTRY and _REGISTRY[name].builtin):
    raise ValueError(f"feature name {name!r} is built in; choose another name")
  _REGISTRY[name] = _Feature(fn, default, minimum)


def _builtin(name, default=None, minimum=1):
  def add(fn):
    _REGISTRY[name] = _Feature(fn, default, minimum, builtin=True)
    return fn
  return add


def _diff(x):
  d = np.empty_like(x)
  d[:1] = 0.0
  np.subtract(x[1:], x[:-1], out=d[1:])
  return d


def _rolling_mean(x, n):
  """Mean of x over bars t-n+1 .. t (fewer at the start), from running sums; x is
  overwritten (in-place steps: one instrument's temporaries stay small)."""
  c = np.cumsum(x, out=x)
  out = c.copy()
  out[n:] -= c[:-n]
  out[:n] /= np.arange(1, min(n, len(out)) + 1)
  out[n:] /= n
  return out


def _log_volume(bars):
  return np.log1p(np.maximum(bars[:, 4], 0.0))


def _log_oi(bars):
  # Open interest can legitimately be 0 for some contracts (or be absent in a CSV).
  return np.log(np.maximum(bars[:, 5], 0.0) + 1.0)


def session_open_rows(timestamps, gap_minutes):
  """Per bar, the row of the first bar of its session.

  Args:
    timestamps: [n] int64 ns, increasing.
    gap_minutes: a bar more than this many minutes after its predecessor opens a session.

  Returns:
    [n] int64.
  """
  n = len(timestamps)
  opens = np.zeros(n, bool)
  if n:
    opens[0] = True
    opens[1:] = np.diff(timestamps) > gap_minutes * _MINUTE_NS
  return np.maximum.accumulate(np.where(opens, np.arange(n), 0))


# Row 0 has no predecessor, so change features are 0 there; windows never start
# there (see splits.window_ends).
@_builtin("log_return")
def _log_return(bars, timestamps):
  return _diff(np.log(bars[:, 3]))


@_builtin("log_range")
def _log_range(bars, timestamps):
  return np.log(bars[:, 1] / bars[:, 2])


@_builtin("log_body")
def _log_body(bars, timestamps):
  return np.log(bars[:, 3] / bars[:, 0])


@_builtin("log_volume")
def _log_volume_feature(bars, timestamps):
  return _log_volume(bars)


@_builtin("volume_change")
def _volume_change(bars, timestamps):
  return _diff(_log_volume(bars))


@_builtin("oi_change")
def _oi_change(bars, timestamps):
  return _diff(_log_oi(bars))


@_builtin("oi_level")
def _oi_level(bars, timestamps):
  """log(1 + open interest_t)."""
  return _log_oi(bars)


@_builtin("realized_vol", default=30, minimum=2)
def _realized_vol(bars, timestamps, n):
  """Root mean square of the last n log returns (those available near the start)."""
  r2 = _diff(np.log(bars[:, 3]))
  np.square(r2, out=r2)
  out = _rolling_mean(r2, n)
  np.maximum(out, 0.0, out=out)  # Running-sum rounding can dip below 0.
  return np.sqrt(out, out=out)


@_builtin("volume_zscore", default=30, minimum=2)
def _volume_zscore(bars, timestamps, n):
  """(log(1 + volume_t) - mean) / std over the last n bars, t included; 0 where the
  volume is constant over them (or only bar 0 is there)."""
  x = _log_volume(bars)
  x -= x[0] if len(x) else 0.0  # Centred on a past value: smaller running sums.
  mean = _rolling_mean(x.copy(), n)
  var = _rolling_mean(np.square(x), n)
  var -= np.square(mean)
  flat = var <= _MIN_VAR
  var[flat] = 1.0
  x -= mean
  x /= np.sqrt(var, out=var)
  x[flat] = 0.0
  return x


@_builtin("time_of_day")
def _time_of_day(bars, timestamps):
  """Share of the day elapsed at the bar's timestamp, in [0, 1)."""
  return (np.asarray(timestamps, np.int64) % _DAY_NS) / _DAY_NS


@_builtin("session_elapsed", default=30, minimum=1)
def _session_elapsed(bars, timestamps, gap):
  """Minutes since the first bar of the session (sessions: gaps > `gap` minutes)."""
  ts = np.asarray(timestamps, np.int64)
  return (ts - ts[session_open_rows(ts, gap)]) / _MINUTE_NS


@_builtin("session_open_distance", default=30, minimum=1)
def _session_open_distance(bars, timestamps, gap):
  """log(close_t / open of the session's first bar)."""
  return np.log(bars[:, 3] / bars[session_open_rows(timestamps, gap), 0])


# The original system's layout is "10 feature channels (price, volume, open
# interest, volatility ...)" (SPEC.md names no more); assumed: four of price,
# three of volume, two of open interest, one of volatility.
PRESETS = {
    "default": FEATURE_NAMES,
    "original": FEATURE_NAMES + ("realized_vol:30", "volume_zscore:30", "oi_level",
                                 "session_open_distance:30"),
}


def _known():
  return (f"presets {sorted(PRESETS)}; features {sorted(_REGISTRY)}; or a function of "
          "your own as module.function (or registered with features.register_feature)")


def _lookup(name, item, spec):
  where = f"config.data.features={spec!r}"
  if name in _REGISTRY:
    return _REGISTRY[name]
  if "." not in name:
    raise ValueError(f"{where}: unknown feature {item!r} (known: {_known()})")
  module, _, attr = name.rpartition(".")
  try:
    fn = getattr(importlib.import_module(module), attr)
  except (ImportError, SyntaxError) as e:
    raise ValueError(f"{where}: cannot import {module!r} for feature {item!r} ({e})") from None
  except AttributeError:
    raise ValueError(f"{where}: module {module!r} has no {attr!r} (feature {item!r})") from None
  if not callable(fn):
    raise ValueError(f"{where}: {name!r} is not a function (feature {item!r})")
  return _Feature(fn, None, 1)


def resolve_features(spec):
  """The columns `spec` names, checked, with their parameters filled in.

  Args:
    spec: config.data.features ("default", "original,time_of_day", ...).

  Returns:
    [(name, fn, param or None)], name as "realized_vol:30" (the parameter written out).

  Raises:
    ValueError: one line naming the item of config.data.features that is wrong.
  """
  where = f"config.data.features={spec!r}"
  items = [s.strip() for s in str(spec).split(",")]
  if not any(items):
    raise ValueError(f"{where}: name at least one feature or preset ({_known()})")
  out = []
  for item in items:
    if not item:
      raise ValueError(f"{where}: an empty name between commas")
    if item in PRESETS:
      out += resolve_features(",".join(PRESETS[item]))
      continue
    name, sep, arg = item.partition(":")
    feature = _lookup(name, item, spec)
    param = feature.default
    if sep:
      if feature.default is None and name in _REGISTRY:
        raise ValueError(f"{where}: feature {name!r} takes no parameter (got {item!r})")
      try:
        param = int(arg)
      except ValueError:
        param = None
      if param is None or param < feature.minimum:
        raise ValueError(f"{where}: in {item!r} the parameter must be an integer >= "
                         f"{feature.minimum}")
    out.append((name if param is None else f"{name}:{param}", feature.fn, param))
  names = [n for n, _, _ in out]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"{where}: {twice[0]!r} is named twice (each column once)")
  return out


def feature_names(spec):
  """Column names of `spec` (resolve_features), in order."""
  return tuple(n for n, _, _ in resolve_features(spec))


def compute_features(bars, timestamps, spec="default"):
  """The `spec` columns of every bar of one instrument.

  Args:
    bars: [n, 6] float64 columns open, high, low, close, volume, open_interest.
    timestamps: [n] int64 ns.
    spec: config.data.features.

  Returns:
    [n, F] float64; "default" gives exactly bar_features(bars).

  Raises:
    ValueError: a feature gives the wrong shape or a non-finite value (naming it and the bar).
  """
  cols = resolve_features(spec)
  out = np.empty((len(bars), len(cols)), np.float64)
  for j, col in enumerate(feature_columns(bars, timestamps, cols)):
    out[:, j] = col
  return out


def feature_columns(bars, timestamps, spec="default"):
  """compute_features one column at a time.

  Args:
    bars, timestamps: as for compute_features.
    spec: config.data.features, or resolve_features' list of it.

  Returns:
    An iterator of [n] float64 columns, checked like compute_features'.
  """
  bars = np.asarray(bars, np.float64)
  for name, fn, param in resolve_features(spec) if isinstance(spec, str) else spec:
    col = np.asarray(fn(bars, timestamps) if param is None else fn(bars, timestamps, param),
                     np.float64)
    if col.shape != (len(bars),):
      raise ValueError(f"feature {name!r} returned shape {col.shape}, expected "
                       f"({len(bars)},): one value per bar")
    bad = ~np.isfinite(col)
    if bad.any():
      raise ValueError(f"feature {name!r} is not finite at bar {int(np.argmax(bad))} "
                       f"({int(bad.sum())} bars in all)")
    yield col


def bar_features(bars):
  """The six default features (FEATURE_NAMES) of every bar of one instrument.

  Args:
    bars: [n, 6] float64 columns open, high, low, close, volume, open_interest.

  Returns:
    [n, len(FEATURE_NAMES)] float64. Row 0 has no predecessor, so its change
    features are 0; windows never start there (see splits.window_ends).
  """
  return np.stack([_REGISTRY[n].fn(bars, None) for n in FEATURE_NAMES], axis=1)


def fit_normalizer(features, rows, names=None):
  """Mean and std of each feature over the given rows (the training split's bars).

  Args:
    features: [n, F] features.
    rows: int indices (or boolean mask) of the rows to fit on.
    names: the F column names (feature_names); None: FEATURE_NAMES.

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
          "feature_names": list(FEATURE_NAMES if names is None else names)}


def check_normalizer(normalizer, spec):
  """Refuses a saved normaliser fitted on other features than `spec`.

  Args:
    normalizer: a checkpoint's normaliser (its "feature_names", when it has them).
    spec: config.data.features.

  Raises:
    ValueError: the names differ.
  """
  names = list(feature_names(spec))
  saved = normalizer.get("feature_names")
  if saved and list(saved) != names:
    raise ValueError(f"the normaliser was fitted on features {list(saved)}, but "
                     f"config.data.features gives {names}: use the run's data.features")


def train_moments(features):
  """The moments pooled_normalizer combines, of one part's rows (no pooled copy).

  Args:
    features: [n, F] float64 features.

  Returns:
    (n, mean [F], sum of squared deviations from the mean [F]).
  """
  x = np.asarray(features)
  if len(x) == 0:
    return 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
  mean = x.mean(axis=0)
  d = x - mean
  np.square(d, out=d)  # In place: one temporary of the rows, not two.
  return len(x), mean, d.sum(axis=0)


def pooled_normalizer(moments, names=None):
  """fit_normalizer over the union of the rows whose train_moments are given.

  One part gives exactly fit_normalizer's statistics (the same operations);
  several are combined pairwise (Chan, Golub and LeVeque), equal to numpy's
  pooled mean and std to rounding (~1e-16 relative).

  Args:
    moments: [train_moments(rows_i)] of each part.
    names: the F column names; None: FEATURE_NAMES.

  Returns:
    A normaliser like fit_normalizer's.
  """
  count, mean, m2 = 0, None, None
  for n, mu, s2 in moments:
    if n == 0:
      continue
    if count == 0:
      count, mean, m2 = n, mu, s2
      continue
    delta, total = mu - mean, count + n
    mean = mean + delta * (n / total)
    m2 = m2 + s2 + np.square(delta) * (count * n / total)
    count = total
  if count == 0:
    raise ValueError("cannot fit the normaliser: the training split has no bars")
  std = np.sqrt(m2 / count)
  std = np.where(std > _EPS, std, 1.0)  # A constant feature stays 0 after centring.
  return {"mean": mean.tolist(), "std": std.tolist(),
          "feature_names": list(FEATURE_NAMES if names is None else names)}


def normalize(features, normalizer):
  """Applies a fitted normaliser; returns float32."""
  mean = np.asarray(normalizer["mean"], np.float64)
  std = np.asarray(normalizer["std"], np.float64)
  if features.shape[-1] != mean.shape[0]:
    raise ValueError(f"normaliser has {mean.shape[0]} features, data has "
                     f"{features.shape[-1]}")
  return ((features - mean) / std).astype(np.float32)
