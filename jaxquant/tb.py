"""TensorBoard scalars through tensorboardX: optional, and silent off process 0.

    tb = TBWriter(os.path.join(workdir, "tb"), enabled=jax.process_index() == 0)
    tb.scalars(epoch, {"train": {"loss": 0.31}, "val": {"f1": 0.2}, "moe/load": [0.3, 0.2]})
    tb.close()

writes the tags ``train/loss``, ``val/f1``, ``moe/load/0``, ``moe/load/1``.
tensorboardX is imported only when an enabled writer is created (it pulls in
torch when that is installed, which costs seconds), and a missing
tensorboardX degrades to one logged warning and a no-op writer: TensorBoard
is a convenience, never a reason for a training run to fail.

Events are written synchronously by the calling thread (tensorboardX's own
EventsWriter, no SummaryWriter): its writer thread dies on a full disk and the
next ``Queue.put`` then blocks forever, deaf to SIGTERM. Here a failed write or
flush raises at once, as an OSError naming the events file, and the writer
turns itself off.
"""

import logging
import math
import numbers
import os
import time
from collections.abc import Mapping

import numpy as np

_log = logging.getLogger(__name__)
_warned_missing = False


def _warn_missing(err):
  global _warned_missing
  if not _warned_missing:
    _warned_missing = True
    _log.warning("tensorboardX is not importable (%s): TensorBoard logging is off", err)


def flatten_scalars(values, prefix=""):
  """Flattens nested scalars into ``{"a/b/0": float}``.

  Args:
    values: a number, a (nested) mapping, or a list/tuple/array (numpy or
      anything ``np.asarray`` accepts, e.g. a jax.Array); elements of a
      sequence of length E become ``prefix/0 .. prefix/E-1``.
    prefix: tag of ``values`` itself.

  Returns:
    dict tag -> finite float. Non-finite numbers, None, strings and
    non-numeric arrays are skipped (TensorBoard cannot plot them).
  """
  out = {}
  _flatten(values, prefix, out)
  return out


def _join(prefix, key):
  return f"{prefix}/{key}" if prefix else str(key)


def _flatten(v, prefix, out):
  if v is None or isinstance(v, (str, bytes)):
    return
  if isinstance(v, Mapping):
    for k, item in v.items():
      _flatten(item, _join(prefix, k), out)
    return
  if isinstance(v, (bool, np.bool_, numbers.Number)):
    _put(v, prefix, out)
    return
  if isinstance(v, (list, tuple)):
    for i, item in enumerate(v):
      _flatten(item, _join(prefix, i), out)
    return
  try:
    arr = np.asarray(v)
  except Exception:  # pylint: disable=broad-except  # Not array-like: nothing to plot.
    return
  if arr.dtype.kind not in "biuf":
    return
  if arr.ndim == 0:
    _put(arr.item(), prefix, out)
    return
  for idx in np.ndindex(arr.shape):
    _put(arr[idx].item(), "/".join([prefix, *map(str, idx)]) if prefix else
         "/".join(map(str, idx)), out)


def _put(x, tag, out):
  if not tag:
    return  # A bare number has no name to log it under.
  try:
    x = float(x)
  except (TypeError, ValueError):
    return
  if math.isfinite(x):
    out[tag] = x


class TBWriter:
  """TensorBoard scalars that are safe to call anywhere and never block.

  Args:
    logdir: directory of the events files (created if missing).
    enabled: False (e.g. not process 0) makes every method a no-op and
      imports nothing.
  """

  def __init__(self, logdir, enabled=True):
    self.logdir = logdir
    self._writer = None
    if not enabled:
      return
    try:
      from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
      from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
      from tensorboardX.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      _warn_missing(e)
      return
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._guard(lambda: os.makedirs(str(logdir), exist_ok=True))
    self._writer = self._guard(
        lambda: event_file_writer.EventsWriter(os.path.join(str(logdir), "events")))

  @property
  def active(self):
    """Whether calls write anything."""
    return self._writer is not None

  def _guard(self, write):
    """Runs `write`; an OSError turns the writer off and is raised naming the events
    file (a full disk becomes cli's one-line error)."""
    try:
      return write()
    except OSError as e:
      path = getattr(getattr(self._writer, "_py_recordio_writer", None), "path", self.logdir)
      self._abandon()
      raise OSError(e.errno, f"{e.strerror}: cannot write TensorBoard events to {path}; "
                    "metrics.jsonl and the checkpoints saved so far are intact (free some "
                    "space and re-run the same command to resume, or turn TensorBoard off "
                    "with --config.eval.tensorboard=false)") from e

  def _abandon(self):
    """Drops the writer without flushing again (its buffer cannot reach the disk)."""
    writer, self._writer = self._writer, None
    f = getattr(getattr(writer, "_py_recordio_writer", None), "_writer", None)
    if f is not None:
      try:
        f.close()
      except OSError:
        pass  # The same failure, once more.

  def scalars(self, step, values):
    """Writes every finite scalar of ``values`` (see :func:`flatten_scalars`) at ``step``.

    Args:
      step: global step (e.g. epoch or optimizer step).
      values: (nested) dict of numbers / sequences.

    Returns:
      The number of scalars written.
    Raises:
      OSError: the events file cannot be written (the writer is then off).
    """
    if self._writer is None:
      return 0
    flat = flatten_scalars(values)
    wall = time.time()
    for tag, x in flat.items():
      event = self._event(wall_time=wall, step=int(step), summary=self._summary(
          value=[self._summary.Value(tag=tag, simple_value=x)]))
      self._guard(lambda e=event: self._writer.write_event(e))
    return len(flat)

  def flush(self):
    """Pushes pending events to disk (raises OSError as `scalars` does)."""
    if self._writer is not None:
      self._guard(self._writer.flush)

  def close(self):
    """Flushes and closes; later calls are no-ops."""
    if self._writer is not None:
      self._guard(self._writer.close)
      self._writer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False
