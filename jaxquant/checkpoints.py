"""Orbax checkpoints: the best by validation F1 (never a collapsed model) and the latest.

Each epoch saves two items: `state` (params, batch_stats, opt_state, step) and
`meta` (JSON: epoch, threshold, validation metrics, normalisation statistics,
early-stopping state). The manager keeps the `keep_best` best by `score`
(validation F1, or -1 for a collapsed model) AND the latest step, kept apart by
a preservation policy: the legacy `max_to_keep` + `best_fn` would delete the
newest step and lose the resume point.

Once Orbax has finished a step, a checksum manifest (sha256 of every file of the
step) is written into it atomically: a step without one is incomplete, and every
restore verifies it first, so a flipped bit is one line naming the step and the file
instead of changed parameters, NaN scores or TensorStore tracebacks.
"""

import contextlib
import errno
import hashlib
import json
import math
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
MANIFEST = "jaxquant_checksums.json"  # In each step's directory, written after Orbax's files.


class DiskFull(OSError):
  """A checkpoint could not be written for lack of space; earlier ones are intact."""


class CorruptCheckpoint(ValueError):
  """A step's files do not match its checksum manifest (or it has none: incomplete)."""


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
  """Sort key of a step: its score, then the EARLIER step on a tie, as the training
  loop's `improved = score > best` has it (the first epoch to reach a score is "best so
  far", a later equal one is not), so the log and best_step name the same checkpoint.
  Orbax sorts ascending and takes the last: -step puts the earliest tied step last.
  (Steps saved before "step" was recorded tie-break as Orbax does: the latest.)
  Unreadable metrics (a corrupt file; `verify` names it) are never "best"."""
  try:
    score, step = float(metrics["score"]), int(metrics.get("step", 0))
  except (TypeError, KeyError, ValueError, AttributeError):
    return (-math.inf, 0)
  return (score if math.isfinite(score) else -math.inf, -step)


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, but a step whose metrics file is not JSON (corrupt) is a step
  without metrics instead of an exception out of the constructor: the store opens and
  `verify` reports that step in one line, so resume can fall back past it."""

  def _get_metrics(self, step):
    try:
      return super()._get_metrics(step)
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError.
      return None


def _files_digest(files):
  """The manifest's own checksum: a flipped bit in the manifest is caught too."""
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def step_files(step_dir):
  """Every file of a step, as sorted paths relative to `step_dir` (the manifest aside)."""
  out = []
  for root, _, names in os.walk(step_dir):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      if rel != MANIFEST:
        out.append(rel)
  return sorted(out)


class CheckpointStore:
  """Saves and restores training checkpoints under `directory`."""

  def __init__(self, directory, keep_best=2):
    # Orbax's OCDBT writer refuses relative paths, and a default workdir is relative.
    directory = os.path.abspath(directory)
    self.directory = directory
    self._verified = set()  # Steps hashed once by this store (resume reads one 3 times).
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(get_metric_fn=_score, reverse=False, n=keep_best),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_score, best_mode="max", preservation_policy=policy,
        enable_async_checkpointing=False)
    # Orbax logs the text of a corrupt step's metadata file while opening: `verify`
    # says the same in one line, so that noise is dropped (JAXQUANT_DEBUG=1 keeps it).
    with _stderr_held_back(keep=lambda: False):
      self._manager = _Manager(directory, options=options, item_names=("state", "meta"))

  def save(self, step, state, meta, score):
    """Saves `state` (a pytree) and `meta` (JSON-able dict) at `step` with its score.

    Raises:
      DiskFull: the disk filled up; the half-written step is removed and the
        earlier checkpoints are untouched (Orbax writes a step into a temporary
        directory and renames it only once complete, and deletes old steps only
        after a successful save).
    """
    full = []  # The disk-full error, if any: its library noise is not replayed.
    self._verified.discard(step)  # A step set aside and saved again is new.
    with _stderr_held_back(keep=lambda: not full):
      try:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics={"score": float(score), "step": int(step)})
        self._manager.wait_until_finished()
        self._write_manifest(step)
      except Exception as e:
        if not io_utils.is_disk_full(e):
          raise
        full.append(e)
        self._remove_unfinished(step)
        if step in self._manager.all_steps():  # Finished by Orbax, but no manifest.
          shutil.rmtree(self.step_dir(step), ignore_errors=True)
          self._manager.reload()
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

  def step_dir(self, step):
    return os.path.join(self.directory, str(step))

  def _write_manifest(self, step):
    """sha256 of every file of the finished `step`, written atomically by process 0
    (after Orbax's barrier: every process's files are in place)."""
    if jax.process_index() != 0:
      return
    d = self.step_dir(step)
    files = {rel: io_utils.file_sha256(os.path.join(d, rel)) for rel in step_files(d)}
    io_utils.atomic_write_json(os.path.join(d, MANIFEST), {
        "step": int(step), "files": files, "digest": _files_digest(files)})

  def verify(self, step):
    """Checks every file of `step` against its manifest.

    Raises:
      CorruptCheckpoint: one line naming the step and the (first) bad file.
    """
    if step in self._verified:
      return
    d = self.step_dir(step)
    where = f"checkpoint step {step} in {self.directory}"
    path = os.path.join(d, MANIFEST)
    if not os.path.exists(path):
      raise CorruptCheckpoint(f"{where} is incomplete: it has no {MANIFEST} (its save did "
                              "not finish, or it was written before checksums were kept)")
    try:
      with open(path, "rb") as f:
        manifest = json.loads(f.read().decode("utf-8"))
      files = manifest["files"]
      ok = manifest["step"] == step and manifest["digest"] == _files_digest(files)
    except (ValueError, KeyError, TypeError) as e:  # Not JSON, or not ours.
      raise CorruptCheckpoint(f"{where} is corrupt: file {MANIFEST} is unreadable "
                              f"({type(e).__name__})") from e
    if not ok:
      raise CorruptCheckpoint(f"{where} is corrupt: file {MANIFEST} does not match its "
                              "own checksum")
    for rel in sorted(files):
      try:
        good = io_utils.file_sha256(os.path.join(d, rel)) == files[rel]
      except OSError as e:
        raise CorruptCheckpoint(f"{where} is corrupt: file {rel} cannot be read "
                                f"({e.strerror})") from e
      if not good:
        raise CorruptCheckpoint(f"{where} is corrupt: file {rel} does not match its sha256 "
                                "checksum")
    self._verified.add(step)

  def check_steps(self):
    """{step: None if intact, else the CorruptCheckpoint} for every step."""
    out = {}
    for step in self.all_steps():
      try:
        self.verify(step)
        out[step] = None
      except CorruptCheckpoint as e:
        out[step] = e
    return out

  def intact_steps(self):
    return [s for s, e in self.check_steps().items() if e is None]

  def set_aside_corrupt(self):
    """Moves every corrupt or incomplete step out of the store, to checkpoints-corrupt/
    (kept for a look), so the latest step left is the newest intact one and training
    can save those steps again. Process 0 checks and moves, then every process rereads
    the directory. Returns [(step, CorruptCheckpoint, where it went)] (on process 0)."""
    moved = []
    if jax.process_index() == 0:
      root = os.path.join(os.path.dirname(self.directory),
                          os.path.basename(self.directory) + "-corrupt")
      for step, e in self.check_steps().items():
        if e is not None:
          target, n = os.path.join(root, str(step)), 1
          while os.path.exists(target):  # The same step set aside before.
            n += 1
            target = os.path.join(root, f"{step}.{n}")
          os.makedirs(root, exist_ok=True)
          shutil.move(self.step_dir(step), target)
          moved.append((step, e, target))
    if jax.process_count() > 1:  # No process rereads before process 0 has moved them.
      ocp.multihost.sync_global_processes("jaxquant_set_aside_corrupt")
    self._manager.reload()
    return moved

  def latest_step(self):
    return self._manager.latest_step()

  def best_step(self):
    return self._manager.best_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def restore_meta(self, step):
    self.verify(step)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except json.JSONDecodeError as e:  # Name the file, not just the position.
      path = os.path.join(self.step_dir(step), "meta", "metadata")
      raise ValueError(f"checkpoint step {step}: {path} is not valid JSON ({e})") from e

  def restore(self, step, abstract_state):
    """Restores (state, meta) at `step`; `abstract_state` gives the tree structure, shapes
    and shardings (e.g. from `jax.eval_shape`), so a checkpoint written on any device count
    restores onto the current devices."""
    self.verify(step)
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
    self.verify(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_subtree,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtree),
            partial_restore=True)))
    return restored["state"]

  def close(self):
    self._manager.close()


def model_description(model, parameters=None):
  """'gru (hidden=64, num_layers=1; 25,922 parameters)': a model section (dict) by its
  name and sizes (its integer settings), and its parameter count when known."""
  model = dict(model or {})
  is_size = lambda v: isinstance(v, int) and not isinstance(v, bool)
  sizes = [f"{k}={v}" for k, v in sorted(model.items())
           if is_size(v) or (isinstance(v, (list, tuple)) and v and all(map(is_size, v)))]
  count = (parameters or {}).get("total") if isinstance(parameters, dict) else parameters
  tail = "; ".join(x for x in (", ".join(sizes), f"{count:,} parameters" if count else "") if x)
  return f"{model.get('name', '(unknown model)')}" + (f" ({tail})" if tail else "")


def trained_model(meta):
  """How a checkpoint's model was built, from its meta (fingerprint config, parameters)."""
  config = (meta.get("fingerprint") or {}).get("config") or {}
  return model_description(config.get("model"), meta.get("parameters"))


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a concrete pytree, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
