"""The grain loader: planned batches, worker processes, padded evaluation batches."""

import numpy as np
import pytest

from configs import gru
from jaxquant.data import dataset, loader, synth


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("loader"))
  synth.write_market(root, instruments=2, days=3, progress=False)
  c = gru.get_config("quick")
  c.data.window = 16
  return dataset.build_dataset(c.data, root, check_labels=False), c


def test_worker_processes_give_the_same_batches(ds):
  d, c = ds
  plan = loader.train_plan(d, c.data, 64, seed=0, epoch=0)
  threads = list(loader.train_batches(d, plan))
  workers = list(loader.train_batches(d, plan, workers=2))
  assert len(threads) == len(workers) == len(plan)
  for a, b in zip(threads, workers):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Windows are gathered from the feature matrix: batch row i is window plan[i].
  np.testing.assert_array_equal(threads[0]["x"], d.windows("train", plan[0]))
  np.testing.assert_array_equal(threads[0]["y"], d.splits["train"].labels[plan[0]])


def test_resume_skips_to_the_exact_batch_and_rows_slice(ds):
  d, c = ds
  plan = loader.train_plan(d, c.data, 64, seed=1, epoch=3)
  full = list(loader.train_batches(d, plan))
  rest = list(loader.train_batches(d, plan, skip=5, rows=(32, 64)))
  assert len(rest) == len(full) - 5
  np.testing.assert_array_equal(rest[0]["x"], full[5]["x"][32:])


def test_eval_batches_cover_every_window_once(ds):
  d, _ = ds
  n = len(d.splits["val"])
  batches = list(loader.eval_batches(d, "val", 50))
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n and len(mask) == -(-n // 50) * 50
  y = np.concatenate([b["y"] for b in batches])[mask]
  np.testing.assert_array_equal(y, d.splits["val"].labels)


@pytest.mark.parametrize("kind,classes", [("three_class", 3), ("triple_barrier", 2)])
def test_other_label_kinds_flow_into_the_splits(ds, tmp_path, kind, classes):
  from jaxquant import verdict
  from jaxquant.data import labels
  d, c = ds
  c = c.copy_and_resolve_references()
  c.data.label_kind = kind
  root = str(tmp_path / "m")
  synth.write_market(root, instruments=1, days=3, progress=False)
  built = dataset.build_dataset(c.data, root, check_labels=False)
  assert built.num_classes == classes
  bars = synth.generate_market(1, 3)[0][2]
  want = labels.make_labels(dataset.label_config(c.data), bars)["labels"]
  for split in built.splits.values():
    np.testing.assert_array_equal(split.labels, want[split.ends])  # One instrument: rows = bars.
    assert split.labels.min() >= 0  # Every kept window has a known label.
  # Validation reports the signal class one-vs-rest, plus per-class figures for 3 classes.
  val = built.splits["val"]
  probs = np.random.default_rng(0).dirichlet(np.ones(classes), size=len(val))
  threshold = verdict.choose_threshold(val.labels, probs, 0.001)
  val_verdict = verdict.split_verdict(val.labels, probs, threshold, 0.001, 0.9)
  np.testing.assert_allclose(val_verdict["prior"], (val.labels == classes - 1).mean())
  assert ("multiclass" in val_verdict) == (classes == 3)


@pytest.mark.parametrize("kind,binary", [("three_class", True), ("triple_barrier", False)])
def test_stratified_batches_hold_signal_class_windows_for_every_label_kind(ds, tmp_path, kind,
                                                                           binary):
  """With three classes the signal is "up" (take-profit for triple_barrier), not class 1:
  every batch carries exactly positives_per_batch windows of it, counted on the labels."""
  from jaxquant.data import labels
  _, c = ds
  c = c.copy_and_resolve_references()
  c.data.label_kind = kind
  c.data.barrier_binary = binary
  c.data.sampler = "stratified"
  c.data.positives_per_batch = 4
  root = str(tmp_path / "m")
  synth.write_market(root, instruments=1, days=3, progress=False)
  d = dataset.build_dataset(c.data, root, check_labels=False)
  assert d.num_classes == 3
  train = d.splits["train"]
  assert labels.signal_class(d.num_classes) == 2
  plan = loader.train_plan(d, c.data, 32, seed=0, epoch=0)
  counts = (train.labels[plan] == 2).sum(axis=1)
  assert (counts == 4).all(), counts
