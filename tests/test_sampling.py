"""Batch composition of the training split: counted, not assumed."""

import numpy as np
import pytest

from jaxquant.data import sampling


def _labels(n=5000, rate=0.07, seed=0):
  return (np.random.default_rng(seed).random(n) < rate).astype(np.int32)


@pytest.mark.parametrize("shards", [1, 2, 8])
def test_stratified_exact_positives_in_every_shard(shards):
  labels = _labels()
  plan = sampling.epoch_plan(labels, 64, seed=3, epoch=1, sampler="stratified",
                             positives_per_batch=8, shards=shards)
  per_shard = labels[plan].reshape(plan.shape[0], shards, -1).sum(axis=2)
  assert (per_shard == 8 // shards).all()
  # Every negative appears at most once per epoch and nearly all are used.
  neg = plan[labels[plan] == 0]
  assert len(np.unique(neg)) == len(neg)
  assert len(neg) > (labels == 0).sum() - 64
  # Positives are cycled evenly: counts differ by at most one.
  counts = np.bincount(plan[labels[plan] == 1], minlength=len(labels))[labels == 1]
  assert counts.max() - counts.min() <= 1


def test_stratified_refuses_uneven_shards():
  with pytest.raises(ValueError, match="positives_per_batch"):
    sampling.epoch_plan(_labels(), 64, 0, 0, sampler="stratified", positives_per_batch=3,
                        shards=2)


def test_plans_are_deterministic_and_change_per_epoch():
  labels = _labels()
  for sampler in sampling.SAMPLERS:
    a = sampling.epoch_plan(labels, 32, 1, 2, sampler=sampler, positives_per_batch=4)
    b = sampling.epoch_plan(labels, 32, 1, 2, sampler=sampler, positives_per_batch=4)
    c = sampling.epoch_plan(labels, 32, 1, 3, sampler=sampler, positives_per_batch=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_shuffle_is_a_permutation():
  labels = _labels(1000)
  plan = sampling.epoch_plan(labels, 32, 0, 0)
  assert plan.shape == (31, 32) and len(np.unique(plan)) == plan.size


def test_undersample_ratio():
  labels = _labels()
  plan = sampling.epoch_plan(labels, 16, 0, 0, sampler="undersample", undersample_ratio=3.0)
  used = plan.ravel()
  assert len(np.unique(used)) == len(used)
  n_pos = labels.sum()
  assert abs((labels[used] == 0).sum() - 3 * n_pos) <= 16
  assert (labels[used] == 1).sum() >= n_pos - 16


def test_oversample_fraction_and_copy_marks():
  labels = _labels()
  n = len(labels)
  plan = sampling.epoch_plan(labels, 16, 0, 0, sampler="oversample", oversample_fraction=0.3)
  used = plan.ravel()
  copies = used[used >= n] - n
  assert (labels[copies] == 1).all()  # Only positives are repeated.
  originals = used[used < n]
  assert len(np.unique(originals)) == len(originals)
  share = (labels[used % n] == 1).mean()
  assert abs(share - 0.3) < 0.01
