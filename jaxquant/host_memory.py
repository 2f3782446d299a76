"""Keep freed host memory in the process instead of handing it back to the OS.

glibc's malloc serves blocks over 32 MiB (its largest mmap threshold) with a
fresh mmap and unmaps them on free. XLA:CPU allocates each step's scratch
buffers anew, so a step with more than 32 MiB of temporaries (the quick MoE's
has) page-faults all of it in again, every step. What that costs:
`python benchmarks/train_step.py --quick --models=moe --out=` with and without
`--malloc=default` (docs/performance.md). With mmap off
(M_MMAP_MAX=0) and trimming at 2 GiB, freed blocks stay in the heap and the
next step reuses them; the process keeps its peak heap (a training process's
working set is the same every step anyway).

JAXQUANT_MALLOC=default leaves glibc's behaviour alone. Elsewhere (macOS, musl)
this does nothing.
"""

import ctypes
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_MAX = -4
_TRIM_AT = 2**31 - 1  # The largest int mallopt takes: 2 GiB.


@functools.lru_cache(maxsize=None)
def _glibc(name):
  """glibc's function `name`, or None (not Linux, not glibc)."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    return getattr(ctypes.CDLL("libc.so.6"), name)
  except (OSError, AttributeError):  # Not glibc.
    return None


def keep_freed_memory():
  """Applies the setting (glibc on Linux only); returns True when it did."""
  if os.environ.get("JAXQUANT_MALLOC", "").lower() == "default":
    return False
  mallopt = _glibc("mallopt")
  if mallopt is None:
    return False
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_AT))


def trim_heap():
  """Hands the free pages inside glibc's heap back to the OS (malloc_trim; elsewhere
  nothing): the holes a dropped array leaves, which free() keeps resident."""
  trim = _glibc("malloc_trim")
  if trim is not None:
    trim(0)
