"""Orbax checkpoints: the best by validation F1 (never a collapsed model) and the latest.

Each epoch saves two items: `state` (params, batch_stats, opt_state, step) and
`meta` (JSON: epoch, threshold, validation metrics, normalisation statistics,
early-stopping state). The manager keeps the `keep_best` best by `score`
(validation F1, or -1 for a collapsed model) AND the latest step, kept apart by
a preservation policy: the legacy `max_to_keep` + `best_fn` would delete the
newest step and lose the resume point.
"""

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxquant import io_utils

COLLAPSED_SCORE = -1.0  # Below any real F1, so a collapsed model is never "best".
PREEMPTED_SCORE = -2.0  # A mid-epoch save (SIGTERM) has no validation: never "best".


class DiskFull(OSError):
  """A checkpoint could not be written for lack of space; earlier ones are intact."""


@contextlib.contextmanager
def _stderr_held_back(keep):
  """Holds back what is written to file descriptor 2 (Python and C++ threads alike)
  inside the block, then replays it unless `keep()` says not to — so a save that
  fails for a full disk shows one clear line, not Orbax/TensorStore's thread
  tracebacks. `keep` is called after the block; JAXQUANT_DEBUG=1 keeps everything."""
  if os.environ.get("JAXQUANT_DEBUG"):
    keep = lambda: True
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:  # Unlinked at once: no space needed in the dir.
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if keep():
        held.seek(0)
        text = held.read()
        if text:
          sys.stderr.write(text.decode("utf-8", "replace"))
          sys.stderr.flush()


def _full_reason(exc):
  """'No space left on device' (or the like) out of `exc`'s text, else its first line."""
  text = str(exc)
  for t in io_utils.FULL_TEXTS:
    if t in text:
      return t
  return exc.strerror if isinstance(exc, OSError) and exc.strerror else text.splitlines()[0][:160]


def _score(metrics):
  return metrics["score"]


class CheckpointStore:
  """Saves and restores training checkpoints under `directory`."""

  def __init__(self, directory, keep_best=2):
    # Orbax's OCDBT writer refuses relative paths, and a default workdir is relative.
    directory = os.path.abspath(directory)
    self.directory = directory
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(get_metric_fn=_score, reverse=False, n=keep_best),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_score, best_mode="max", preservation_policy=policy,
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(directory, options=options,
                                          item_names=("state", "meta"))

  def save(self, step, state, meta, score):
    """Saves `state` (a pytree) and `meta` (JSON-able dict) at `step` with its score.

    Raises:
      DiskFull: the disk filled up; the half-written step is removed and the
        earlier checkpoints are untouched (Orbax writes a step into a temporary
        directory and renames it only once complete, and deletes old steps only
        after a successful save).
    """
    full = []  # The disk-full error, if any: its library noise is not replayed.
    with _stderr_held_back(keep=lambda: not full):
      try:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics={"score": float(score)})
        self._manager.wait_until_finished()
      except Exception as e:
        if not io_utils.is_disk_full(e):
          raise
        full.append(e)
        self._remove_unfinished(step)
        kept = [s for s in self._manager.all_steps() if s != step]
        raise DiskFull(errno.ENOSPC,
                       f"disk full while saving checkpoint step {step} in {self.directory} "
                       f"({_full_reason(e)}); the earlier checkpoints are intact "
                       f"(steps {kept or 'none'}): free some space and re-run the same "
                       "command to resume") from e

  def _remove_unfinished(self, step):
    """Deletes the temporary directory of a failed save of `step` (frees its space),
    once Orbax's writer threads for it have stopped (they can outlive the error)."""
    try:
      self._manager.wait_until_finished()
    except Exception:  # The same failure, reported again: already being handled.
      pass
    for _ in range(50):
      leftovers = [os.path.join(self.directory, n) for n in os.listdir(self.directory)
                   if n.startswith(f"{step}.") and "tmp" in n]
      if not leftovers:
        return
      for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
      time.sleep(0.1)

  def latest_step(self):
    return self._manager.latest_step()

  def best_step(self):
    return self._manager.best_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def restore_meta(self, step):
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step, abstract_state):
    """Restores (state, meta) at `step`; `abstract_state` gives the tree structure, shapes
    and shardings (e.g. from `jax.eval_shape`), so a checkpoint written on any device count
    restores onto the current devices."""
    failed = []
    # A checkpoint that does not fit fails in Orbax's threads too: the caller reports
    # the exception in one line, their tracebacks are dropped.
    with _stderr_held_back(keep=lambda: not failed):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception:
        failed.append(True)
        raise
    return restored["state"], restored["meta"]

  def restore_partial(self, step, abstract_subtree):
    """Restores only the entries of the saved state named in `abstract_subtree`
    (e.g. params and batch_stats, without the optimizer state)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_subtree,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtree),
            partial_restore=True)))
    return restored["state"]

  def close(self):
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a concrete pytree, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
