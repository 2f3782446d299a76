"""Classification losses for imbalanced labels: focal, (weighted) CE, soft-F1, Dice, composite.

Targets are SOFT: `targets [B, K]` class probabilities (one-hot, label-smoothed or
mixup-mixed one-hot). Two kinds of loss:

- Per-example (`cross_entropy`, `focal_loss`): written for ONE example
  (`logits [K]`, `target [K]`) and lifted to a batch with `jax.vmap`, so a mask
  (padding rows) is applied outside as a masked mean.
- Batch-level (`soft_f1_loss`, `soft_f1_multiclass`, `dice_loss`): sums over the
  batch before a ratio, so they take the whole batch and the mask directly.

`make_loss_fn` selects and combines them from `config.loss`:

    loss(logits [B, K], targets [B, K], mask [B], progress) -> (scalar, components)

where `progress` ∈ [0, 1] is the fraction of training done (drives the composite
schedule). Label smoothing (`loss.label_smoothing`) is applied INSIDE the loss
function, to the likelihood terms (CE, focal) only: the caller passes unsmoothed
targets (one-hot, or mixup-mixed one-hot).
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import config_defaults
from jaxquant.data import labels as labels_lib

LOSS_NAMES = ("focal", "ce", "soft_f1", "dice", "composite")
COMPOSITE_SCHEDULES = ("fixed", "progressive", "linear")
NAMED_ALPHAS = ("inverse_frequency", "profit_loss", "none")

# config.loss's defaults (their owner is config_defaults); used only for a key that an
# older or hand-built loss config lacks.
LOSS_DEFAULTS = config_defaults.get_config().loss.to_dict()

# Added to the soft-F1 denominator so an empty batch gives F1 = 0, not 0/0.
F1_EPS = 1e-7


# --------------------------------------------------------------------------- per example


def cross_entropy(logits, target, class_weights):
  """Weighted cross-entropy of one example with a soft target: -Σ_c w_c t_c log p_c.

  For a one-hot target this is -w_y log p_y (PyTorch's per-example
  `cross_entropy(weight=w, reduction="none")`); for a label-smoothed target it
  equals PyTorch's `label_smoothing` per-example value.

  Args:
    logits: [K] class logits (any float dtype; computed in float32).
    target: [K] class probabilities.
    class_weights: [K] per-class weights w_c (ones for plain CE).

  Returns:
    Scalar loss.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.sum(class_weights * target.astype(jnp.float32) * log_p)


def focal_loss(logits, target, alpha, gamma):
  """Focal loss of one example with a soft target: -Σ_c alpha_c t_c (1 - p_c)^gamma log p_c.

  For a one-hot target this is the textbook -alpha_y (1 - p_y)^gamma log p_y
  (binary or multi-class); gamma = 0 gives `cross_entropy` with weights alpha.

  Args:
    logits: [K] class logits (any float dtype; computed in float32).
    target: [K] class probabilities.
    alpha: [K] per-class weights.
    gamma: focusing exponent >= 0.

  Returns:
    Scalar loss.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  # 1 - p from log p without cancellation; floored so that (1 - p)^gamma keeps a
  # finite gradient for gamma < 1 when p rounds to 1 (the term is ~0 there anyway).
  one_minus_p = jnp.maximum(-jnp.expm1(log_p), 1e-30)
  return -jnp.sum(alpha * target.astype(jnp.float32) * one_minus_p ** gamma * log_p)


# --------------------------------------------------------------------------- batch level


def _zero_padding(p, y, m):
  # Zero padding rows before they are weighted by the mask: 0 · NaN would still be NaN.
  keep = m > 0
  return (jnp.where(keep, p.astype(jnp.float32), 0.0),
          jnp.where(keep, y.astype(jnp.float32), 0.0))


def _f1_from_sums(tp, fp, fn):
  # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall.
  return 2.0 * tp / (2.0 * tp + fp + fn + F1_EPS)


def soft_f1_loss(probs_pos, targets_pos, mask):
  """1 − soft F1 of the positive class over the batch (batch-level: not per example).

  TP = Σ m·p·y, FP = Σ m·p·(1−y), FN = Σ m·(1−p)·y with probabilities p instead
  of hard predictions, and F1 = 2TP / (2TP + FP + FN + eps). A batch without
  positives has TP = FN = 0, so F1 = 0 whatever p is: it gives no gradient
  (the composite's cross-entropy term still does).

  Args:
    probs_pos: [B] predicted probability of the positive class.
    targets_pos: [B] target probability of the positive class (soft labels allowed).
    mask: [B] 1 for real rows, 0 for padding.

  Returns:
    Scalar loss in [0, 1].
  """
  m = mask.astype(jnp.float32)
  p, y = _zero_padding(probs_pos, targets_pos, m)
  tp = jnp.sum(m * p * y)
  fp = jnp.sum(m * p * (1.0 - y))
  fn = jnp.sum(m * (1.0 - p) * y)
  return 1.0 - _f1_from_sums(tp, fp, fn)


def soft_f1_multiclass(probs, targets, mask):
  """1 − macro soft F1: the mean over classes of each class's one-vs-rest soft F1.

  Batch-level (not per example). Each class c uses `soft_f1_loss`'s sums with
  p = probs[:, c], y = targets[:, c].

  Args:
    probs: [B, K] predicted class probabilities.
    targets: [B, K] target class probabilities.
    mask: [B] 1 for real rows, 0 for padding.

  Returns:
    Scalar loss in [0, 1].
  """
  m = mask.astype(jnp.float32)[:, None]
  p, y = _zero_padding(probs, targets, m)
  tp = jnp.sum(m * p * y, axis=0)
  fp = jnp.sum(m * p * (1.0 - y), axis=0)
  fn = jnp.sum(m * (1.0 - p) * y, axis=0)
  return 1.0 - jnp.mean(_f1_from_sums(tp, fp, fn))


def dice_loss(probs, targets, mask, smooth=1.0):
  """Dice loss 1 − (2·Σ y·p + s) / (Σ y² + Σ p² + s) over the batch (batch-level).

  On the positive class: `probs`/`targets` of shape [B] (positive-class
  probabilities) or [B, 2] (column 1 is used). For [B, K] with K > 2, the macro
  average over classes of each class's Dice loss.

  Args:
    probs: [B] or [B, K] predicted probabilities.
    targets: same shape, target probabilities.
    mask: [B] 1 for real rows, 0 for padding.
    smooth: s, keeps the ratio defined (and = 1) on a batch without positives.

  Returns:
    Scalar loss.
  """
  probs = probs.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  if probs.ndim == 2 and probs.shape[1] == 2:
    signal = labels_lib.signal_class(2)
    probs, targets = probs[:, signal], targets[:, signal]
  m = mask.astype(jnp.float32)
  if probs.ndim == 2:
    m = m[:, None]
  p, y = _zero_padding(probs, targets, m)
  num = 2.0 * jnp.sum(m * y * p, axis=0) + smooth
  den = jnp.sum(m * y * y, axis=0) + jnp.sum(m * p * p, axis=0) + smooth
  return 1.0 - jnp.mean(num / den)


# --------------------------------------------------------------------------- targets, schedules


def label_smoothing(onehot, eps):
  """(1 − eps)·onehot + eps/K: PyTorch's `label_smoothing` target.

  Args:
    onehot: [..., K] targets (one-hot or already soft: it is linear).
    eps: smoothing in [0, 1).

  Returns:
    Targets of the same shape, float32.
  """
  onehot = jnp.asarray(onehot, jnp.float32)
  return (1.0 - eps) * onehot + eps / onehot.shape[-1]


def composite_alpha(schedule, progress, fixed=0.5, start=0.3, end=1.0):
  """The soft-F1 share alpha of the composite loss at a point of training.

  Args:
    schedule: "fixed" → `fixed`; "progressive" → the original's steps: 0.3 for
      progress < 0.3, 0.5 for progress < 0.8, then 0.7; "linear" →
      start + (end − start)·progress.
    progress: fraction of training done, in [0, 1]; a (traced) jnp scalar.
    fixed, start, end: see `schedule`.

  Returns:
    float32 jnp scalar.
  """
  progress = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if schedule == "fixed":
    return jnp.full_like(progress, fixed)
  if schedule == "progressive":
    return jnp.where(progress < 0.3, 0.3, jnp.where(progress < 0.8, 0.5, 0.7)).astype(jnp.float32)
  if schedule == "linear":
    return start + (end - start) * progress
  raise ValueError(f"config.loss.composite_schedule={schedule!r} is invalid: "
                   f"use one of {COMPOSITE_SCHEDULES}")


# --------------------------------------------------------------------------- class weights


def inverse_frequency_weights(labels, num_classes):
  """w_c = N / (K · n_c): the original's class weights (0.54 / 6.95 at 6.7 % positives).

  A class absent from the data gets weight 1 (it contributes no terms anyway).
  """
  counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
  n = counts.sum()
  w = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 1.0)
  return w.astype(np.float32)


def profit_loss_weights(labels, fwd_returns):
  """[1, R] with R = the mean win over the mean loss (binary labels only).

  R = mean(r | label 1, r > 0) / mean(|r| | label 0, r <= 0): the average forward
  return of the positive samples (all of them when the label threshold is >= 0)
  over the average size of the losing (non-positive) returns among the negatives.
  Non-finite returns are ignored.

  Args:
    labels: [N] int labels in {0, 1}.
    fwd_returns: [N] forward returns.

  Returns:
    float32 [2].

  Raises:
    ValueError (naming config.loss.alpha) when R is undefined: no positive
    class-1 return, no non-positive class-0 return, or they average to 0.
  """
  labels = np.asarray(labels)
  r = np.asarray(fwd_returns, np.float64)
  ok = np.isfinite(r)
  wins = r[ok & (labels == 1) & (r > 0)]
  losses_ = -r[ok & (labels == 0) & (r <= 0)]
  why = None
  if wins.size == 0:
    why = "no class-1 sample has a positive forward return"
  elif losses_.size == 0 or losses_.mean() <= 0:
    why = "no class-0 sample has a negative forward return"
  if why:
    raise ValueError(f"config.loss.alpha='profit_loss' is invalid: the profit/loss ratio is "
                     f"undefined on this training split ({why}); use 'inverse_frequency' "
                     "or explicit weights")
  return np.array([1.0, wins.mean() / losses_.mean()], np.float32)


def _explicit_alpha(alpha):
  """Explicit weights from a list/tuple or a "1.0,14.6" string (a config-override form);
  None for anything else."""
  if isinstance(alpha, str):
    text = alpha.strip().strip("[]()")
    try:
      return [float(v) for v in text.split(",")] if text else None
    except ValueError:
      return None
  if isinstance(alpha, (list, tuple, np.ndarray)):
    try:
      return [float(v) for v in alpha]
    except (TypeError, ValueError):
      return None
  return None


def class_weights(loss_config, labels, fwd_returns, num_classes):
  """Per-class weights for the CE/focal terms, from `loss_config.alpha`.

  Args:
    loss_config: config.loss; `alpha` is "inverse_frequency" (N / (K·n_c)),
      "profit_loss" (binary: [1, mean win / mean loss], see `profit_loss_weights`),
      "none" (ones), or K explicit floats (a list/tuple, or a string "1.0,14.6"
      — ConfigDict keeps the type of a field, so a str default can only be
      overridden by a str).
    labels: [N] int training labels.
    fwd_returns: [N] training forward returns (used by "profit_loss" only).
    num_classes: K.

  Returns:
    np.ndarray [K] float32.
  """
  alpha = _get(loss_config, "alpha")
  _check_alpha(alpha, num_classes)
  if alpha == "inverse_frequency":
    return inverse_frequency_weights(labels, num_classes)
  if alpha == "profit_loss":
    return profit_loss_weights(labels, fwd_returns)
  if alpha == "none":
    return np.ones(num_classes, np.float32)
  return np.asarray(_explicit_alpha(alpha), np.float32)


def _get(loss_config, key):
  return loss_config.get(key, LOSS_DEFAULTS[key]) if key in LOSS_DEFAULTS else loss_config[key]


def _invalid(key, value, why):
  return ValueError(f"config.loss.{key}={value!r} is invalid: {why}")


def _check_alpha(alpha, num_classes):
  if isinstance(alpha, str) and alpha in NAMED_ALPHAS:
    if alpha == "profit_loss" and num_classes != 2:
      raise _invalid("alpha", alpha, f"'profit_loss' needs binary labels, not {num_classes} classes")
    return
  values = _explicit_alpha(alpha)
  if values is None:
    raise _invalid("alpha", alpha, f"use one of {NAMED_ALPHAS} or {num_classes} floats")
  if len(values) != num_classes:
    raise _invalid("alpha", alpha, f"needs {num_classes} weights (one per class), got {len(values)}")
  if not all(np.isfinite(v) and v >= 0 for v in values) or not any(v > 0 for v in values):
    raise _invalid("alpha", alpha, "weights must be finite, >= 0 and not all 0")


def validate_loss_config(loss_config, num_classes):
  """Raises ValueError("config.loss.<key>=... is invalid: ...") for an impossible value.

  Args:
    loss_config: config.loss (missing keys take `LOSS_DEFAULTS`).
    num_classes: K.
  """
  name = _get(loss_config, "name")
  if name not in LOSS_NAMES:
    raise _invalid("name", name, f"use one of {LOSS_NAMES}")
  gamma = _get(loss_config, "gamma")
  if not (isinstance(gamma, numbers.Real) and np.isfinite(gamma) and gamma >= 0):
    raise _invalid("gamma", gamma, "must be a number >= 0")
  _check_alpha(_get(loss_config, "alpha"), num_classes)
  eps = _get(loss_config, "label_smoothing")
  if not (isinstance(eps, numbers.Real) and 0 <= eps < 1):
    raise _invalid("label_smoothing", eps, "must be in [0, 1)")
  schedule = _get(loss_config, "composite_schedule")
  if schedule not in COMPOSITE_SCHEDULES:
    raise _invalid("composite_schedule", schedule, f"use one of {COMPOSITE_SCHEDULES}")
  for key in ("composite_alpha", "composite_start", "composite_end"):
    v = _get(loss_config, key)
    if not (isinstance(v, numbers.Real) and 0 <= v <= 1):
      raise _invalid(key, v, "must be in [0, 1] (the soft-F1 share of the composite loss)")
  if "return_weight" in loss_config and not loss_config.return_weight >= 0:
    raise _invalid("return_weight", loss_config.return_weight, "must be >= 0")


# --------------------------------------------------------------------------- the loss


def _masked_mean(values, mask):
  mask = mask.astype(jnp.float32)
  # where, not values * mask: a NaN/inf in a padding row must not leak in.
  return jnp.sum(jnp.where(mask > 0, values, 0.0) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_traced_loss_fn(loss_config, num_classes):
  """The classification loss of `config.loss` with its numbers as an argument.

  Returns:
    `loss(logits, targets, mask, progress, hp)`: make_loss_fn's, with `hp`'s "alpha" [K],
    "gamma", "label_smoothing", "composite_alpha" constants (one run) or traced arrays
    (one compiled loss for a population's members, member_step.py).
  """
  validate_loss_config(loss_config, num_classes)
  name, schedule = _get(loss_config, "name"), _get(loss_config, "composite_schedule")
  a_start, a_end = (float(_get(loss_config, k)) for k in ("composite_start", "composite_end"))
  per_example_focal = jax.vmap(focal_loss, in_axes=(0, 0, None, None))
  per_example_ce = jax.vmap(cross_entropy, in_axes=(0, 0, None))
  signal = labels_lib.signal_class(num_classes)

  def soft_f1(probs, targets, mask):
    if num_classes == 2:
      return soft_f1_loss(probs[:, signal], targets[:, signal], mask)
    return soft_f1_multiclass(probs, targets, mask)

  def loss(logits, targets, mask, progress, hp):
    logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
    smoothed = label_smoothing(targets, hp["label_smoothing"])
    if name == "focal":
      value = _masked_mean(per_example_focal(logits, smoothed, hp["alpha"], hp["gamma"]), mask)
      return value, {"focal": value}
    if name == "ce":
      value = _masked_mean(per_example_ce(logits, smoothed, hp["alpha"]), mask)
      return value, {"ce": value}
    probs = jax.nn.softmax(logits, axis=-1)
    if name == "soft_f1":
      value = soft_f1(probs, targets, mask)
      return value, {"soft_f1": value}
    if name == "dice":
      value = dice_loss(probs, targets, mask)
      return value, {"dice": value}
    a = composite_alpha(schedule, progress, hp["composite_alpha"], a_start, a_end)
    f1_part = soft_f1(probs, targets, mask)
    ce_part = _masked_mean(per_example_ce(logits, smoothed, hp["alpha"]), mask)
    value = a * f1_part + (1.0 - a) * ce_part
    return value, {"soft_f1": f1_part, "ce": ce_part, "composite_alpha": a}

  return loss


def make_loss_fn(loss_config, alpha):
  """Builds the classification loss of `config.loss` (make_traced_loss_fn, its numbers fixed).

  Args:
    loss_config: config.loss. `name`: "focal" (focal loss with `gamma` and class
      weights alpha), "ce" (cross-entropy weighted by alpha), "soft_f1", "dice",
      or "composite" (a·softF1 + (1 − a)·weighted CE, a from `composite_schedule`
      with `composite_alpha` / `composite_start` / `composite_end`).
      `label_smoothing` smooths the targets of the CE/focal terms.
    alpha: [K] class weights (fixed for the run, from `class_weights` on the
      training split); K is the number of classes.

  Returns:
    `loss(logits [B, K], targets [B, K], mask [B], progress) -> (scalar, components)`:
    targets are unsmoothed soft targets (int labels [B] are one-hot encoded);
    per-example terms are masked means (padding rows, mask 0, excluded);
    `progress` is the fraction of training done (a jnp scalar in [0, 1]); `components`
    maps each part's name ("focal", "ce", "soft_f1", "dice") to its value, plus
    "composite_alpha" for the composite.
  """
  alpha = jnp.asarray(alpha, jnp.float32)
  num_classes = int(alpha.shape[0])
  hp = {"alpha": alpha, **{k: float(_get(loss_config, k)) for k in
                           ("gamma", "label_smoothing", "composite_alpha")}}
  traced = make_traced_loss_fn(loss_config, num_classes)

  def loss(logits, targets, mask, progress):
    if targets.ndim == logits.ndim - 1:  # Int labels [B]: one-hot.
      targets = jax.nn.one_hot(targets, num_classes)
    return traced(logits, targets, mask, progress, hp)

  return loss
