"""Which training windows go into which batch: plain shuffle, stratified, under/oversampled.

Everything here only reorders indices of the TRAINING split — validation and
test keep their true class ratio, always. Each epoch's plan is a pure function
of (seed, epoch), an int array [steps, batch]; a row is one global batch in the
order its rows are laid over devices. An index >= n marks a repeated copy of
window (index - n) (oversampling), so jitter can be applied to copies only.
"""

import numpy as np

SAMPLERS = ("shuffle", "stratified", "undersample", "oversample")


def _rng(seed, epoch):
  return np.random.default_rng([seed, epoch, 7919])


def epoch_plan(is_signal, batch_size, seed, epoch, sampler="shuffle", positives_per_batch=0,
               undersample_ratio=7.0, oversample_fraction=0.15, shards=1):
  """The batches of one epoch as training-split indices.

  Args:
    is_signal: [n] bool, True for the training windows of the signal class
      (labels.signal_class; the "positives"). 0/1 integers are accepted.
    batch_size: global batch size B.
    seed, epoch: the plan depends on these only.
    sampler: "shuffle" — a permutation, last partial batch dropped;
      "stratified" — exactly `positives_per_batch` positives in every batch and in
      every shard of it (`shards` = devices x processes the batch is split over),
      negatives each seen once per epoch, positives cycled through reshuffles;
      "undersample" — all positives plus `undersample_ratio` random negatives per
      positive, shuffled; "oversample" — positives repeated (copies marked >= n)
      until they are `oversample_fraction` of the epoch, shuffled.
    shards: how many equal parts a batch is split into (devices x processes).

  Returns:
    int64 [steps, B].
  """
  is_signal = np.asarray(is_signal)
  if is_signal.dtype != bool and not np.isin(is_signal, (0, 1)).all():
    raise ValueError("epoch_plan takes a signal mask (bool or 0/1), not class labels")
  is_signal = is_signal.astype(bool)
  n = len(is_signal)
  rng = _rng(seed, epoch)
  pos, neg = np.flatnonzero(is_signal), np.flatnonzero(~is_signal)
  if sampler == "shuffle":
    order = rng.permutation(n)
  elif sampler == "undersample":
    keep = rng.choice(neg, size=min(len(neg), int(round(len(pos) * undersample_ratio))),
                      replace=False)
    order = rng.permutation(np.concatenate([pos, keep]))
  elif sampler == "oversample":
    want = int(np.ceil(oversample_fraction * len(neg) / max(1.0 - oversample_fraction, 1e-9)))
    copies = _cycled(rng, pos, max(want - len(pos), 0)) + n
    order = rng.permutation(np.concatenate([pos, neg, copies]))
  elif sampler == "stratified":
    return _stratified(rng, pos, neg, batch_size, positives_per_batch, shards)
  else:
    raise ValueError(f"config.data.sampler={sampler!r}: use one of {SAMPLERS}")
  steps = len(order) // batch_size
  if steps == 0:
    raise ValueError(f"train.batch_size={batch_size} is larger than the {len(order)} "
                     f"training windows the {sampler!r} sampler yields")
  return order[:steps * batch_size].reshape(steps, batch_size)


def _cycled(rng, idx, count):
  """`count` draws from idx: whole reshuffled passes, so every index recurs evenly."""
  if count <= 0 or len(idx) == 0:
    return np.zeros(0, np.int64)
  passes = -(-count // len(idx))
  return np.concatenate([rng.permutation(idx) for _ in range(passes)])[:count]


def _stratified(rng, pos, neg, batch_size, k, shards):
  if not 0 < k < batch_size:
    raise ValueError(f"config.data.positives_per_batch={k} must be in [1, {batch_size - 1}] "
                     f"for train.batch_size={batch_size}")
  if batch_size % shards or k % shards:
    raise ValueError(f"config.data.positives_per_batch={k} and train.batch_size={batch_size} "
                     f"must both divide by the {shards} devices x processes the batch is "
                     "split over, so every share holds the same number of positives")
  if len(pos) == 0:
    raise ValueError("config.data.sampler='stratified' needs positives in the training split")
  steps = len(neg) // (batch_size - k)
  if steps == 0:
    raise ValueError(f"train.batch_size={batch_size} needs {batch_size - k} negatives a batch; "
                     f"the training split has {len(neg)}")
  p = _cycled(rng, pos, steps * k).reshape(steps, shards, k // shards)
  q = rng.permutation(neg)[:steps * (batch_size - k)].reshape(
      steps, shards, (batch_size - k) // shards)
  per_shard = np.concatenate([p, q], axis=2)
  # Shuffle rows inside each shard so positives don't always sit first.
  per_shard = np.take_along_axis(per_shard, rng.random(per_shard.shape).argsort(axis=2), axis=2)
  return per_shard.reshape(steps, batch_size)
