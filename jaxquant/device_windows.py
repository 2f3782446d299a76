"""Windows gathered on the device: the feature matrix placed once, the step fed indices.

A training window is rows end-T+1 .. end of the [N, F] feature matrix (data.dataset), so
the host need only send each window's end row: `gather_step` and `gather_predict` wrap a
step taking `x [B, T, F]` into one taking `ends [B]` int32 and the matrix, and gather
`x = features[ends[:, None] + arange(1 - T, 1)]` inside the jit. A gather is a copy, so
the windows are bitwise those of `Dataset.windows`, and so is everything the step makes.

The matrix lives on every device of the mesh (replicated: batches are split over the
data axis, and any row may be any device's). `for_run` decides, by
`config.data.device_windows`, whether a run does this; the host gather
(loader.train_batches) stays for data over the budget and for oversampling jitter, whose
noise is drawn on the host.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import parallel

MODES = ("auto", "on", "off")
# The matrix is copied to every device: a quarter of the smallest one's memory leaves the
# rest to the model, its optimizer state and the step's activations.
DEVICE_SHARE = 0.25
# CPU devices report no memory limit; their "device" memory is the host's, which already
# holds the matrix once, so a copy past this is better served from the host.
CPU_BUDGET_BYTES = 2 * 2**30


class DeviceWindows(NamedTuple):
  """A feature matrix placed on a mesh, and the window its steps cut from it."""
  features: Any  # jax.Array, replicated on the mesh.
  host: np.ndarray  # The host matrix it was placed from (other data gathers on the host).
  window: Any  # T; None when the matrix holds whole samples [N, T, F] (data.source="samples").


def gather_windows(features, ends, window):
  """The windows ending at rows `ends` (traceable; the same copy as Dataset.windows).

  Args:
    features: [N, F] matrix, or [N, T, F] pre-cut samples when `window` is None.
    ends: [B] int32 end rows (always >= T - 1 and < N: Split.ends).
    window: T, or None for pre-cut samples.

  Returns:
    [B, T, F] windows, in the matrix's dtype.
  """
  if window is None:
    return jnp.take(features, ends, axis=0, mode="clip")
  rows = ends[:, None] + jnp.arange(1 - window, 1, dtype=ends.dtype)[None, :]
  # "clip" is XLA's own gather semantics (no masking pass); ends are in range anyway.
  return jnp.take(features, rows, axis=0, mode="clip")


def gather_step(step, window):
  """Turns `step(state, batch, rng)` on batch {"x", "y", "r", ...} into
  `step(state, batch, rng, features)` on batch {"ends", "y", "r", ...} (pure; jit it).

  Args:
    step: a train step (steps.make_train_step's, or any with that signature, vmapped
      over members included).
    window: T (None: `features` holds pre-cut samples).

  Returns:
    The wrapped step; every key of the batch but "ends" is passed on unchanged.
  """
  def train_step(state, batch, rng, features):
    rest = {k: v for k, v in batch.items() if k != "ends"}
    return step(state, {**rest, "x": gather_windows(features, batch["ends"], window)}, rng)
  return train_step


def gather_predict(predict, window):
  """Turns `predict(state, x)` into `predict(state, ends, features)` (pure; jit it)."""
  def predict_ends(state, ends, features):
    return predict(state, gather_windows(features, ends, window))
  return predict_ends


def host_matrix(ds):
  """The array a dataset's windows are cut from: Dataset.features [N, F] or
  SampleDataset.samples [N, T, F]; and the window to cut (None for samples)."""
  if getattr(ds, "features", None) is not None:
    return ds.features, ds.window
  return ds.samples, None


def budget_bytes(devices):
  """Bytes a replicated matrix may take: DEVICE_SHARE of the smallest device's memory
  limit, CPU_BUDGET_BYTES where a device reports none (CPU)."""
  limits = []
  for d in devices:
    try:
      limits.append((d.memory_stats() or {}).get("bytes_limit"))
    except Exception:  # CPU devices may not report memory at all.
      limits.append(None)
  if not limits or any(lim is None for lim in limits):
    return CPU_BUDGET_BYTES
  return int(DEVICE_SHARE * min(limits))


def why_not(data_config, ds, devices):
  """Why this run's windows cannot be gathered on `devices` (None: they can)."""
  matrix, _ = host_matrix(ds)
  if data_config.get("oversample_jitter", 0.0) > 0 and data_config.sampler == "oversample":
    return (f"data.oversample_jitter={data_config.oversample_jitter:g} adds noise to "
            "repeated windows on the host")
  if matrix.shape[0] >= 2**31:
    return f"{matrix.shape[0]:,} rows do not fit int32 window indices"
  budget = budget_bytes(devices)
  if matrix.nbytes > budget:
    return (f"the feature matrix ({matrix.nbytes / 2**20:,.0f} MiB) is over the device "
            f"budget ({budget / 2**20:,.0f} MiB: {DEVICE_SHARE:.0%} of device memory, "
            f"{CPU_BUDGET_BYTES / 2**30:g} GiB on a CPU)")
  return None


def place(matrix, mesh):
  """`matrix` replicated on every device of `mesh` (each process gives its own devices'
  copies, so it works across processes: every process holds the whole matrix)."""
  sharding = parallel.replicated(mesh)
  return jax.make_array_from_callback(matrix.shape, sharding, lambda index: matrix[index])


def for_run(data_config, ds, mesh, log=print):
  """The run's DeviceWindows by data.device_windows, or None for the host gather.

  Args:
    data_config: config.data ("auto": on when possible, the reason logged once when not;
      "on": required; "off": the host gather).
    ds: the run's Dataset or SampleDataset.
    mesh: the run's mesh.
    log: where the decision goes (one line).

  Raises:
    ValueError: "on" and the windows cannot be gathered on the devices.
  """
  mode = data_config.get("device_windows", "off")
  if mode not in MODES:
    raise ValueError(f"config.data.device_windows={mode!r} is invalid: use one of {MODES}")
  if mode == "off":
    return None
  reason = why_not(data_config, ds, list(mesh.devices.flat))
  if reason is not None:
    if mode == "on":
      raise ValueError(f"config.data.device_windows='on' is impossible: {reason}; "
                       "use 'auto' or 'off'")
    log(f"Windows gathered on the host (data.device_windows='auto'): {reason}.")
    return None
  matrix, window = host_matrix(ds)
  cpu = mesh.devices.flat[0].platform == "cpu"
  log(f"Windows gathered on the device: the {matrix.shape} feature matrix "
      f"({matrix.nbytes / 2**20:,.1f} MiB) placed on each of {mesh.size} device(s)"
      f"{' (on a CPU: copies in host memory)' if cpu else ''}; batches send window ends.")
  return DeviceWindows(place(matrix, mesh), matrix, window)
