"""jaxquant.host_memory: with it, a 64 MiB block comes from the heap (kept and
reused after free) instead of a fresh mmap (unmapped on free, faulted in anew)."""

import subprocess
import sys

import pytest

_PROBE = """
import ctypes
from jaxquant import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
first = libc.malloc(64 << 20)
libc.free(first)
second = libc.malloc(64 << 20)
heap = [tuple(int(a, 16) for a in line.split()[0].split("-"))
        for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
in_heap = any(lo <= second < hi for lo, hi in heap)
print(int(applied), int(in_heap), int(first == second))
"""


def _probe(env_value):
  env = {"JAXQUANT_MALLOC": env_value, "PATH": "/usr/bin:/bin"}
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       env=env, check=True, timeout=60).stdout.split()
  return [bool(int(v)) for v in out]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_large_blocks_come_from_the_heap_and_are_reused():
  applied, in_heap, reused = _probe("")
  if not applied:
    pytest.skip("not glibc")
  assert in_heap and reused
  applied, in_heap, _ = _probe("default")  # glibc's own: a separate mapping.
  assert not applied and not in_heap
