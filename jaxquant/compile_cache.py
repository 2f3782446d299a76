"""JAX's persistent compilation cache: a re-run, a resume or an evaluation of the same
model loads its compiled steps instead of compiling them again.

Directory: $JAXQUANT_COMPILATION_CACHE, default ~/.cache/jaxquant/jax_compilation_cache;
JAXQUANT_COMPILATION_CACHE=off disables it. Entries are keyed by the program, the
compiler options and the devices, so a cached executable is the one a fresh compile
would produce (resumed runs stay bit-identical).
"""

import os

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "jaxquant", "jax_compilation_cache")


def enable():
  """Turns the cache on (unless disabled); returns its directory or None."""
  path = os.environ.get("JAXQUANT_COMPILATION_CACHE", DEFAULT_DIR)
  if path.lower() in ("", "0", "off", "none"):
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:  # A read-only home: run without the cache rather than fail.
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every step, not only those over JAX's default of 1 s: many of ours compile faster.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return path
