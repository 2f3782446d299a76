"""Lanes: a population's members on every CPU core at once.

XLA:CPU runs a quick model's step on about one core (its small kernels gain little
from a second thread), and one program runs its members one after another (lax.map).
So on a one-device CPU mesh the members are split into lanes, one per core: each lane
is the same compiled program on its own slice of the members (sliced inside the
program), called from its own thread, and one more program joins the lanes' outputs
along the member axis. A member's arithmetic is the lane program's whatever lane it is
in (tests/test_population.py: bit for bit the one-lane result);
benchmarks/population.py measures the gain.
"""

import concurrent.futures
import os

import jax
import jax.numpy as jnp
from jax import lax


def cores():
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def lane_count(members, mesh):
  """Lanes for `members` on `mesh`: one per core (at most one per member) on a CPU
  mesh of one device; 1 anywhere else (an accelerator, or several devices, already
  runs members side by side)."""
  if mesh.size != 1 or mesh.devices.flat[0].platform != "cpu":
    return 1
  return max(1, min(int(members), cores()))


def bounds(members, lanes):
  """[(start, size)] of each lane: sizes differ by at most one, larger lanes first."""
  base, extra = divmod(int(members), int(lanes))
  out, start = [], 0
  for i in range(int(lanes)):
    size = base + (i < extra)
    out.append((start, size))
    start += size
  return out


def _slice(tree, start, size):
  return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), tree)


def _join(*outs):
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *outs)


class Lanes:
  """`fn(*args)` over a leading member axis, run as `lanes` concurrent lanes.

  Args:
    fn: a traceable function of stacked arguments returning stacked outputs ([M, ...]
      leaves), member by member independent (a population step or predict).
    members: M.
    lanes: how many lanes (lane_count); 1 runs `fn` as one program.
    sliced: per argument of `fn`, whether it has the member axis (sliced per lane) or
      is shared by every member (passed whole, e.g. the evaluation windows).
    compiler_options: jax.jit's, for every lane program.
  """

  def __init__(self, fn, members, lanes, sliced, compiler_options=None):
    self.bounds = bounds(members, lanes)
    self.sliced = tuple(sliced)
    opts = compiler_options or {}

    def lane_fn(size):
      def run(start, *args):
        return fn(*[_slice(a, start, size) if s else a for a, s in zip(args, self.sliced)])
      return jax.jit(run, compiler_options=opts)

    self._programs = {size: lane_fn(size) for size in {s for _, s in self.bounds}}
    self._join = jax.jit(_join)
    self._pool = (concurrent.futures.ThreadPoolExecutor(len(self.bounds), "lane")
                  if len(self.bounds) > 1 else None)

  def compile(self, *args):
    """Compiles every lane program (and the join) for these arguments ahead of time."""
    start = jnp.int32(0)
    outs = [jax.eval_shape(self._programs[size], start, *args) for _, size in self.bounds]
    for size, program in self._programs.items():
      self._programs[size] = program.lower(start, *args).compile()
    if self._pool is not None:
      self._join = self._join.lower(*outs).compile()
    return self

  def _run_lane(self, start, size, args):
    out = self._programs[size](jnp.int32(start), *args)
    return jax.block_until_ready(out)  # In the lane's thread: the lanes run at once.

  def __call__(self, *args):
    if self._pool is None:
      start, size = self.bounds[0]
      return self._programs[size](jnp.int32(start), *args)
    futures = [self._pool.submit(self._run_lane, start, size, args)
               for start, size in self.bounds]
    return self._join(*[f.result() for f in futures])
