"""Populations: many members trained in ONE compiled step over a leading member axis.

Members of one population share the model shapes, the data and every setting except
`MEMBER_KEYS`, which enter the step as traced per-member arrays (`hparams`), so a
population of any values compiles once (a member's step: jaxquant/member_step.py).
tests/test_population.py checks every member against the same settings run alone
through steps.setup_run.

    groups = population.group(configs)                # [[0, 1, 2], [3]]: one step each
    setup = population.setup_population([configs[i] for i in groups[0]], ds, mesh, spe)
    states, hp = setup.steps.place_states(setup.states), setup.hparams
    for batches in population.population_batches(ds, setup.configs, epoch):
      states, metrics = setup.train_step(states, setup.put_batches(batches), setup.rngs, hp)
    probs, rets = setup.predict_split(states, ds, "val", batch_size)   # [M, n, K], [M, n]
    hp = {**hp, "frozen": jnp.asarray(stopped)}       # [M] bool: early-stopped members

Metrics come back per member ([M] each); `skipped` marks a member's non-finite step.
The step donates `states` (not in lanes: on a one-device CPU mesh the members are split
into concurrent lanes, one per core, jaxquant/lanes.py). With mesh.member > 1 the members are split over the mesh's
member axis, each device group training its own (PopulationSteps; 8 devices against one
in tests/test_population_mesh.py).
"""

import functools
import json
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxquant import lanes as lanes_lib
from jaxquant import losses
from jaxquant import member_step as member_step_lib
from jaxquant import parallel
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
from jaxquant import xla_options
from jaxquant.data import loader

# The config keys members of one population may differ in (traced, no recompile).
MEMBER_KEYS = ("train.seed", "train.lr", "train.end_lr", "loss.alpha", "loss.gamma",
               "loss.composite_alpha", "loss.label_smoothing", "train.mixup_prob",
               "loss.return_weight")
# Keys that may differ too but never reach the step: the run's name and the Deflated
# Sharpe Ratio's trial count (jaxquant.compare sets it after grouping).
FREE_KEYS = ("name", "eval.trials")
# hparams entries, [M] each ("alpha" [M, K]); "frozen" is the loop's early-stop mask.
HPARAM_NAMES = ("lr", "end_lr", "alpha", "gamma", "label_smoothing", "composite_alpha",
                "mixup_prob", "return_weight", "frozen")
# Ways to run the members inside the one jit (see make_population_step).
STRATEGIES = ("auto", "map", "vmap", "loop")


def _flat(config):
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = v
  walk(config.to_dict(), "")
  return out


def _shared(config):
  """What must be equal within a population: every key but MEMBER_KEYS and FREE_KEYS."""
  flat = _flat(config)
  return {k: v for k, v in flat.items() if k not in MEMBER_KEYS and k not in FREE_KEYS}


def group(configs):
  """Splits configs into populations: lists of indices whose shared settings are equal.

  Args:
    configs: ConfigDicts (one per member), all validated.

  Returns:
    Lists of indices into `configs`, in order of first appearance; each list can be
    one `setup_population`.
  """
  groups = {}
  for i, c in enumerate(configs):
    key = json.dumps(_shared(c), sort_keys=True, default=repr)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _check_one_population(configs):
  if not configs:
    raise ValueError("a population needs at least one member config")
  first = _shared(configs[0])
  for i, c in enumerate(configs[1:], start=1):
    other = _shared(c)
    differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
    if differ:
      k = differ[0]
      raise ValueError(f"config.{k}: member {i} has {other.get(k)!r}, member 0 "
                       f"{first.get(k)!r}; only {', '.join(MEMBER_KEYS)} may differ within a "
                       "population (population.group splits the rest)")


def member_hparams(configs, alphas):
  """The per-member numbers of the step, stacked: {name: [M] (alpha [M, K])} float32.

  Args:
    configs: the members' configs.
    alphas: [M] class-weight vectors (losses.class_weights per member).
  """
  cols = {"lr": [c.train.lr for c in configs], "end_lr": [c.train.end_lr for c in configs],
          "gamma": [c.loss.gamma for c in configs],
          "label_smoothing": [c.loss.label_smoothing for c in configs],
          "composite_alpha": [c.loss.composite_alpha for c in configs],
          "mixup_prob": [c.train.mixup_prob for c in configs],
          "return_weight": [c.loss.return_weight for c in configs]}
  hp = {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in cols.items()}
  hp["alpha"] = jnp.asarray(np.stack([np.asarray(a, np.float32) for a in alphas]))
  hp["frozen"] = jnp.zeros(len(configs), bool)
  return hp


def _index(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def make_population_step(member_step, strategy="auto", sharded=False):
  """Returns `train_step(states, batches, rngs, hparams)` over a leading member axis.

  Args:
    member_step: member_step.make_member_step's function.
    strategy: "map" (lax.map: the members one after another inside the one program,
      each with the single run's unbatched ops), "vmap" (jax.vmap: one batched op per
      op — batched dots, what an accelerator wants), "loop" (a Python loop: K copies of
      the step in one program, left to XLA's scheduler), or "auto": "map" on a CPU,
      "vmap" elsewhere, and always "vmap" when `sharded`. On a 2-core CPU the quick GRU
      ran at 1.14x of K single steps with "map", 0.58x with "vmap", 0.67x with "loop"
      (K=4, one lane; benchmarks/population.py --strategies=map,vmap,loop --lanes=1;
      PopulationSteps runs lanes of it on every core); all are the same
      arithmetic.
    sharded: whether the members are split over a mesh's member axis (mesh.member > 1).
      Only "vmap" keeps each device group on its own members there: lax.map's and the
      loop's per-member slices of a sharded axis would gather every member onto every
      device, so they are refused (ValueError).
  """
  if strategy == "auto":
    strategy = "vmap" if sharded or jax.default_backend() != "cpu" else "map"
  if sharded and strategy in ("map", "loop"):
    raise ValueError(f"population strategy {strategy!r} with members split over the mesh's "
                     "member axis (mesh.member > 1) would gather them on every device: use "
                     "'vmap' or 'auto'")
  if strategy == "vmap":
    return jax.vmap(member_step)
  if strategy == "map":
    def mapped(states, batches, rngs, hp):
      if rngs.shape[0] == 1:  # One member: the single step itself, no loop around it.
        one = member_step(*_index((states, batches, rngs, hp), 0))
        return jax.tree.map(lambda a: a[None], one)
      return jax.lax.map(lambda args: member_step(*args), (states, batches, rngs, hp))
    return mapped
  if strategy != "loop":
    raise ValueError(f"population strategy {strategy!r}: use one of {STRATEGIES}")

  def train_step(states, batches, rngs, hp):
    outs = [member_step(_index(states, i), _index(batches, i), rngs[i], _index(hp, i))
            for i in range(rngs.shape[0])]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)
  return train_step


def member_rngs(configs):
  """[M] step keys: each member's key as train.train_and_evaluate makes it (seed + 1)."""
  return jnp.stack([jax.random.key(c.train.seed + 1) for c in configs])


def initial_states(model, tx, num_features, window, seeds):
  """Stacked initial states [M, ...]: state.init_fn's init of each seed, compiled once,
  so each member starts bit for bit where state.create_train_state starts it."""
  init = jax.jit(state_lib.init_fn(model, tx, num_features, window),
                 compiler_options={"xla_backend_optimization_level": 0})
  members = [init(jax.random.key(s)) for s in seeds]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)


class PopulationSetup(NamedTuple):
  """What `setup_population` builds (steps.RunSetup's population twin)."""
  configs: list
  trainable: Any
  alphas: np.ndarray  # [M, K] class weights.
  loss_fns: list  # Each member's losses.make_loss_fn (validation loss, reports).
  return_scale: float
  hparams: dict  # member_hparams: {name: [M] or [M, K]}.
  rngs: jax.Array  # [M] step keys (member_rngs).
  states: state_lib.TrainState  # [M, ...], on the host.
  train_step: Any  # Jitted (states, batches, rngs, hparams) -> (states, metrics [M]).
  steps: Any  # PopulationSteps: placement, batches, predict_split.

  def predict_split(self, states, ds, split, batch_size):
    return self.steps.predict_split(states, ds, split, batch_size)

  def put_batches(self, batches):
    return self.steps.put_batches(batches)


def check_member_mesh(mesh, members):
  """The member axis of `mesh` for a population of `members`: None on a mesh without
  one (members replicated), else parallel.MEMBER.

  Raises:
    ValueError naming mesh.member when the members do not divide over its devices, or
    when the mesh spans processes (each process feeds rows of every member's batch).
  """
  groups = parallel.member_devices(mesh)
  if groups == 1:
    return None
  if members % groups:
    raise ValueError(f"config.mesh.member: the population's {members} member(s) do not "
                     f"divide over the mesh's {groups} member devices; use a divisor of "
                     f"{members} (or mesh.member=1)")
  if jax.process_count() > 1:
    raise ValueError(f"config.mesh.member: members over {groups} devices run in one "
                     f"process, not {jax.process_count()}; use mesh.member=1")
  return parallel.MEMBER


def _map_predict(predict, states, x):
  return lax.map(lambda member: predict(member, x), states)


class PopulationSteps:
  """The jitted population steps on one mesh. Without a member axis the members are
  replicated and each member's batch is split over the devices like a single run's;
  with one (mesh.member > 1) states, hparams and rngs are split P("member", ...) on
  their leading axis and batches P("member", (data, expert)): each device group
  trains its own members on its share of their batches. On a one-device CPU mesh with
  `lanes` > 1 the step and predict run as lanes (jaxquant/lanes.py: the members' slices
  on every core at once); the step then does not donate `states`."""

  def __init__(self, model, mesh, states, train_step=None, lanes=1):
    self.mesh = mesh
    members = jax.tree.leaves(states)[0].shape[0]
    lead = check_member_mesh(mesh, members)
    member = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), states)
    self.state_sharding = jax.tree.map(
        lambda s: NamedSharding(mesh, P(lead, *s.spec)),
        parallel.state_shardings(member, mesh))
    self.batch_sharding = NamedSharding(mesh, P(lead, (parallel.DATA, parallel.EXPERT)))
    # hparams, rngs and metrics: [M] (alpha [M, K]) on the members' devices.
    self.member_sharding = NamedSharding(mesh, P(lead))
    # Every member predicts the same windows: the eval batch over data only.
    self.eval_sharding = NamedSharding(mesh, P((parallel.DATA, parallel.EXPERT)))
    repl = parallel.replicated(mesh)
    self.lanes = 1 if lead else int(lanes)
    opts = xla_options.step_options()
    predict = steps_lib.make_predict_step(model)
    if lead or jax.default_backend() != "cpu":
      predict = jax.vmap(predict, in_axes=(0, None))
    else:  # As make_population_step's "auto": each member the single run's ops.
      predict = functools.partial(_map_predict, predict)
    if self.lanes > 1:  # One device: the lanes' programs need no shardings.
      if train_step is not None:
        self.train_step = lanes_lib.Lanes(train_step, members, self.lanes, (True,) * 4, opts)
      self._predict = lanes_lib.Lanes(predict, members, self.lanes, (True, False), opts)
      return
    if train_step is not None:
      per_member = self.member_sharding
      self.train_step = jax.jit(
          train_step, donate_argnums=0,
          in_shardings=(self.state_sharding, self.batch_sharding, per_member, per_member),
          out_shardings=(self.state_sharding, per_member), compiler_options=opts)
    self._predict = jax.jit(predict, in_shardings=(self.state_sharding, self.eval_sharding),
                            out_shardings=(repl, repl), compiler_options=opts)

  def place_states(self, states):
    return jax.device_put(states, self.state_sharding)

  def put_batches(self, local):
    """[M, b, ...] host arrays (this process's rows) → global [M, B, ...] arrays."""
    return parallel.global_batch(local, self.batch_sharding)

  def predict_split(self, states, dataset, split, batch_size):
    """Every member's class probabilities [M, n, K] and returns [M, n] on a split: one
    call per batch over every member (vmapped; lax.map on a CPU, in lanes), the same
    windows for every member (steps.ShardedSteps's predict_split, batched over members)."""
    rows = parallel.process_slice(batch_size)
    probs, rets = [], []
    for batch in loader.eval_batches(dataset, split, batch_size, rows):
      x = parallel.global_batch(batch["x"], self.eval_sharding)
      p, r = self._predict(states, x)
      probs.append(np.asarray(p))
      rets.append(np.asarray(r))
    m, n = jax.tree.leaves(states)[0].shape[0], len(dataset.splits[split])
    if not probs:
      return (np.zeros((m, 0, dataset.num_classes), np.float32),
              np.zeros((m, 0), np.float32))
    return np.concatenate(probs, axis=1)[:, :n], np.concatenate(rets, axis=1)[:, :n]


def setup_population(configs, ds, mesh, steps_per_epoch, strategy="auto", lanes=None):
  """The model, per-member numbers, stacked initial states and jitted steps of a population.

  Args:
    configs: the members' configs, equal but for MEMBER_KEYS / FREE_KEYS (else a
      ValueError naming the first key that differs: `group` them first).
    ds: the dataset every member trains on.
    mesh: parallel.make_mesh(config.mesh); with a member axis (mesh.member > 1) the
      members are split over it (PopulationSteps) and the step is vmapped.
    steps_per_epoch: optimizer steps per epoch (loader.train_plan's rows).
    strategy: see make_population_step.
    lanes: concurrent lanes (jaxquant/lanes.py); None = lanes.lane_count: one per core
      on a one-device CPU mesh, else 1.

  Returns:
    PopulationSetup.
  """
  _check_one_population(configs)
  sharded = check_member_mesh(mesh, len(configs)) is not None  # Raises before any compile.
  config = configs[0]
  model = state_lib.make_model(config, ds.num_classes)
  trainable = state_lib.trainable_partition(config.train)
  train_split = ds.splits["train"]
  alphas = np.stack([losses.class_weights(c.loss, train_split.labels, train_split.fwd_returns,
                                          ds.num_classes) for c in configs])
  loss_fns = [losses.make_loss_fn(c.loss, a) for c, a in zip(configs, alphas)]
  return_scale = float(np.std(train_split.fwd_returns)) or 1.0
  tx, _ = state_lib.make_optimizer(config.train, steps_per_epoch, trainable)
  states = initial_states(model, tx, ds.num_features, ds.window,
                          [c.train.seed for c in configs])
  member_step = member_step_lib.make_member_step(
      model, config, ds.num_classes, steps_per_epoch, return_scale, trainable,
      mixup=any(c.train.mixup_prob > 0 for c in configs))
  lanes = lanes_lib.lane_count(len(configs), mesh) if lanes is None else lanes
  pop_steps = PopulationSteps(model, mesh, states,
                              make_population_step(member_step, strategy, sharded), lanes)
  return PopulationSetup(list(configs), trainable, alphas, loss_fns, return_scale,
                         member_hparams(configs, alphas), member_rngs(configs), states,
                         pop_steps.train_step, pop_steps)


def population_plans(ds, configs, epoch, shards=1):
  """Each member's batch plan of `epoch` (loader.train_plan with its own seed), [M, steps, B].

  Raises:
    ValueError when the members' plans have different lengths (they cannot step together).
  """
  plans = [loader.train_plan(ds, c.data, c.train.batch_size, c.train.seed, epoch, shards=shards)
           for c in configs]
  if len({p.shape for p in plans}) > 1:
    raise ValueError(f"population: the members' epoch plans differ in shape "
                     f"({sorted({p.shape for p in plans})}); train them separately")
  return np.stack(plans)


def population_batches(ds, configs, epoch, rows=None, skip=0, shards=1, workers=0):
  """Stacked training batches of one epoch: x [M, b, T, F], y [M, b], r [M, b].

  Returns an iterable; member m's rows are exactly loader.train_batches of its own plan. Without jitter
  the windows of all members are gathered as one batch of M·b rows (one grain
  pipeline); with data.oversample_jitter each member keeps its own pipeline (its noise
  is seeded by its seed).

  Args:
    rows: (start, stop) rows of each member's global batch this process feeds.
    skip: batches of this epoch already consumed.
    shards: devices × processes (as the single run's train_plan gets).
  """
  plans = population_plans(ds, configs, epoch, shards)  # Raises now, not at the first batch.
  m, _, b = plans.shape
  start, stop = rows or (0, b)
  jitter = configs[0].data.oversample_jitter
  if not jitter:
    joined = np.concatenate(list(plans[:, :, start:stop]), axis=1)  # [steps, M·b]
    return ({k: v.reshape((m, stop - start) + v.shape[1:]) for k, v in batch.items()}
            for batch in loader.train_batches(ds, joined, skip=skip, workers=workers))
  streams = [loader.train_batches(ds, p, rows=rows, skip=skip, jitter=jitter,
                                  seed=c.train.seed, epoch=epoch, workers=workers)
             for p, c in zip(plans, configs)]
  return ({k: np.stack([mb[k] for mb in members]) for k in members[0]}
          for members in zip(*streams))
