"""Labels from forward returns and from triple-barrier exits.

Every label of the bar t reads bars t+1 .. t+horizon only (closes for the
forward return; highs, lows and the close at t+horizon for the triple barrier),
so a sample's footprint stays [t-T, t+horizon] whichever label kind is used and
`splits.window_ends` keeps the splits apart for all of them.
"""

import math
import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

LABEL_KINDS = ("binary", "three_class", "triple_barrier")
BARRIER_UNITS = ("return", "price", "ticks")

# Bars columns as in shards.BAR_COLUMNS: open, high, low, close, volume, open_interest.
_HIGH, _LOW, _CLOSE = 1, 2, 3

# A bar touches a barrier it reaches to within this much (relative to the barrier
# price; for units "ticks" also within _TICK_TOL of a tick). Barrier prices carry
# float rounding (1.1 + 3 * 0.1 = 1.4000000000000001 > 1.4, a few 1e-16 relative),
# so an exact comparison misses a bar that trades at the barrier; real ticks are
# far coarser (>= ~1e-8 of the price: 0.01 on 600,000), so no bar one tick short of
# the barrier is ever taken for a touch.
_REL_TOL = 1e-10
_TICK_TOL = 1e-6

# Rows of t per chunk of the triple-barrier scan: each chunk holds two [rows, horizon]
# boolean masks plus a few [rows] vectors, so memory stays ~ 2 * _CHUNK_ELEMENTS bytes.
_CHUNK_ELEMENTS = 1 << 22



def signal_class(num_classes):
  """The class a trader acts on, the one concept of "positive" everywhere: the
  highest class — 1 of two, "up" of down/flat/up, take-profit of stop/time/take."""
  return int(num_classes) - 1


def class_count(label_config):
  """How many classes the labels of `label_config` (keys as make_labels reads them) have:
  binary 2, three_class 3, triple_barrier 2 with barrier_binary (the default), else 3.
  Known before any data is read, so the config check can size per-class settings."""
  kind = _lookup(label_config, "kind")
  if kind == "three_class":
    return 3
  if kind == "triple_barrier":
    return 2 if _lookup(label_config, "barrier_binary") in (True, _MISSING) else 3
  return 2  # "binary", also when kind is absent.


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


def three_class_labels(fwd_return, threshold):
  """Down / flat / up classes of a forward return.

  Args:
    fwd_return: [n] forward returns (NaN where the future is unknown).
    threshold: >= 0; |r| <= threshold counts as flat (both ends inclusive).

  Returns:
    [n] int32: 0 = down (r < -threshold), 1 = flat, 2 = up (r > threshold),
    -1 where the forward return is NaN.
  """
  if not threshold >= 0:
    raise ValueError(f"threshold must be >= 0, got {threshold}")
  r = np.asarray(fwd_return, dtype=np.float64)
  out = np.ones(r.shape, np.int32)
  out[r < -threshold] = 0
  out[r > threshold] = 2
  out[np.isnan(r)] = -1
  return out


def _barriers(close, take_profit, stop_loss, units, tick_size):
  """Upper and lower barrier price of every bar (see triple_barrier_labels)."""
  if units == "return":
    return close * (1.0 + take_profit), close * (1.0 - stop_loss)
  if units == "price":
    return close + take_profit, close - stop_loss
  return close + take_profit * tick_size, close - stop_loss * tick_size  # "ticks"


def _touch_tolerance(barrier, units, tick_size):
  """How far short of `barrier` a high (or beyond it a low) still touches it."""
  tol = _REL_TOL * np.abs(barrier)
  if units == "ticks":
    tol = np.maximum(tol, _TICK_TOL * tick_size)
  return tol


def triple_barrier_labels(close, high, low, horizon, take_profit, stop_loss,
                          units="return", tick_size=None, binary=True):
  """Triple-barrier labels: which of take-profit, stop-loss or time limit comes first.

  For every bar t (entry at close_t) the bars t+1 .. t+horizon are walked in
  order. The upper barrier is touched at bar t+k when high_{t+k} >= upper_t,
  the lower one when low_{t+k} <= lower_t, both up to a rounding tolerance
  (1e-10 of the barrier price, and 1e-6 tick for units "ticks"), so that on a
  tick grid a bar that trades exactly at the barrier touches it:

    units "return": upper = close_t * (1 + take_profit), lower = close_t * (1 - stop_loss)
    units "price":  upper = close_t + take_profit,       lower = close_t - stop_loss
    units "ticks":  upper = close_t + take_profit * tick_size, lower = ... - stop_loss * tick_size

  The first touched barrier wins. When one bar touches both, the stop-loss wins:
  a one-minute bar does not say whether its high or its low came first, and
  assuming the loss is the conservative reading (a strategy cannot be flattered
  by it). If neither barrier is touched, the trade ends at the time limit,
  at close_{t+horizon}.

  Example, horizon 3, return units, take_profit = stop_loss = 0.01, close_t = 100:
  barriers 101 / 99; bars t+1..t+3 with (high, low) = (100.5, 99.5), (101.2, 98.7),
  (102, 100) → bar t+2 touches both → stop-loss, exit_offset 2, exit_return -0.01.

  Args:
    close, high, low: [n] prices of one instrument.
    horizon: maximum holding period in bars (>= 1).
    take_profit, stop_loss: barrier distances (> 0) in `units`.
    units: "return", "price" or "ticks".
    tick_size: price of one tick (> 0); required for units "ticks".
    binary: True → 1 = take-profit first, 0 = stop-loss first or time limit
      (the desk's "is this trade worth taking"); False → 3 classes:
      0 = stop-loss, 1 = time limit, 2 = take-profit.

  Returns:
    (labels [n] int32, exit_return [n] float64, exit_offset [n] int32).
    exit_return is the simple return from close_t to the exit price — the
    barrier level for a touched barrier (a bar that gaps through a barrier
    would really fill at its open: the barrier level is the idealised fill),
    close_{t+horizon} for the time limit. exit_offset is k of the exit bar
    t+k (1..horizon). The last `horizon` bars have no full horizon: label -1,
    exit_return NaN, exit_offset -1.
  """
  close = np.asarray(close, dtype=np.float64)
  high = np.asarray(high, dtype=np.float64)
  low = np.asarray(low, dtype=np.float64)
  if not (close.ndim == 1 and close.shape == high.shape == low.shape):
    raise ValueError(f"close, high and low must be 1-D of one length, got shapes "
                     f"{close.shape}, {high.shape}, {low.shape}")
  if not (isinstance(horizon, numbers.Integral) and not isinstance(horizon, bool)
          and horizon >= 1):
    raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
  if units not in BARRIER_UNITS:
    raise ValueError(f"units must be one of {BARRIER_UNITS}, got {units!r}")
  if not (take_profit > 0 and stop_loss > 0):
    raise ValueError(f"take_profit and stop_loss must be > 0, got {take_profit}, {stop_loss}")
  if units == "ticks" and not (tick_size is not None and tick_size > 0):
    raise ValueError(f"units='ticks' needs tick_size > 0, got {tick_size!r}")
  horizon = int(horizon)
  n = close.shape[0]
  labels = np.full(n, -1, np.int32)
  exit_return = np.full(n, np.nan)
  exit_offset = np.full(n, -1, np.int32)
  m = n - horizon  # Bars t = 0 .. m-1 have a full horizon t+1 .. t+horizon.
  if m <= 0:
    return labels, exit_return, exit_offset

  upper, lower = _barriers(close[:m], take_profit, stop_loss, units, tick_size)
  # Shift the compared levels by the tolerance; exits still fill at the barriers.
  upper_touch = upper - _touch_tolerance(upper, units, tick_size)
  lower_touch = lower + _touch_tolerance(lower, units, tick_size)
  # Row t of these views is bars t+1 .. t+horizon (views: nothing is copied).
  # E.g. horizon 3: fut_high[0] = high[1:4], fut_high[m-1] = high[m:m+3] = high[n-3:n].
  fut_high = sliding_window_view(high[1:], horizon)
  fut_low = sliding_window_view(low[1:], horizon)
  chunk = max(1, _CHUNK_ELEMENTS // horizon)
  no_touch = horizon + 1  # Sentinel offset index: "never touched" sorts after every bar.
  for a in range(0, m, chunk):
    b = min(a + chunk, m)
    hit_up = fut_high[a:b] >= upper_touch[a:b, None]
    hit_dn = fut_low[a:b] <= lower_touch[a:b, None]
    # argmax of a boolean row = first True; a row with no True gives 0, hence the any().
    k_up = np.where(hit_up.any(axis=1), hit_up.argmax(axis=1), no_touch)
    k_dn = np.where(hit_dn.any(axis=1), hit_dn.argmax(axis=1), no_touch)
    stop = (k_dn <= k_up) & (k_dn < no_touch)  # <=: same-bar double touch → stop-loss.
    take = (k_up < k_dn)
    t = np.arange(a, b)
    exit_price = np.where(stop, lower[a:b], np.where(take, upper[a:b], close[t + horizon]))
    exit_return[a:b] = exit_price / close[a:b] - 1.0
    exit_offset[a:b] = np.where(stop, k_dn + 1, np.where(take, k_up + 1, horizon))
    if binary:
      labels[a:b] = take
    else:
      labels[a:b] = np.where(stop, 0, np.where(take, 2, 1))
  return labels, exit_return, exit_offset


# ----------------------------------------------------------------------------
# Config dispatch
# ----------------------------------------------------------------------------

_MISSING = object()


def _lookup(cfg, key):
  if isinstance(cfg, dict):
    return cfg.get(key, _MISSING)
  try:
    return cfg[key]  # ConfigDict / mapping-like.
  except (KeyError, TypeError, AttributeError):
    return getattr(cfg, key, _MISSING)


def _number(cfg, key, prefix, default=_MISSING, positive=False, allow_zero=True):
  """A finite real number from cfg[key]; ValueError naming prefix.key otherwise."""
  v = _lookup(cfg, key)
  if v is _MISSING:
    if default is _MISSING:
      raise ValueError(f"{prefix}.{key} is required for {prefix}.kind="
                       f"{_lookup(cfg, 'kind')!r}")
    return default
  ok = (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v))
  if ok and positive:
    ok = v > 0 or (allow_zero and v == 0)
  if not ok:
    need = ("a finite number > 0" if positive and not allow_zero else
            "a finite number >= 0" if positive else "a finite number")
    raise ValueError(f"{prefix}.{key} must be {need}, got {v!r}")
  return float(v)


def make_labels(label_config, bars, prefix="config.data"):
  """Labels of one instrument's bars as the config asks.

  Keys read from `label_config` (a ConfigDict, dict or any object with those
  attributes; only the keys of the chosen kind are needed):
    kind: "binary" (default when absent), "three_class" or "triple_barrier".
    horizon: bars ahead (>= 1); all kinds.
    threshold: binary: r > threshold → 1; three_class: |r| <= threshold is
      flat (>= 0). `label_threshold` is read when `threshold` is absent, so
      today's config.data works as it is.
    take_profit, stop_loss (> 0), barrier_units ("return" | "price" | "ticks",
      default "return"), tick_size (> 0, units "ticks" only), barrier_binary
      (bool, default True): triple_barrier, see triple_barrier_labels.

  Args:
    label_config: the config holding the keys above.
    bars: [n, >=4] bars, columns open, high, low, close, ... (shards.BAR_COLUMNS).
    prefix: how errors name the config (e.g. "config.data" → "config.data.horizon").

  Returns:
    {"labels": [n] int32 (-1 where the horizon runs past the data),
     "fwd_return": [n] float64 plain forward return over `horizon` (for the
       regression head, whatever the label kind; NaN at the end),
     "num_classes": int}
    plus "exit_return" and "exit_offset" for triple_barrier.

  Raises:
    ValueError: a bad or missing key, named as f"{prefix}.<key>".
  """
  kind = _lookup(label_config, "kind")
  kind = "binary" if kind is _MISSING else kind
  if kind not in LABEL_KINDS:
    raise ValueError(f"{prefix}.kind must be one of {LABEL_KINDS}, got {kind!r}")
  horizon = _lookup(label_config, "horizon")
  if not (isinstance(horizon, numbers.Integral) and not isinstance(horizon, bool)
          and horizon >= 1):
    raise ValueError(f"{prefix}.horizon must be an integer >= 1, got "
                     f"{None if horizon is _MISSING else horizon!r}")
  bars = np.asarray(bars)
  if bars.ndim != 2 or bars.shape[1] < 4:
    raise ValueError(f"bars must be [n, >=4] (open, high, low, close, ...), got {bars.shape}")
  close = bars[:, _CLOSE].astype(np.float64)
  fwd = forward_return(close, int(horizon))
  out = {"fwd_return": fwd}

  if kind in ("binary", "three_class"):
    key = "threshold" if _lookup(label_config, "threshold") is not _MISSING else "label_threshold"
    if _lookup(label_config, key) is _MISSING:
      key = "threshold"  # Neither given: name the canonical key in the error.
    threshold = _number(label_config, key, prefix, positive=(kind == "three_class"))
    if kind == "binary":
      labels = np.where(np.isfinite(fwd), binary_labels(np.nan_to_num(fwd), threshold), -1)
      out.update(labels=labels.astype(np.int32), num_classes=2)
    else:
      out.update(labels=three_class_labels(fwd, threshold), num_classes=3)
    return out

  take_profit = _number(label_config, "take_profit", prefix, positive=True, allow_zero=False)
  stop_loss = _number(label_config, "stop_loss", prefix, positive=True, allow_zero=False)
  units = _lookup(label_config, "barrier_units")
  units = "return" if units is _MISSING else units
  if units not in BARRIER_UNITS:
    raise ValueError(f"{prefix}.barrier_units must be one of {BARRIER_UNITS}, got {units!r}")
  if units == "return" and stop_loss >= 1:
    raise ValueError(f"{prefix}.stop_loss must be < 1 with barrier_units='return' (a "
                     f"fraction of the entry price), got {stop_loss}")
  tick_size = None
  if units == "ticks":
    tick_size = _number(label_config, "tick_size", prefix, positive=True, allow_zero=False)
  barrier_binary = _lookup(label_config, "barrier_binary")
  barrier_binary = True if barrier_binary is _MISSING else barrier_binary
  if not isinstance(barrier_binary, (bool, np.bool_)):
    raise ValueError(f"{prefix}.barrier_binary must be True or False, got {barrier_binary!r}")
  labels, exit_return, exit_offset = triple_barrier_labels(
      close, bars[:, _HIGH], bars[:, _LOW], int(horizon), take_profit, stop_loss,
      units=units, tick_size=tick_size, binary=bool(barrier_binary))
  out.update(labels=labels, num_classes=2 if barrier_binary else 3,
             exit_return=exit_return, exit_offset=exit_offset)
  return out
