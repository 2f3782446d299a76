"""Device mesh, shardings and multi-process setup (JAX's sharding API; no pmap).

The batch is split over the "data" axis; parameters and optimizer state are
replicated, except stacked MoE expert weights, split over the "expert" axis.
With mesh.member > 1 a leading "member" axis splits a population's members
(jaxquant/population.py); with mesh.member = 1 the mesh is (data, expert) alone.
With jit + NamedShardings, XLA inserts the collectives, so BatchNorm batch
statistics and gradients are computed over the global batch on any device count.
"""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxquant.models import moe

DATA, EXPERT, MEMBER = "data", "expert", "member"


def make_mesh(mesh_config, devices=None):
  """A (data, expert) mesh over all devices; -1 on an axis takes the remaining devices.

  Args:
    mesh_config: config.mesh. With mesh.member > 1 (or -1: the devices mesh.data and
      mesh.expert leave, mesh.data=-1 counting as 1) the mesh is (member, data, expert),
      the member axis outermost; configs saved before mesh.member read as 1.
    devices: the devices to lay out (default all of them).

  Returns:
    The jax.sharding.Mesh.
  """
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  data, expert = int(mesh_config.data), int(mesh_config.expert)
  member = int(mesh_config.get("member", 1))
  if data == -1 and expert == -1:
    raise ValueError("config.mesh: only one of mesh.data / mesh.expert may be -1")
  if member == -1:
    member = n // (max(data, 1) * max(expert, 1))
  if data == -1:
    data = n // (max(member, 1) * max(expert, 1))
  if expert == -1:
    expert = n // (max(member, 1) * max(data, 1))
  if member * data * expert != n or min(member, data, expert) < 1:
    shown = f"data={mesh_config.data} x expert={mesh_config.expert}"
    if int(mesh_config.get("member", 1)) != 1:
      shown = f"member={mesh_config.member} x {shown}"
    raise ValueError(f"config.mesh: {shown} does not cover the {n} devices")
  return _mesh(data, expert, member, devices)


def restore_mesh(mesh_config):
  """A mesh for restoring a run on this machine, whatever devices the run trained on: its
  own mesh where it covers the devices here, else every device with the run's expert
  split where it divides them (else none). Predictions are the same on any mesh."""
  try:
    return make_mesh(mesh_config)
  except ValueError:
    n, expert = jax.device_count(), int(mesh_config.expert)
    expert = expert if expert >= 1 and n % expert == 0 else 1
    return _mesh(n // expert, expert)


def _mesh(data, expert, member=1, devices=None):
  shape, names = ((data, expert), (DATA, EXPERT)) if member == 1 else (
      (member, data, expert), (MEMBER, DATA, EXPERT))
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def member_devices(mesh):
  """Devices on the mesh's member axis (1 where it has none)."""
  return dict(mesh.shape).get(MEMBER, 1)


def batch_sharding(mesh):
  """Leading (batch) axis split over every device of the mesh (a single run on a mesh
  with a member axis uses its devices for data too)."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh):
  return NamedSharding(mesh, P())


def state_shardings(state, mesh):
  """Replicated everywhere except stacked expert weights ([E, ...]) over "expert"."""
  experts = mesh.shape[EXPERT]

  def spec(path, leaf):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
    shape = getattr(leaf, "shape", ())
    if (experts > 1 and name in moe.EXPERT_PARAM_NAMES and len(shape) >= 2
        and shape[0] % experts == 0):
      return NamedSharding(mesh, P(EXPERT))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(spec, state)


def check_batch_divides(batch_size, mesh, what="train.batch_size"):
  """The global batch must split evenly over processes and devices."""
  n_proc, n_dev = jax.process_count(), mesh.size
  if batch_size % n_dev or batch_size % n_proc:
    raise ValueError(f"config.{what}={batch_size} does not divide over {n_dev} devices "
                     f"in {n_proc} process(es); use a multiple of {n_dev}")


def process_slice(batch_size):
  """The rows [start, stop) of a global batch that this process feeds."""
  per = batch_size // jax.process_count()
  start = jax.process_index() * per
  return start, start + per


def global_batch(local, sharding):
  """Assembles a global array from this process's rows of every field of `local`."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def describe_mesh(mesh):
  """One line: devices, mesh and memory, logged at start."""
  dev = jax.local_devices()[0]
  mem = ""
  try:
    stats = dev.memory_stats() or {}
    if "bytes_limit" in stats:
      mem = f", {stats['bytes_limit'] / 2**30:.1f} GiB per device"
  except Exception:  # CPU devices may not report memory.
    pass
  return (f"{jax.device_count()} {dev.platform} device(s) in {jax.process_count()} "
          f"process(es), mesh {dict(mesh.shape)}{mem}")
