"""Checkpoints are verified: a flipped bit is one line naming the step and file, resume
falls back to the newest intact step, eval refuses; a checkpoint of another model says
what it was trained as; tied scores name the same best step as the training log."""

import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys

import flax
import jax.numpy as jnp
import pytest

from conftest import tiny_flags
from jaxquant import checkpoints as checkpoints_lib
from jaxquant import evaluate
from jaxquant import resume as resume_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@flax.struct.dataclass
class _State:  # What resume() needs of a train state: a pytree with a step.
  params: dict
  opt_state: dict
  step: jnp.ndarray


def _state(value, step):
  return _State(params={"dense": {"kernel": jnp.full((4, 3), value), "bias": jnp.zeros(3)}},
                opt_state={"mu": jnp.full((4, 3), value / 2), "count": jnp.int32(step)},
                step=jnp.int32(step))


def _meta(epoch, fingerprint):
  return {"epoch": epoch, "fingerprint": fingerprint,
          "progress": {**resume_lib.fresh_progress(), "epoch": epoch + 1, "best_score": 0.5}}


def _store_with_steps(directory, scores, fingerprint=None):
  store = checkpoints_lib.CheckpointStore(directory, keep_best=len(scores))
  for i, score in enumerate(scores):
    store.save(i + 1, _state(float(i + 1), i + 1), _meta(i, fingerprint), score)
  return store


def _flip_bit(path, rng):
  data = bytearray(open(path, "rb").read())
  bit = rng.randrange(len(data) * 8)
  data[bit // 8] ^= 1 << (bit % 8)
  with open(path, "wb") as f:
    f.write(data)


def _kind(rel):
  """A file's kind: its path, with the content-addressed names of data files as '*'."""
  return re.sub(r"(^|/)d/[0-9a-f]+$", r"\1d/*", rel)


def test_tied_scores_name_the_earliest_step_as_best(tmp_path):
  # The loop's `improved = score > best` calls the first epoch to reach a score the best;
  # the store must agree (and keep it, not the later tie, under keep_best).
  store = _store_with_steps(str(tmp_path / "ck"), [0.5, 0.5])
  assert store.best_step() == 1
  store.close()
  store = checkpoints_lib.CheckpointStore(str(tmp_path / "ck2"), keep_best=1)
  for i, score in enumerate([0.5, 0.5, 0.3]):
    store.save(i + 1, _state(1.0, i + 1), {"epoch": i}, score)
  assert store.best_step() == 1 and store.all_steps() == [1, 3]  # Best and latest kept.
  store.close()


def test_random_bit_flips_in_every_file_kind_are_detected(tmp_path):
  directory = str(tmp_path / "ck")
  _store_with_steps(directory, [0.4, 0.5]).close()
  step_dir = os.path.join(directory, "2")
  kinds = collections.defaultdict(list)
  for root, _, names in os.walk(step_dir):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      kinds[_kind(rel)].append(rel)
  assert checkpoints_lib.MANIFEST in kinds and "state/_METADATA" in kinds
  rng, trials, counts = random.Random(0), 10, collections.Counter()
  abstract = checkpoints_lib.abstract_like(_state(0.0, 0))
  for kind, files in sorted(kinds.items()):
    for _ in range(trials):
      rel = rng.choice(files)
      path = os.path.join(step_dir, rel)
      original = open(path, "rb").read()
      _flip_bit(path, rng)
      store = checkpoints_lib.CheckpointStore(directory)
      try:
        store.restore(2, abstract)
        counts["silent"] += 1
      except checkpoints_lib.CorruptCheckpoint as e:
        msg = str(e)
        assert "\n" not in msg and "step 2" in msg and f"file {rel} " in msg, msg
        counts["detected"] += 1
      finally:
        store.close()
        with open(path, "wb") as f:  # Undo the flip for the next trial.
          f.write(original)
  print(f"{len(kinds)} file kinds x {trials} trials: {dict(counts)}")
  assert counts == {"detected": len(kinds) * trials}, counts
  store = checkpoints_lib.CheckpointStore(directory)
  assert store.intact_steps() == [1, 2]  # Every flip undone: intact again.
  store.close()


def test_a_step_without_a_manifest_is_incomplete(tmp_path):
  store = _store_with_steps(str(tmp_path / "ck"), [0.4])
  os.remove(os.path.join(store.step_dir(1), checkpoints_lib.MANIFEST))
  with pytest.raises(checkpoints_lib.CorruptCheckpoint, match="step 1 .* is incomplete"):
    store.restore_meta(1)
  store.close()


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
  fingerprint = {"config": {"model": {"name": "toy", "hidden": 4}}}
  workdir = str(tmp_path)
  directory = os.path.join(workdir, "checkpoints")
  store = _store_with_steps(directory, [0.4, 0.5, 0.3], fingerprint)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3))
  data = [r for r in checkpoints_lib.step_files(store.step_dir(3)) if "/d/" in r][0]
  _flip_bit(os.path.join(store.step_dir(3), data), random.Random(1))
  store.close()
  store, lines = checkpoints_lib.CheckpointStore(directory), []
  state, progress, history = resume_lib.resume(store, _state(0.0, 0), fingerprint, workdir,
                                               log=lines.append)
  assert any("step 3" in l and data in l and "moved it to" in l for l in lines), lines
  assert "(step 2), the newest intact checkpoint" in lines[-1], lines
  assert int(state.step) == 2 and float(state.params["dense"]["kernel"][0, 0]) == 2.0
  assert progress["epoch"] == 2 and [r["epoch"] for r in history] == [1, 2]
  assert os.path.isdir(os.path.join(workdir, "checkpoints-corrupt", "3"))
  store.save(3, _state(3.0, 3), _meta(2, fingerprint), 0.3)  # Step 3 can be saved again.
  assert store.intact_steps() == [1, 2, 3]
  store.close()


# A real tiny run (2 epochs), for what goes through the command line and evaluate.
def _main(*args):
  return subprocess.run([sys.executable, "-m", "jaxquant.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("run")
  data, workdir = str(root / "data"), str(root / "run")
  p = _main("--config=configs/gru.py:quick", f"--workdir={workdir}",
            *tiny_flags(data, {"train.epochs": 2}))
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  return data, workdir


def _one_error_line(p):
  assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
  lines = p.stderr.strip().splitlines()
  assert len([l for l in lines if l.startswith("error:")]) == 1, p.stderr[-3000:]
  return lines[-1]


def test_another_model_or_size_names_what_the_run_was_trained_with(run, tmp_path):
  data, workdir = run
  trained = re.compile(r"trained as gru \(hidden=8, num_layers=1; "
                       r"[\d,]+ parameters\)")
  forced = str(tmp_path / "forced")
  shutil.copytree(workdir, forced)
  err = _one_error_line(_main("--config=configs/gru.py:quick", f"--workdir={forced}",
                              *tiny_flags(data, {"model.hidden": 12, "train.epochs": 3}),
                              "--force"))
  assert "does not fit this model" in err and trained.search(err), err
  assert "this config builds gru (" in err and "hidden=12" in err, err
  err = _one_error_line(_main("--mode=eval", f"--workdir={workdir}",
                              "--config=configs/lstm.py:quick", *tiny_flags(data)))
  assert trained.search(err) and "this config builds lstm" in err, err


def test_eval_refuses_a_corrupt_checkpoint_naming_the_file(run, tmp_path):
  _, workdir = run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  store = checkpoints_lib.CheckpointStore(os.path.join(copy, "checkpoints"))
  best, steps = store.best_step(), store.all_steps()
  rel = "state/_METADATA"
  _flip_bit(os.path.join(store.step_dir(best), rel), random.Random(2))
  store.close()
  with pytest.raises(checkpoints_lib.CorruptCheckpoint) as e:
    evaluate.restore(copy, evaluate.load_run_config(copy))
  intact = [s for s in steps if s != best]
  assert f"step {best}" in str(e.value) and f"file {rel} " in str(e.value)
  assert f"Intact steps: {intact}" in str(e.value), str(e.value)


def test_bad_json_in_checkpoint_meta_names_the_file(tmp_path):
  # (A JSON file that was written bad, so its checksum matches: the error says which.)
  store = _store_with_steps(str(tmp_path / "ck"), [0.4])
  path = os.path.join(store.step_dir(1), "meta", "metadata")
  with open(path, "w") as f:
    f.write('{"epoch": 0,')
  store._write_manifest(1)
  with pytest.raises(ValueError, match=re.escape(path) + " is not valid JSON"):
    store.restore_meta(1)
  store.close()


def test_init_from_a_run_of_another_model_or_size_names_what_it_was_trained_with(run):
  import optax
  from jaxquant import state as state_lib
  _, workdir = run
  config = evaluate.load_run_config(workdir)
  config.model.hidden = 12  # The same GRU, another size: Orbax's shape error.
  tx = optax.sgd(0.1)
  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"))
  num_features = len(store.restore_meta(store.best_step())["normalizer"]["mean"])
  store.close()
  bigger = state_lib.create_train_state(state_lib.make_model(config, 2), tx, num_features,
                                        config.data.window, 0)

  @flax.struct.dataclass
  class Tiny:  # Another model: names the checkpoint does not have (no error from Orbax).
    params: dict
    batch_stats: dict
    opt_state: dict

  other = Tiny(params={"dense": {"kernel": jnp.zeros((4, 3))}}, batch_stats={}, opt_state={})
  for state, count in ((bigger, state_lib.parameter_counts(bigger.params)["total"]),
                       (other, 12)):
    with pytest.raises(ValueError) as e:
      resume_lib.init_from_run(state, tx, workdir)
    msg = str(e.value)
    assert "\n" not in msg and re.search(
        r"trained as gru \(hidden=8, num_layers=1; [\d,]+ parameters\), this model has "
        f"{count:,} parameters", msg), msg
