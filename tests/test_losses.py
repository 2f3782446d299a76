"""Focal loss against the binary formula computed another way (numpy, closed form)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxquant import losses


def _numpy_binary_focal(logits, labels, alpha, gamma):
  # p(class 1) = sigmoid(l1 - l0): the two-class softmax written as a logistic.
  z = logits[:, 1] - logits[:, 0]
  p1 = 1.0 / (1.0 + np.exp(-z))
  pt = np.where(labels == 1, p1, 1.0 - p1)
  a = np.where(labels == 1, alpha[1], alpha[0])
  return -a * (1.0 - pt) ** gamma * np.log(pt)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_matches_closed_form(gamma):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 2)) * 3
  labels = (rng.random(64) < 0.2).astype(np.int32)
  alpha = np.array([0.6, 4.0], np.float32)
  per_ex = jax.vmap(losses.focal_loss, in_axes=(0, 0, None, None))(
      jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(alpha), gamma)
  np.testing.assert_allclose(per_ex, _numpy_binary_focal(logits, labels, alpha, gamma),
                             rtol=2e-5, atol=1e-6)


def test_focal_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(8, 2))
  labels = np.array([0, 1, 0, 0, 1, 0, 1, 0])
  alpha = np.array([0.5, 5.0])
  cfg = ml_collections.ConfigDict({"name": "focal", "gamma": 2.0})
  loss_fn = losses.make_loss_fn(cfg, alpha)
  g = jax.grad(lambda l: loss_fn(l, jnp.asarray(labels), jnp.ones(8)))(
      jnp.asarray(logits, jnp.float32))
  eps = 1e-6
  fd = np.zeros_like(logits)
  for i in range(8):
    for k in range(2):
      d = np.zeros_like(logits)
      d[i, k] = eps
      fd[i, k] = (_numpy_binary_focal(logits + d, labels, alpha, 2.0).mean()
                  - _numpy_binary_focal(logits - d, labels, alpha, 2.0).mean()) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-6)


def test_gamma_zero_is_weighted_cross_entropy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(32, 2)).astype(np.float32)
  labels = rng.integers(0, 2, 32)
  alpha = np.array([1.0, 3.0], np.float32)
  cfg = ml_collections.ConfigDict({"name": "focal", "gamma": 0.0})
  got = losses.make_loss_fn(cfg, alpha)(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(32))
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  want = np.mean(-alpha[labels] * log_p[np.arange(32), labels])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mask_excludes_padding():
  cfg = ml_collections.ConfigDict({"name": "focal", "gamma": 2.0})
  loss_fn = losses.make_loss_fn(cfg, np.ones(2, np.float32))
  logits = jnp.array([[0.0, 1.0], [5.0, -5.0], [100.0, -100.0]])
  labels = jnp.array([1, 0, 1])
  full = loss_fn(logits[:2], labels[:2], jnp.ones(2))
  masked = loss_fn(logits, labels, jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(full, masked, rtol=1e-6)


def test_inverse_frequency_weights_match_the_original_figures():
  # The spec: 1,599 samples gave 0.54 / 6.95 → 1,484 negatives, 115 positives.
  labels = np.array([0] * 1484 + [1] * 115)
  w = losses.inverse_frequency_weights(labels, 2)
  np.testing.assert_allclose(w, [1599 / (2 * 1484), 1599 / (2 * 115)], rtol=1e-6)
  assert [round(float(v), 2) for v in w] == [0.54, 6.95]
