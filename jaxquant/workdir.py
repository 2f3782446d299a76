"""One run per workdir: an flock on `<workdir>/.jaxquant.lock`.

Training takes it exclusively, evaluation and prediction shared (several at once are
fine, none while a run trains). The kernel drops an flock when its process dies, so a
SIGKILLed run never blocks the next one; the exclusive holder writes its pid, host and
start time into the file so that a refused run can name it. Only process 0 of a
multi-process run takes it (the others write nothing to the workdir).
"""

import datetime
import errno
import fcntl
import functools
import os
import socket

LOCK_NAME = ".jaxquant.lock"
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_held = {}  # realpath -> [fd, shared, depth]: this process's own locks (re-entrant).


def make(workdir):
  """Creates `workdir` (and its parents); a path that cannot be one is a ValueError."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except FileExistsError:
    raise ValueError(f"workdir {workdir} exists and is not a directory") from None
  except NotADirectoryError:
    raise ValueError(f"workdir {workdir}: {_file_above(workdir)} is a file, not a "
                     "directory") from None
  except OSError as e:
    if e.errno not in _UNWRITABLE:
      raise
    raise ValueError(f"workdir {workdir} cannot be created ({e.strerror})") from None
  if not os.path.isdir(workdir):  # A symlink to a file, or the like.
    raise ValueError(f"workdir {workdir} exists and is not a directory")


def _file_above(path):
  p = os.path.abspath(path)
  while p != os.path.dirname(p):
    p = os.path.dirname(p)
    if os.path.exists(p) and not os.path.isdir(p):
      return p
  return "a parent"


def holder(workdir):
  """What the exclusive holder wrote into the lock file ('' when nothing)."""
  try:
    with open(os.path.join(workdir, LOCK_NAME), encoding="utf-8") as f:
      return f.read().strip()
  except (OSError, UnicodeDecodeError):
    return ""


class Lock:
  """This process's hold on a workdir; `release` (or the process's death) frees it."""

  def __init__(self, key=None):
    self._key = key

  def release(self):
    key, self._key = self._key, None
    entry = _held.get(key)
    if entry is None:
      return
    entry[2] -= 1
    if entry[2] == 0:
      del _held[key]
      os.close(entry[0])  # Closing the descriptor releases the flock.

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()
    return False


def lock(workdir, shared=False, lead=None):
  """Takes the workdir's lock (creating the workdir) or raises ValueError naming the holder.

  Args:
    workdir: run directory.
    shared: True for eval/predict (readers), False for a training run.
    lead: whether this is the process that takes it (default jax.process_index() == 0).

  Returns:
    A Lock (a no-op off the lead process). A lock this process already holds is taken
    again at no cost (training evaluates its own workdir at the end).
  """
  if lead is None:
    import jax  # pylint: disable=g-import-not-at-top  # Only when a run asks.
    lead = jax.process_index() == 0
  if not lead:
    return Lock()
  if not shared:
    make(workdir)
  elif not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir} is not a directory")
  key = os.path.realpath(workdir)
  entry = _held.get(key)
  if entry is not None:
    entry[2] += 1
    return Lock(key)
  path = os.path.join(workdir, LOCK_NAME)
  fd = _open(path, shared, workdir)
  if fd is None:
    return Lock()
  try:
    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise ValueError(_refusal(workdir, shared)) from None
  if not shared:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {stamp}\n"
                .encode(), 0)
    except OSError as e:  # A full disk: cli's one line, naming the file.
      os.close(fd)
      raise OSError(e.errno, e.strerror, path) from None
  _held[key] = [fd, shared, 1]
  return Lock(key)


def _open(path, shared, workdir):
  try:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    if e.errno not in _UNWRITABLE:
      raise
    if shared:  # A read-only run directory can still be evaluated (--out_dir).
      try:
        return os.open(path, os.O_RDONLY)
      except OSError:
        return None  # No lock file, and no run can write there to need one.
    raise ValueError(f"workdir {workdir} is not writable ({e.strerror})") from None


def _refusal(workdir, shared):
  who = holder(workdir)
  if not shared:
    probe = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDONLY)
    try:  # Only readers hold it when a shared lock is still free.
      fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
      return (f"workdir {workdir} is being evaluated by another process (--mode=eval or "
              "--mode=predict); wait for it to finish or use another --workdir")
    except BlockingIOError:
      pass
    finally:
      os.close(probe)
  return (f"workdir {workdir} is in use by another training run ({who or 'holder unknown'}); "
          "wait for it to finish or use another --workdir")


def locked(shared):
  """Decorator: `fn(workdir, ...)` runs holding the workdir's lock (see `lock`)."""
  def wrap(fn):
    @functools.wraps(fn)
    def inner(workdir, *args, **kwargs):
      with lock(workdir, shared=shared):
        return fn(workdir, *args, **kwargs)
    return inner
  return wrap
