"""Losses, class weights, schedules, mixup and loss recipes, checked against the
formulas computed another way: numpy (closed forms) and a PyTorch twin (values and
gradients by autograd)."""

import functools
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxquant import losses
from jaxquant import mixup as mixup_lib

RTOL, ATOL = 2e-4, 2e-6  # jax in float32 against float64 references.


def _cfg(**overrides):
  return ml_collections.ConfigDict({**losses.LOSS_DEFAULTS, "return_weight": 0.0, **overrides})


def _data(k, soft, b=16, seed=0):
  """logits [b, k] float32, int labels [b] (every class present), targets [b, k]."""
  rng = np.random.default_rng(seed + 10 * k + int(soft))
  logits = (rng.normal(size=(b, k)) * 2).astype(np.float32)
  labels = rng.integers(0, k, b)
  labels[:k] = np.arange(k)
  targets = rng.dirichlet(np.ones(k), b) if soft else np.eye(k)[labels]
  return logits, labels, targets.astype(np.float32)


def _weights(k):
  return np.array([0.6, 4.0, 1.7][:k], np.float32)


# ---------------------------------------------------------------- numpy formulas


def _np_log_softmax(logits):
  z = logits.astype(np.float64)
  z = z - z.max(1, keepdims=True)
  return z - np.log(np.exp(z).sum(1, keepdims=True))


def _np_focal(logits, targets, alpha, gamma):
  log_p = _np_log_softmax(logits)
  return -(alpha * targets * (1 - np.exp(log_p)) ** gamma * log_p).sum(1)


def _np_soft_f1_loss(p, y, m):
  # Through precision and recall (the composite uses 2TP / (2TP + FP + FN)).
  tp, fp, fn = (m * p * y).sum(0), (m * p * (1 - y)).sum(0), (m * (1 - p) * y).sum(0)
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  return 1 - np.mean(2 * precision * recall / (precision + recall))


def _np_dice_loss(p, y, m, s=1.0):
  per_class = [(2 * (m * y[:, c] * p[:, c]).sum() + s)
               / ((m * y[:, c] ** 2).sum() + (m * p[:, c] ** 2).sum() + s)
               for c in range(p.shape[1])]
  return 1 - np.mean(per_class)


def _np_batch_loss(name, logits, targets, mask):
  """soft-F1 / Dice on the positive class (K = 2) or macro over classes (K > 2)."""
  p = np.exp(_np_log_softmax(logits))
  y = targets.astype(np.float64)
  if p.shape[1] == 2:
    p, y = p[:, 1:], y[:, 1:]
  fn = _np_soft_f1_loss if name == "soft_f1" else _np_dice_loss
  return fn(p, y, mask[:, None] if name == "soft_f1" else mask)


# ---------------------------------------------------------------- PyTorch twins


def _t(a):
  return torch.tensor(np.asarray(a), dtype=torch.float64)


def _torch_focal(logits, targets, alpha, gamma):
  log_p = torch.log_softmax(logits, -1)
  return -(alpha * targets * (1 - log_p.exp()) ** gamma * log_p).sum(-1)


def _torch_soft_f1(probs, targets, mask):
  m = mask[:, None]
  tp = (m * probs * targets).sum(0)
  fp = (m * probs * (1 - targets)).sum(0)
  fn = (m * (1 - probs) * targets).sum(0)
  return 1 - (2 * tp / (2 * tp + fp + fn + 1e-7)).mean()


def _torch_dice(probs, targets, mask, s=1.0):
  m = mask[:, None]
  num = 2 * (m * targets * probs).sum(0) + s
  den = (m * targets ** 2).sum(0) + (m * probs ** 2).sum(0) + s
  return 1 - (num / den).mean()


def _torch_batch_loss(name, logits, targets, mask):
  probs = torch.softmax(logits, -1)
  if probs.shape[1] == 2:
    probs, targets = probs[:, 1:], targets[:, 1:]
  return (_torch_soft_f1 if name == "soft_f1" else _torch_dice)(probs, targets, mask)


def _torch_value_and_grad(fn, logits):
  """fn(logits tensor) -> per-example [B] or scalar; returns (value, d Σ value / d logits)."""
  lt = _t(logits).requires_grad_(True)
  value = fn(lt)
  value.sum().backward()
  return value.detach().numpy(), lt.grad.numpy()


# The jax side runs through two module-level jitted functions so that tests with the
# same shapes and settings share one compilation (compiling dominates these tests).


@jax.jit
def _per_example_jit(logits, targets, weights, gamma):
  out = {}
  for name, fn, args in (("ce", losses.cross_entropy, (weights,)),
                         ("focal", losses.focal_loss, (weights, gamma))):
    batched = jax.vmap(fn, in_axes=(0, 0) + (None,) * len(args))
    out[name] = (batched(logits, targets, *args),
                 jax.grad(lambda l: jnp.sum(batched(l, targets, *args)))(logits))
  return out


def _per_example(name, logits, targets, weights, gamma=2.0):
  """Per-example values of cross_entropy or focal_loss, and the gradient of their sum
  (row i = example i's gradient)."""
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return _per_example_jit(f32(logits), f32(targets), f32(weights), f32(gamma))[name]


@functools.partial(jax.jit, static_argnums=0)
def _loss_jit(config_items, logits, targets, mask, progress, weights):
  loss_fn = losses.make_loss_fn(ml_collections.ConfigDict(dict(config_items)), weights)
  (value, parts), grad = jax.value_and_grad(
      lambda l: loss_fn(l, targets, mask, progress), has_aux=True)(logits)
  return value, parts, grad


def _loss(logits, targets, mask=None, progress=0.0, weights=None, **config):
  """(value, components, d value / d logits) of make_loss_fn(_cfg(**config), weights)."""
  b, k = np.shape(logits)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return _loss_jit(tuple(sorted({**losses.LOSS_DEFAULTS, **config}.items())), f32(logits),
                   f32(targets), f32(np.ones(b) if mask is None else mask), f32(progress),
                   f32(np.ones(k) if weights is None else weights))


# ---------------------------------------------------------------- per-example losses


@pytest.mark.parametrize("k,soft", [(2, False), (2, True), (3, False), (3, True)])
def test_cross_entropy_matches_numpy_and_torch(k, soft):
  logits, labels, targets = _data(k, soft)
  w = _weights(k)
  got, got_grad = _per_example("ce", logits, targets, w)
  want_np = -(w * targets * _np_log_softmax(logits)).sum(1)
  # Torch takes class indices for one-hot targets and probabilities for soft ones.
  torch_target = torch.tensor(labels) if not soft else _t(targets)
  want, want_grad = _torch_value_and_grad(
      lambda l: F.cross_entropy(l, torch_target, weight=_t(w), reduction="none"), logits)
  np.testing.assert_allclose(got, want_np, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got_grad, want_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", [2, 3])
def test_label_smoothing_matches_torch(k):
  logits, labels, onehot = _data(k, soft=False, seed=3)
  w = _weights(k)
  smoothed = np.asarray(losses.label_smoothing(onehot, 0.2))
  np.testing.assert_allclose(smoothed, 0.8 * onehot + 0.2 / k, rtol=1e-6)
  got, got_grad = _per_example("ce", logits, smoothed, w)
  want, want_grad = _torch_value_and_grad(
      lambda l: F.cross_entropy(l, torch.tensor(labels), weight=_t(w), label_smoothing=0.2,
                                reduction="none"), logits)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got_grad, want_grad, rtol=RTOL, atol=ATOL)
  if k == 2:  # make_loss_fn smooths the targets itself: the mean of torch's values.
    value, parts, grad = _loss(logits, onehot, weights=w, name="ce", label_smoothing=0.2)
    np.testing.assert_allclose(value, want.mean(), rtol=RTOL)
    np.testing.assert_allclose(grad, want_grad / len(labels), rtol=RTOL, atol=ATOL)
    assert parts["ce"] == value


@pytest.mark.parametrize("k,soft,gamma", [(2, False, 2.0), (2, True, 2.0), (3, False, 2.0),
                                          (3, True, 0.5)])
def test_focal_matches_numpy_and_torch(k, soft, gamma):
  logits, _, targets = _data(k, soft, seed=1)
  w = _weights(k)
  got, got_grad = _per_example("focal", logits, targets, w, gamma)
  want, want_grad = _torch_value_and_grad(
      lambda l: _torch_focal(l, _t(targets), _t(w), gamma), logits)
  np.testing.assert_allclose(got, _np_focal(logits, targets, w, gamma), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got_grad, want_grad, rtol=RTOL, atol=ATOL)


def _numpy_binary_focal(logits, labels, alpha, gamma):
  # p(class 1) = sigmoid(l1 - l0): the two-class softmax written as a logistic.
  z = logits[:, 1] - logits[:, 0]
  p1 = 1.0 / (1.0 + np.exp(-z))
  pt = np.where(labels == 1, p1, 1.0 - p1)
  a = np.where(labels == 1, alpha[1], alpha[0])
  return -a * (1.0 - pt) ** gamma * np.log(pt)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_one_hot_is_the_textbook_binary_focal(gamma):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 2)) * 3
  labels = (rng.random(16) < 0.2).astype(np.int32)
  labels[:2] = [0, 1]
  alpha = np.array([0.6, 4.0], np.float32)
  per_ex, _ = _per_example("focal", logits, np.eye(2)[labels], alpha, gamma)
  np.testing.assert_allclose(per_ex, _numpy_binary_focal(logits, labels, alpha, gamma),
                             rtol=2e-5, atol=1e-6)


def test_focal_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(16, 2))
  labels = np.array([0, 1, 0, 0, 1, 0, 1, 0] * 2)
  alpha = np.array([0.5, 5.0])
  _, _, g = _loss(logits, np.eye(2)[labels], weights=alpha, name="focal", gamma=2.0)
  eps = 1e-6
  fd = np.zeros_like(logits)
  for i in range(16):
    for k in range(2):
      d = np.zeros_like(logits)
      d[i, k] = eps
      fd[i, k] = (_numpy_binary_focal(logits + d, labels, alpha, 2.0).mean()
                  - _numpy_binary_focal(logits - d, labels, alpha, 2.0).mean()) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_focal_gamma_zero_is_weighted_cross_entropy(k):
  w = _weights(k)
  for soft in (False, True):
    logits, _, targets = _data(k, soft, seed=2)
    focal, focal_grad = _per_example("focal", logits, targets, w, gamma=0.0)
    ce, ce_grad = _per_example("ce", logits, targets, w)
    np.testing.assert_allclose(focal, ce, rtol=1e-6)
    np.testing.assert_allclose(focal_grad, ce_grad, rtol=1e-5, atol=1e-8)


def test_focal_is_finite_at_saturated_probabilities():
  # p rounds to 1 in float32: gamma < 1 would give 0^(gamma-1) = inf without the floor.
  logits = np.tile([[40.0, -40.0], [-40.0, 40.0]], (8, 1))
  for gamma in (0.0, 0.5, 2.0):
    values, grad = _per_example("focal", logits, np.tile(np.eye(2), (8, 1)), np.ones(2), gamma)
    assert np.isfinite(values).all() and np.isfinite(grad).all(), gamma


# ---------------------------------------------------------------- batch-level losses


@pytest.mark.parametrize("name", ["soft_f1", "dice"])
@pytest.mark.parametrize("k,soft", [(2, False), (2, True), (3, False), (3, True)])
def test_batch_losses_match_numpy_and_torch(name, k, soft):
  logits, _, targets = _data(k, soft, seed=4)
  mask = np.ones(len(logits), np.float32)
  mask[-3:] = 0.0  # Masked rows too, in all three computations.
  got, parts, got_grad = _loss(logits, targets, mask, name=name)
  want, want_grad = _torch_value_and_grad(
      lambda l: _torch_batch_loss(name, l, _t(targets), _t(mask)), logits)
  np.testing.assert_allclose(got, _np_batch_loss(name, logits, targets, mask), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(got_grad, want_grad, rtol=RTOL, atol=ATOL)
  assert parts == {name: got}


def test_batch_loss_functions_directly():
  logits, _, targets = _data(3, soft=True, seed=5)
  probs = np.exp(_np_log_softmax(logits)).astype(np.float32)
  mask = np.ones(len(logits), np.float32)
  y = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
  got = jax.jit(lambda p, t, m: [
      losses.soft_f1_multiclass(p, t, m), losses.soft_f1_loss(p[:, 1], t[:, 1], m),
      losses.dice_loss(p, t, m), losses.dice_loss(p[:, 1], t[:, 1], m, smooth=0.5),
      losses.soft_f1_loss(y, y, jnp.ones(4)), losses.dice_loss(y, y, jnp.ones(4))])(
          probs, targets, mask)
  want = [_np_soft_f1_loss(probs, targets, mask[:, None]),
          _np_soft_f1_loss(probs[:, 1:2], targets[:, 1:2], mask[:, None]),
          _np_dice_loss(probs, targets, mask),
          _np_dice_loss(probs[:, 1:2], targets[:, 1:2], mask, 0.5),
          0.0, 0.0]  # Perfect hard predictions: both losses 0.
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


# ---------------------------------------------------------------- composite

_progressive = jax.jit(lambda p: losses.composite_alpha("progressive", p))


@pytest.mark.parametrize("progress,want", [(0.0, 0.3), (0.29, 0.3), (0.31, 0.5), (0.79, 0.5),
                                           (0.81, 0.7), (1.0, 0.7)])
def test_progressive_schedule(progress, want):
  np.testing.assert_allclose(_progressive(jnp.float32(progress)), want, rtol=1e-6)


def test_linear_and_fixed_schedules():
  progress = jnp.array([0.0, 0.25, 0.5, 0.9, 1.0])
  linear, fixed = jax.jit(jax.vmap(lambda p: (
      losses.composite_alpha("linear", p, start=0.3, end=1.0),
      losses.composite_alpha("fixed", p, fixed=0.4))))(progress)
  np.testing.assert_allclose(linear, 0.3 + 0.7 * progress, rtol=1e-6)
  np.testing.assert_allclose(fixed, 0.4)
  with pytest.raises(ValueError, match="config.loss.composite_schedule="):
    losses.composite_alpha("cosine", 0.5)


_COMPOSITE_W = np.array([1.0, 14.6], np.float32)


@pytest.mark.parametrize("schedule,progress", [("progressive", 0.1), ("progressive", 0.5),
                                               ("progressive", 0.9), ("linear", 0.6)])
def test_composite_is_alpha_soft_f1_plus_weighted_ce(schedule, progress):
  logits, _, targets = _data(2, soft=False, seed=6)
  value, parts, _ = _loss(logits, targets, progress=progress, weights=_COMPOSITE_W,
                          name="composite", composite_schedule=schedule)
  a = {"progressive": 0.3 if progress < 0.3 else 0.5 if progress < 0.8 else 0.7,
       "linear": 0.3 + 0.7 * progress}[schedule]
  f1 = _np_batch_loss("soft_f1", logits, targets, np.ones(16))
  wce = np.mean(-(_COMPOSITE_W * targets * _np_log_softmax(logits)).sum(1))
  np.testing.assert_allclose(value, a * f1 + (1 - a) * wce, rtol=RTOL)
  np.testing.assert_allclose([parts["composite_alpha"], parts["soft_f1"], parts["ce"]],
                             [a, f1, wce], rtol=RTOL)


def test_composite_gradient_matches_torch():
  logits, labels, targets = _data(2, soft=False, seed=7)
  got, _, got_grad = _loss(logits, targets, progress=0.5, weights=_COMPOSITE_W,
                           name="composite", composite_schedule="linear")
  a = 0.3 + 0.7 * 0.5

  def torch_composite(l):
    # Plain mean of the weighted per-example CE (torch's weighted-mean reduction differs).
    ce = F.cross_entropy(l, torch.tensor(labels), weight=_t(_COMPOSITE_W), reduction="none")
    return a * _torch_batch_loss("soft_f1", l, _t(targets), _t(np.ones(16))) + (1 - a) * ce.mean()

  want, want_grad = _torch_value_and_grad(torch_composite, logits)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  np.testing.assert_allclose(got_grad, want_grad, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- masking


def _np_loss(name, logits, targets, mask, w, eps):
  """make_loss_fn's value by the numpy formulas (composite at progress 0.5: a = 0.5)."""
  smoothed = (1 - eps) * targets + eps / targets.shape[1]
  per_example = {"focal": _np_focal(logits, smoothed, w, 2.0),
                 "ce": -(w * smoothed * _np_log_softmax(logits)).sum(1)}
  if name in per_example:
    return (per_example[name] * mask).sum() / mask.sum()
  if name in ("soft_f1", "dice"):
    return _np_batch_loss(name, logits, targets, mask)
  return (0.5 * _np_batch_loss("soft_f1", logits, targets, mask)
          + 0.5 * _np_loss("ce", logits, targets, mask, w, eps))


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_mask_excludes_padding(name):
  logits, _, targets = _data(2, soft=True, seed=8)
  w = np.array([0.5, 3.0], np.float32)
  # Label smoothing on the CE term (as in test_label_smoothing_matches_torch: one
  # compilation for both); soft-F1/Dice do not use it.
  eps = 0.2 if name == "ce" else 0.0
  mask = np.r_[np.ones(13), np.zeros(3)].astype(np.float32)
  results = []
  # The last 3 rows are padding: two different sets of extreme logits / arbitrary targets.
  for pad_logits, pad_targets in (([[30.0, -30.0], [-7.0, 9.0], [0.0, 0.0]],
                                   [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]),
                                  ([[-50.0, 50.0], [3.0, 3.0], [1.0, -2.0]],
                                   [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])):
    l, t = logits.copy(), targets.copy()
    l[13:], t[13:] = pad_logits, pad_targets
    results.append(_loss(l, t, mask, progress=0.5, weights=w, name=name, label_smoothing=eps))
  (v1, _, g1), (v2, _, g2) = results
  np.testing.assert_allclose(v1, _np_loss(name, logits[:13], targets[:13], np.ones(13), w, eps),
                             rtol=RTOL)
  np.testing.assert_allclose(v1, v2, rtol=1e-6)
  np.testing.assert_allclose(g1[:13], g2[:13], rtol=1e-6, atol=1e-8)
  np.testing.assert_array_equal(g1[13:], 0.0)


# ---------------------------------------------------------------- class weights


def test_inverse_frequency_weights_match_the_original_figures():
  # The spec: 1,599 samples gave 0.54 / 6.95 → 1,484 negatives, 115 positives.
  labels = np.array([0] * 1484 + [1] * 115)
  w = losses.inverse_frequency_weights(labels, 2)
  np.testing.assert_allclose(w, [1599 / (2 * 1484), 1599 / (2 * 115)], rtol=1e-6)
  assert [round(float(v), 2) for v in w] == [0.54, 6.95]
  w2 = losses.class_weights(_cfg(alpha="inverse_frequency"), labels, np.zeros(1599), 2)
  np.testing.assert_array_equal(w, w2)
  assert w2.dtype == np.float32


def test_profit_loss_weights_by_hand():
  labels = np.array([1, 1, 0, 0, 0, 0])
  # Wins 0.010, 0.020 → mean 0.015; losing negatives -0.004, -0.002, 0 → mean |r| 0.002;
  # the negative with r = +0.003 (a win below the threshold) is not a loss.
  fwd = np.array([0.010, 0.020, -0.004, -0.002, 0.0, 0.003])
  w = losses.class_weights(_cfg(alpha="profit_loss"), labels, fwd, 2)
  np.testing.assert_allclose(w, [1.0, 0.015 / 0.002], rtol=1e-6)
  assert w.dtype == np.float32
  with pytest.raises(ValueError, match="config.loss.alpha='profit_loss'"):
    losses.class_weights(_cfg(alpha="profit_loss"), labels, np.abs(fwd), 2)  # No losses.
  with pytest.raises(ValueError, match="config.loss.alpha='profit_loss'"):
    losses.class_weights(_cfg(alpha="profit_loss"), np.zeros(6, int), fwd, 2)  # No positives.
  with pytest.raises(ValueError, match="config.loss.alpha="):
    losses.class_weights(_cfg(alpha="profit_loss"), labels, fwd, 3)


def test_explicit_and_none_weights():
  labels, fwd = np.array([0, 1, 0]), np.zeros(3)
  for alpha in ([1.0, 14.6], (1.0, 14.6), "1.0,14.6", "[1, 14.6]"):
    np.testing.assert_allclose(losses.class_weights(_cfg(alpha=alpha), labels, fwd, 2),
                               [1.0, 14.6], rtol=1e-6)
  np.testing.assert_array_equal(losses.class_weights(_cfg(alpha="none"), labels, fwd, 3), 1.0)
  with pytest.raises(ValueError, match=r"config.loss.alpha=\[1.0, 14.6\] is invalid"):
    losses.class_weights(_cfg(alpha=[1.0, 14.6]), labels, fwd, 3)


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize("key,value", [
    ("name", "hinge"), ("gamma", -1.0), ("alpha", "inverse-frequency"), ("alpha", [1.0]),
    ("alpha", [1.0, -2.0]), ("label_smoothing", 1.0), ("label_smoothing", -0.1),
    ("composite_schedule", "cosine"), ("composite_alpha", 1.5), ("composite_end", -0.1)])
def test_validate_loss_config_names_the_key(key, value):
  cfg = _cfg()
  del cfg[key]  # Replaced, not assigned: ConfigDict keeps a field's type.
  cfg[key] = value
  with pytest.raises(ValueError, match=f"config.loss.{key}=.* is invalid"):
    losses.validate_loss_config(cfg, 2)
  with pytest.raises(ValueError, match=f"config.loss.{key}="):
    losses.make_loss_fn(cfg, np.ones(2))


def test_validate_accepts_every_loss_and_schedule():
  for name in losses.LOSS_NAMES:
    for schedule in losses.COMPOSITE_SCHEDULES:
      losses.validate_loss_config(_cfg(name=name, composite_schedule=schedule), 3)


# ---------------------------------------------------------------- mixup


_mixup = jax.jit(mixup_lib.mixup)  # alpha and prob traced: one compilation for every test.


def _mixup_batch(b=16):
  # Row i of x is the unit vector e_i, so a mixed row i shows lam and π(i).
  x = np.zeros((b, 4, 8), np.float32)
  x.reshape(b, -1)[np.arange(b), np.arange(b)] = 1.0
  rng = np.random.default_rng(0)
  targets = np.eye(2, dtype=np.float32)[rng.integers(0, 2, b)]
  returns = rng.normal(size=b).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(targets), jnp.asarray(returns)


def test_mixup_off_returns_the_batch_unchanged():
  x, t, r = _mixup_batch()
  for seed in range(3):
    xo, to, ro, applied = _mixup(jax.random.key(seed), x, t, r, 0.2, 0.0)
    assert not bool(applied)
    for a, b in ((xo, x), (to, t), (ro, r)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_on_is_one_convex_combination(seed):
  x, t, r = _mixup_batch()
  xo, to, ro, applied = _mixup(jax.random.key(seed), x, t, r, 0.2, 1.0)
  assert bool(applied)
  flat = np.asarray(xo).reshape(16, -1)[:, :16]
  # Row i = lam·e_i + (1 − lam)·e_π(i): lam on the diagonal unless π(i) = i.
  perm = np.array([i if flat[i, i] == 1.0 else int(np.argmax(np.where(np.arange(16) == i, -1, flat[i])))
                   for i in range(16)])
  assert sorted(perm) == list(range(16))
  moved = perm != np.arange(16)
  # No row visibly moved only if lam rounded to 1 (Beta(0.2, 0.2) puts mass near 0 and 1).
  lam = flat[moved, moved.nonzero()[0]] if moved.any() else np.ones(1, np.float32)
  np.testing.assert_allclose(lam, lam[0], rtol=1e-6)  # One lam for the whole batch.
  lam = float(lam[0])
  assert 0.5 <= lam <= 1.0
  np.testing.assert_allclose(to, lam * t + (1 - lam) * np.asarray(t)[perm], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ro, lam * r + (1 - lam) * np.asarray(r)[perm], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(to).sum(1), 1.0, rtol=1e-6)
  # Same key → same result; another key → another mix.
  np.testing.assert_array_equal(_mixup(jax.random.key(seed), x, t, r, 0.2, 1.0)[0], xo)
  other = _mixup(jax.random.key(seed + 100), x, t, r, 0.2, 1.0)
  assert not np.allclose(other[0], xo)


def test_mixup_applies_to_about_prob_of_batches():
  x, t, r = _mixup_batch()
  applied = [bool(_mixup(jax.random.key(seed), x, t, r, 0.2, 0.5)[3]) for seed in range(200)]
  assert 0.4 < np.mean(applied) < 0.6


# ---------------------------------------------------------------- recipes

RECIPES = ("focal_pl", "weighted_ce", "composite_progressive", "smooth_mixup", "soft_f1", "dice")
NEW_KEYS = {"loss.label_smoothing": 0.0, "loss.composite_schedule": "progressive",
            "loss.composite_alpha": 0.5, "loss.composite_start": 0.3, "loss.composite_end": 1.0,
            "train.mixup_alpha": 0.2, "train.mixup_prob": 0.0}


@pytest.fixture
def locked_defaults(monkeypatch):
  """configs.default with the new keys (if it lacks them yet), locked: a recipe that sets
  an unknown key or changes a field's type fails here as it would under main.py."""
  from configs import default
  original = default.get_config

  def get_config(arg=None):
    c = original(arg)
    for path, value in NEW_KEYS.items():
      section, key = path.split(".")
      if key not in c[section]:
        c[section][key] = value
    c.lock()
    return c

  monkeypatch.setattr(default, "get_config", get_config)


@pytest.mark.parametrize("arg", [None, "quick"])
def test_recipes_load_and_validate(locked_defaults, arg):
  names = set()
  for recipe in RECIPES:
    c = importlib.import_module(f"configs.recipes.{recipe}").get_config(arg)
    names.add(c.name)
    assert recipe in c.name and (arg != "quick" or c.name.endswith("-quick"))
    losses.validate_loss_config(c.loss, 2)
  assert len(names) == len(RECIPES)


def test_recipe_settings(locked_defaults):
  get = lambda r: importlib.import_module(f"configs.recipes.{r}").get_config("quick")
  c = get("focal_pl")
  assert (c.loss.name, c.loss.gamma, c.loss.alpha) == ("focal", 2.0, "profit_loss")
  c = get("weighted_ce")
  assert c.loss.name == "ce"
  np.testing.assert_allclose(losses.class_weights(c.loss, [0, 1], [0.0, 0.0], 2), [1.0, 14.6])
  c = get("composite_progressive")
  assert (c.loss.name, c.loss.composite_schedule) == ("composite", "progressive")
  c = get("smooth_mixup")
  assert (c.loss.name, c.loss.alpha, c.loss.label_smoothing) == ("ce", "inverse_frequency", 0.2)
  assert (c.train.mixup_alpha, c.train.mixup_prob) == (0.2, 0.5)
  assert get("soft_f1").loss.name == "soft_f1" and get("dice").loss.name == "dice"
  assert c.data.window == 64  # The GRU quick settings come along.
