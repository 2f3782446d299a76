"""Seeded synthetic futures market with a planted, weak, learnable signal.

Each instrument is a stochastic-volatility random walk on a Chinese-futures
style calendar (360 one-minute bars per weekday).  A latent AR(1) "order
flow" `s_t` drives next-minute returns with strength `signal` and is
visible only through noisy open-interest changes, so a model has to learn
"OI went up -> price drifts up" from the bars.  With `signal=0` prices are
a pure martingale and nothing is predictable.  Every formula and constant is
documented in `docs/data-format.md`.

CLI::

    python -m jaxquant.data.synth --out=DIR [--instruments=4 --days=30 --signal=1 --seed=0]
"""

import math
import os
import time

from absl import flags
import numpy as np

from jaxquant import cli
from jaxquant import io_utils
from jaxquant.data import instruments as instruments_lib
from jaxquant.data import shards

# --- model constants (see docs/data-format.md) ---------------------------
SIGNAL_BETA = 0.08          # return drift per unit of order flow, in units of sigma_t
SIGMA_LOW = 0.0006          # per-minute log-return vol, calm regime
SIGMA_HIGH = 0.0012         # per-minute log-return vol, stressed regime
SIGMA_FLAT = 0.00107        # constant vol of a signal=0 market: the RMS of the structured one
REGIME_SWITCH_P = 1.0 / 1500.0
EDGE_MINUTES = 10           # first/last minutes of a session with raised vol
EDGE_MULT = 1.5
GAP_MULT = 2.0              # extra multiplier on each session's first bar
T_DOF = 4                   # Student-t degrees of freedom of the innovations
FLOW_PHI = 0.97             # AR(1) coefficient of the latent order flow
OI_FLOW_COEF = 0.002        # d log OI per unit of order flow
OI_NOISE = 0.001            # d log OI noise std
OI_START_MULT = 100.0       # initial OI ~ 100 x base volume
VOL_SIGMA_ELAST = 0.5       # volume elasticity to sigma_t / SIGMA_LOW
VOL_FLOW_COEF = 0.3         # volume sensitivity to |s_t|
VOL_NOISE = 0.5             # log-volume noise std
RANGE_COEF = 0.3            # high/low excursion, in units of sigma_t

START_DATE = "2024-01-02"   # first trading day (weekdays only, no holidays)
SESSIONS = ((9 * 60, 11 * 60 + 30), (13 * 60 + 30, 15 * 60), (21 * 60, 23 * 60))
BARS_PER_DAY = sum(b - a for a, b in SESSIONS)  # 150 + 90 + 120 = 360

# name, base price, base volume (contracts per minute)
INSTRUMENTS = (
    ("SYN.rb", 3800.0, 1200.0),
    ("SYN.cu", 68000.0, 300.0),
    ("SYN.au", 480.0, 250.0),
    ("SYN.m", 3300.0, 900.0),
    ("SYN.ta", 5800.0, 700.0),
    ("SYN.i", 900.0, 600.0),
    ("SYN.ag", 5600.0, 800.0),
    ("SYN.y", 7800.0, 400.0),
)

SIGNAL_DESCRIPTION = (
    "Each instrument has a latent order-flow series s_t, a unit-variance AR(1) with "
    f"phi={FLOW_PHI}. The log return of bar t is r_t = signal * SIGNAL_BETA * sigma_t * "
    "s_{t-1} + sigma_t * eps_t (SIGNAL_BETA="
    f"{SIGNAL_BETA}, eps_t unit-variance Student-t({T_DOF}), sigma_t a regime-switching, "
    "intraday-U-shaped volatility), so recent order flow predicts the next returns. "
    "The volatility structure is scaled in by min(signal, 1) as well (predictable "
    "volatility alone makes a threshold label predictable). "
    "s_t is not observed directly: it shows only through open interest, "
    f"d log OI_t = {OI_FLOW_COEF} * s_t + {OI_NOISE} * xi_t, and weakly through volume. "
    "With signal=0 prices are an i.i.d. fat-tailed random walk with constant volatility "
    "and neither OI nor volume carries information about returns."
)


def instrument_spec(index):
  """Name, base price and base volume of instrument `index` (0-based).

  Indices past the built-in list get `SYN.x<index>` with a deterministic
  base price / volume, so any number of instruments can be generated.
  """
  if index < len(INSTRUMENTS):
    return INSTRUMENTS[index]
  return f"SYN.x{index}", 1000.0 * (1 + index % 7), 500.0


def trading_timestamps(days):
  """Bar-start timestamps (int64 ns, naive local time) of `days` trading days.

  Trading days are consecutive weekdays from `START_DATE`; each has the
  sessions in `SESSIONS` (360 one-minute bars).
  """
  dates = np.busday_offset(np.datetime64(START_DATE, "D"), np.arange(days), roll="forward")
  minutes = np.concatenate([np.arange(a, b) for a, b in SESSIONS])
  ts = dates.astype("datetime64[ns]")[:, None] + minutes.astype("timedelta64[m]")[None, :]
  return ts.reshape(-1).view(np.int64)


def _session_sigma_mult():
  """Per-bar-of-day volatility multiplier: intraday U-shape and session gaps."""
  mult = []
  for a, b in SESSIONS:
    m = np.ones(b - a)
    m[:EDGE_MINUTES] = EDGE_MULT
    m[-EDGE_MINUTES:] = EDGE_MULT
    m[0] *= GAP_MULT  # overnight / lunch gap lands on the first bar
    mult.append(m)
  return np.concatenate(mult)


def _volatility(regime, days, signal):
  """sigma_t = SIGMA_FLAT * (structured_t / SIGMA_FLAT) ** min(signal, 1).

  Predictable volatility (regimes, the intraday U-shape, session gaps) makes a
  threshold label like "return > 0.6 %" predictable without any directional
  edge, so it is part of the planted signal: at signal=0 the volatility is the
  constant SIGMA_FLAT and the market is an i.i.d. fat-tailed random walk.
  """
  structured = (np.where(regime == 1, SIGMA_HIGH, SIGMA_LOW)
                * np.tile(_session_sigma_mult(), days))
  return SIGMA_FLAT * (structured / SIGMA_FLAT) ** min(float(signal), 1.0)


def _ar1(innov, phi, x0, block=256):
  """x_t = phi * x_{t-1} + innov_t for t = 0..n-1 with x_{-1} = x0, vectorised.

  Within blocks of `block` steps the recursion is a lower-triangular matrix
  product; only the carried state loops over blocks.  (phi^-k tricks over
  the whole series overflow for long series.)
  """
  n = innov.shape[0]
  nb = -(-n // block)
  e = np.zeros(nb * block)
  e[:n] = innov
  e = e.reshape(nb, block)
  k = np.arange(block)
  lag = k[:, None] - k[None, :]
  lower = np.where(lag >= 0, phi ** np.maximum(lag, 0), 0.0)  # lower[i, j] = phi^(i-j)
  within = e @ lower.T                                         # zero-carry solution
  carry_w = phi ** (k + 1)                                     # effect of x_{block start-1}
  out = np.empty_like(within)
  x = x0
  for i in range(nb):
    out[i] = within[i] + carry_w * x
    x = out[i, -1]
  return out.reshape(-1)[:n]


def _simulate(index, days, signal, seed):
  """Simulate one instrument and return bars plus the latent series.

  Args:
    index: instrument index; its stream is `default_rng([seed, index])`,
      so instrument i does not depend on how many instruments are made.
    days: trading days.
    signal: planted signal strength (0 = no signal).
    seed: market seed.

  Returns:
    dict with `name, timestamps [n], bars [n, 6]` and latent series
    `sigma, eps, flow (s_t), flow_prev (s_{t-1}), regime, r, d_log_oi`
    (all `[n]`).
  """
  name, base_price, base_vol = instrument_spec(index)
  rng = np.random.default_rng([seed, index])
  ts = trading_timestamps(days)
  n = ts.shape[0]

  # Volatility: Markov regime (starts from the 50/50 stationary law) x intraday shape.
  regime = (rng.integers(0, 2) + np.cumsum(rng.random(n) < REGIME_SWITCH_P)) % 2
  sigma = _volatility(regime, days, signal)

  # Fat-tailed innovations: Var(t_nu) = nu / (nu - 2), rescale to unit variance.
  eps = rng.standard_t(T_DOF, n) / math.sqrt(T_DOF / (T_DOF - 2))

  # Order flow s_{-1..n-1}: stationary unit-variance AR(1).
  s_init = rng.standard_normal()
  flow = _ar1(math.sqrt(1 - FLOW_PHI**2) * rng.standard_normal(n), FLOW_PHI, s_init)
  flow_prev = np.concatenate([[s_init], flow[:-1]])

  r = signal * SIGNAL_BETA * sigma * flow_prev + sigma * eps

  d_log_oi = OI_FLOW_COEF * flow + OI_NOISE * rng.standard_normal(n)
  oi = OI_START_MULT * base_vol * np.exp(np.cumsum(d_log_oi))

  log_v = (VOL_SIGMA_ELAST * np.log(sigma / SIGMA_LOW) + VOL_FLOW_COEF * np.abs(flow)
           + VOL_NOISE * rng.standard_normal(n))
  volume = np.maximum(1.0, np.round(base_vol * np.exp(log_v)))

  close = base_price * np.exp(np.cumsum(r))
  open_ = np.concatenate([[base_price], close[:-1]])
  high = np.maximum(open_, close) * np.exp(RANGE_COEF * sigma * np.abs(rng.standard_normal(n)))
  low = np.minimum(open_, close) * np.exp(-RANGE_COEF * sigma * np.abs(rng.standard_normal(n)))

  bars = np.stack([open_, high, low, close, volume, oi], axis=1)
  return {"name": name, "timestamps": ts, "bars": bars, "sigma": sigma, "eps": eps,
          "flow": flow, "flow_prev": flow_prev, "regime": regime, "r": r,
          "d_log_oi": d_log_oi, "base_price": base_price, "base_volume": base_vol}


def _check_params(instruments, days, signal, seed):
  """Raise ValueError (one-line message) for out-of-range parameters."""
  def is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

  if not is_int(instruments) or instruments < 1:
    raise ValueError(f"instruments must be an integer >= 1, got {instruments!r}")
  if not is_int(days) or days < 1:
    raise ValueError(f"days must be an integer >= 1, got {days!r}")
  if not isinstance(signal, (int, float, np.number)) or not math.isfinite(signal) or signal < 0:
    raise ValueError(f"signal must be a finite number >= 0, got {signal!r}")
  if not is_int(seed) or seed < 0:
    raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def generate_market(instruments=4, days=30, signal=1.0, seed=0):
  """Generate the synthetic market in memory.

  Args:
    instruments: number of instruments (>= 1).
    days: trading days (>= 1), 360 bars each.
    signal: planted signal strength (>= 0; 0 = pure martingale prices).
    seed: non-negative seed; the same seed gives identical arrays.

  Returns:
    `[(name, timestamps int64[n], bars float64[n, 6]), ...]` in instrument
    order, columns as in `shards.BAR_COLUMNS`.
  """
  _check_params(instruments, days, signal, seed)
  out = []
  for i in range(instruments):
    sim = _simulate(i, days, float(signal), int(seed))
    out.append((sim["name"], sim["timestamps"], sim["bars"]))
  return out


def write_market(out_dir, instruments=4, days=30, signal=1.0, seed=0, progress=True):
  """Generate the market and write `<name>.parquet` shards plus `manifest.json`.

  The manifest is written last, so its presence marks a complete market.
  Existing shards of the same names are replaced atomically; other
  `*.parquet` files in `out_dir` are refused (mixing two markets in one
  directory would silently feed stale instruments to the loader).

  Args:
    out_dir: destination directory (created if missing).
    instruments, days, signal, seed: as in `generate_market`.
    progress: show a tqdm bar over instruments (on stderr).

  Returns:
    The manifest dict.

  Raises:
    ValueError: bad parameters or foreign shards in `out_dir`.
  """
  from tqdm import tqdm  # only the writer needs it

  _check_params(instruments, days, signal, seed)
  out_dir = os.fspath(out_dir)
  names = [instrument_spec(i)[0] for i in range(instruments)]
  wanted = {n + shards.SHARD_SUFFIX for n in names}
  if os.path.isdir(out_dir):
    foreign = sorted(f for f in os.listdir(out_dir) if f.endswith(shards.SHARD_SUFFIX)
                     and not f.startswith(".") and f not in wanted)
    if foreign:
      raise ValueError(f"{out_dir} already holds other shards ({', '.join(foreign[:3])}"
                       f"{', ...' if len(foreign) > 3 else ''}); use an empty directory")
  os.makedirs(out_dir, exist_ok=True)

  params = {"instruments": int(instruments), "days": int(days),
            "signal": float(signal), "seed": int(seed)}
  rows, digests = {}, {}
  for i in tqdm(range(instruments), desc="synth", unit="instr", disable=not progress):
    sim = _simulate(i, int(days), float(signal), int(seed))
    meta = {"source": "jaxquant.data.synth", **params, "instrument_index": i,
            "base_price": sim["base_price"], "base_volume": sim["base_volume"]}
    file = sim["name"] + shards.SHARD_SUFFIX
    digests[file] = shards.write_shard(os.path.join(out_dir, file), sim["name"],
                                       sim["timestamps"], sim["bars"], meta=meta)
    rows[sim["name"]] = int(sim["timestamps"].shape[0])

  manifest = {
      "generator": "jaxquant.data.synth",
      **params,
      "signal_beta": SIGNAL_BETA,
      "description": SIGNAL_DESCRIPTION,
      "model": {
          "start_date": START_DATE, "sessions": [[f"{a // 60:02d}:{a % 60:02d}",
                                                  f"{b // 60:02d}:{b % 60:02d}"]
                                                 for a, b in SESSIONS],
          "bars_per_day": BARS_PER_DAY, "sigma_low": SIGMA_LOW, "sigma_high": SIGMA_HIGH,
          "regime_switch_p": REGIME_SWITCH_P, "edge_minutes": EDGE_MINUTES,
          "edge_mult": EDGE_MULT, "gap_mult": GAP_MULT, "t_dof": T_DOF,
          "flow_phi": FLOW_PHI, "oi_flow_coef": OI_FLOW_COEF, "oi_noise": OI_NOISE,
          "oi_start_mult": OI_START_MULT, "vol_sigma_elast": VOL_SIGMA_ELAST,
          "vol_flow_coef": VOL_FLOW_COEF, "vol_noise": VOL_NOISE, "range_coef": RANGE_COEF,
      },
      "instrument_rows": rows,
      "total_rows": sum(rows.values()),
      shards.MANIFEST_KEY: digests,  # load_dir checks each file against these.
  }
  # Rows with the facts of the products they are modelled on (instruments.default_row).
  instruments_lib.write_table(out_dir, names, synthetic=True)
  io_utils.atomic_write_json(os.path.join(out_dir, "manifest.json"), manifest)
  return manifest


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _define_flags():
  """Flags are defined only when run as a script, so importing this module
  never clashes with other modules' absl flags (e.g. a trainer's --seed)."""
  flags.DEFINE_string("out", None, "Output directory for shards + manifest.json.")
  flags.DEFINE_integer("instruments", 4, "Number of instruments (>= 1).")
  flags.DEFINE_integer("days", 30, "Trading days (>= 1), 360 bars each.")
  flags.DEFINE_float("signal", 1.0, "Planted signal strength (>= 0).")
  flags.DEFINE_integer("seed", 0, "Random seed (>= 0).")


def main(argv):
  """CLI entry point: exit 2 on bad flags or values, 1 when --out cannot be written."""
  fl = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}", code=2)
  if not fl.out:
    cli.fail("--out=DIR is required", code=2)
  try:
    _check_params(fl.instruments, fl.days, fl.signal, fl.seed)
    t0 = time.perf_counter()
    m = write_market(fl.out, fl.instruments, fl.days, fl.signal, fl.seed, progress=True)
  except ValueError as e:
    cli.fail(e, code=2)
  except OSError as e:  # e.g. unwritable --out: one line, no traceback
    cli.fail(f"cannot write {fl.out}: {e}", code=1)
  print(f"wrote {m['instruments']} instruments x {m['days']} days = {m['total_rows']} bars "
        f"(signal={m['signal']:g}, seed={m['seed']}) to {fl.out} "
        f"in {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, distributed=False, positional=True, flag_error_code=2)
