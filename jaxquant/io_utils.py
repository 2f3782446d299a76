"""Atomic file-writing helpers.

Every writer goes through a temp file in the target's directory followed by
`os.replace`: a reader (or a crash) can observe either the old file or the
complete new one, never a half-written file.
"""

import errno
import hashlib
import json
import os
import tempfile


def _read_umask():
  # os.umask can only be read by setting it; do it once, at import time.
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


_UMASK = _read_umask()


def _fsync_dir(directory):
  """Make the rename durable. Some platforms/filesystems refuse this; ignore."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def file_sha256(path, block=1 << 20):
  """The sha256 hex digest of a file, read in blocks (constant memory)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(block):
      h.update(chunk)
  return h.hexdigest()


def atomic_write_bytes(path, data):
  """Atomically replace `path` with `data`.

  Args:
    path: target file; parent directories are created if missing.
    data: the complete new content.

  On any exception the temp file is removed and the exception re-raised;
  the target is left untouched.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  name = os.path.basename(path)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=".tmp")
  try:
    # mkstemp creates 0600 files; give the result the mode a plain open()
    # would (or keep the mode of the file being replaced).
    try:
      mode = os.stat(path).st_mode & 0o7777
    except OSError:
      mode = 0o666 & ~_UMASK
    if hasattr(os, "fchmod"):
      os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    if isinstance(e, OSError) and e.errno is not None and e.filename is None:
      raise OSError(e.errno, e.strerror, path) from e  # Say which file (disk full).
    raise
  _fsync_dir(directory)


def atomic_write_text(path, text):
  """Atomically replace `path` with `text` encoded as UTF-8.

  Args:
    path: target file; parent directories are created if missing.
    text: the complete new content.
  """
  atomic_write_bytes(path, text.encode("utf-8"))


def json_default(obj):
  """Convert numpy scalars/arrays (and other array-likes) for `json`."""
  if hasattr(obj, "tolist"):  # numpy arrays and numpy scalars
    return obj.tolist()
  if hasattr(obj, "__float__"):
    return float(obj)
  raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path, obj):
  """Atomically write `obj` as indented JSON (numpy values converted).

  Args:
    path: target file.
    obj: JSON-serialisable object; numpy scalars/arrays are allowed.
  """
  text = json.dumps(obj, indent=2, sort_keys=False, default=json_default)
  atomic_write_text(path, text + "\n")


def append_jsonl(path, obj):
  """Append `obj` as one JSON line to `path`, atomically.

  The file is read and rewritten whole (these logs are small), so a crash
  never leaves a partial last line.

  Args:
    path: JSONL file; created if missing.
    obj: JSON-serialisable object; numpy values are allowed.
  """
  path = os.fspath(path)
  try:
    with open(path, "r", encoding="utf-8") as f:
      old = f.read()
  except FileNotFoundError:
    old = ""
  if old and not old.endswith("\n"):
    old += "\n"
  line = json.dumps(obj, default=json_default)
  atomic_write_text(path, old + line + "\n")


def replace_markdown_section(path, heading, body, title=""):
  """Atomically replace (or append) the section `heading` of a markdown file.

  The section runs from `heading` (a line such as `"## Soak"`) to the next
  `"## "` heading; the rest of the file is kept. A missing file starts as
  `"# {title}"`.
  """
  head = heading.rstrip("\n") + "\n\n"
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    text = f"# {title}\n\n" if title else ""
  if head in text:
    before, after = text.split(head, 1)
    rest = after.split("\n## ", 1)
    text = before + head + body + ("\n## " + rest[1] if len(rest) > 1 else "")
  else:
    text = text.rstrip("\n") + "\n\n" + head + body
  atomic_write_text(path, text)


# Errors that mean "the disk (or a quota / file-size limit) is full".
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


def is_disk_full(exc):
  """Whether `exc` (or an exception it was raised from) is a full disk / quota / size limit.

  Orbax writes through TensorStore, which reports OS errors as ValueErrors whose
  text carries the strerror, so the text is checked too."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
      return True
    if any(t in str(exc) for t in FULL_TEXTS):
      return True
    exc = exc.__cause__ or exc.__context__
  return False
