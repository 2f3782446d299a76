"""Batches for training and evaluation, on grain's dataset API.

Training batches are shuffled per epoch from (seed, epoch), so every epoch is
reproducible on its own. Evaluation batches are fixed-order and padded with a
mask, so no window is dropped and any batch size gives the same numbers.
"""

import grain
import numpy as np


def _epoch_seed(seed, epoch):
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(dataset, batch_size, seed, epoch):
  """Shuffled training batches of one epoch (the last partial batch is dropped).

  Returns:
    An iterable of dicts x [B, T, F] float32, y [B] int32, r [B] float32.
  """
  split = dataset.splits["train"]
  if len(split) < batch_size:
    raise ValueError(f"train.batch_size={batch_size} is larger than the "
                     f"{len(split)} training windows")

  def gather(idx):
    return {"x": dataset.windows("train", idx), "y": split.labels[idx],
            "r": split.fwd_returns[idx].astype(np.float32)}

  ds = (grain.MapDataset.range(len(split))
        .shuffle(seed=_epoch_seed(seed, epoch))
        .batch(batch_size, drop_remainder=True)
        .map(gather))
  # Threads overlap the numpy gather with the jitted step.
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def steps_per_epoch(dataset, batch_size):
  return len(dataset.splits["train"]) // batch_size


def eval_batches(dataset, split_name, batch_size):
  """All windows of a split in order, padded to full batches; `mask` marks real rows."""
  split = dataset.splits[split_name]
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(idx)
    x = dataset.windows(split_name, idx)
    y = split.labels[idx]
    r = split.fwd_returns[idx].astype(np.float32)
    mask = np.ones(len(idx), bool)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
      r = np.concatenate([r, np.zeros(pad, r.dtype)])
      mask = np.concatenate([mask, np.zeros(pad, bool)])
    yield {"x": x, "y": y, "r": r, "mask": mask}
