"""Batches for training and evaluation, on grain's dataset API.

Training batches follow a per-epoch plan that is a function of (seed, epoch)
only (data/sampling.py), so every epoch — and every batch in it — is
reproducible on its own. Evaluation batches are fixed-order and padded with a
mask, so no window is dropped and any batch size gives the same numbers.
"""

import grain
import numpy as np

from jaxquant.data import sampling


def train_plan(dataset, data_config, batch_size, seed, epoch, shards=1):
  """The epoch's batches as training indices [steps, B] (see sampling.epoch_plan);
  the sampler's positives are the signal class's windows, for every label kind."""
  train = dataset.splits["train"]
  return sampling.epoch_plan(
      train.labels == train.signal_class, batch_size, seed, epoch,
      sampler=data_config.sampler, positives_per_batch=data_config.positives_per_batch,
      undersample_ratio=data_config.undersample_ratio,
      oversample_fraction=data_config.oversample_fraction, shards=shards)


def train_batches(dataset, plan, rows=None, skip=0, jitter=0.0, seed=0, epoch=0, workers=0):
  """Training batches of one epoch, following `plan` (from train_plan).

  Args:
    dataset: a data.dataset.Dataset.
    plan: int [steps, B] training indices; an index >= n is a copy of index - n.
    rows: (start, stop) — the rows of every global batch this process feeds;
      only those windows are gathered (None = all).
    skip: batches of this epoch already consumed (resume at the exact batch).
    jitter: std of Gaussian noise added to oversampled copies (0 = exact copies).
    seed, epoch: seed the jitter noise, so a resumed epoch is bit-identical.
    workers: grain worker processes gathering batches (0 = 2 threads in this
      process). Batches are planned before the workers, so their composition and
      order are the same for any worker count.

  Returns:
    An iterable of dicts x [b, T, F] float32, y [b] int32, r [b] float32.
  """
  split = dataset.splits["train"]
  n = len(split)
  start, stop = rows or (0, plan.shape[1])

  def gather(step_and_idx):
    step, idx = step_and_idx
    idx = idx[start:stop]
    copy, idx = idx >= n, idx % n
    x = dataset.windows("train", idx)
    if jitter and copy.any():
      noise = np.random.default_rng([seed, epoch, int(step)]).normal(
          0.0, jitter, size=x[copy].shape)
      x[copy] += noise.astype(x.dtype)
    # int32 labels whatever the split stores (int8): the jitted step's input dtype.
    return {"x": x, "y": split.labels[idx].astype(np.int32),
            "r": split.fwd_returns[idx].astype(np.float32)}

  ds = grain.MapDataset.source([(i, row) for i, row in enumerate(plan)])
  ds = ds[skip:].map(gather)
  if workers:
    return ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  # Threads overlap the numpy gather with the jitted step.
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def train_ends(dataset, plan, rows=None, skip=0):
  """train_batches' batches as window ends, for a step that gathers the windows on the
  device (device_windows.gather_step): the same plan, order, rows and skip; no window
  gathered, no worker needed (a batch is three small index lookups).

  Returns:
    An iterator of dicts ends [b] int32 (the row of each window's last bar in
    Dataset.features), y [b] int32, r [b] float32.
  """
  split = dataset.splits["train"]
  n = len(split)
  start, stop = rows or (0, plan.shape[1])
  for idx in plan[skip:, start:stop]:
    idx = idx % n  # A copy (oversampling) is its window again: no jitter on this path.
    yield {"ends": split.ends[idx].astype(np.int32), "y": split.labels[idx].astype(np.int32),
           "r": split.fwd_returns[idx].astype(np.float32)}


def eval_batches(dataset, split_name, batch_size, rows=None, ends=False):
  """All windows of a split in order, padded to full batches; `mask` marks real rows.

  Args:
    rows: (start, stop) rows of each batch this process gathers (None = all).
    ends: yield the windows' end rows ("ends" [b] int32) instead of the windows
      ("x"), for a predict step that gathers them on the device.
  """
  split = dataset.splits[split_name]
  n = len(split)
  start, stop = rows or (0, batch_size)
  for first in range(0, n, batch_size):
    idx = np.arange(first, first + batch_size)[start:stop]
    real = idx < n
    idx = np.where(real, idx, 0)  # Padding rows repeat window 0 and are masked out.
    inputs = ({"ends": split.ends[idx].astype(np.int32)} if ends
              else {"x": dataset.windows(split_name, idx)})
    yield {**inputs, "y": split.labels[idx].astype(np.int32) * real,
           "r": split.fwd_returns[idx].astype(np.float32) * real, "mask": real}
