"""Populations: each member of one compiled population step equals the same settings run
alone through steps.setup_run (same batches), to float tolerance; a frozen member stays
bit for bit; a member's non-finite step skips only that member."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from configs import transformer
from jaxquant import member_step
from jaxquant import parallel
from jaxquant import population
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import loader

STEPS = 5
# float32, different op order (traced numbers, one program for all members): relative 1e-5,
# and an absolute floor for values near 0 (Adam's first updates are ±lr on tiny gradients).
RTOL, ATOL = 1e-5, 1e-6
# Attention's key bias has a zero gradient in exact arithmetic (softmax is shift-invariant
# per query), so Adam turns its rounding noise into ±lr steps, which differ with the op
# order: bounded by the summed learning rates, not by float tolerance.
NOISE_PARAMS, NOISE_ATOL = ("['key']['bias']",), 2 * STEPS * 2e-3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("population")
  config = tiny_config(root / "data")
  ds = dataset_lib.build_dataset(config.data, dataset_lib.ensure_data(config.data, log=print))
  return root, ds, parallel.make_mesh(config.mesh)


def _configs(root, members, config=None):
  out = []
  for changes in members:
    base = None if config is None else config()
    out.append(tiny_config(root / "data", changes, config=base))
  return out


def _steps_per_epoch(ds, c):
  return loader.train_plan(ds, c.data, c.train.batch_size, c.train.seed, 0).shape[0]


def _batches(ds, configs, poison=None):
  """STEPS stacked batches; `poison` = (member, step): that member's x is NaN there."""
  out = []
  for i, b in enumerate(population.population_batches(ds, configs, 0)):
    if i == STEPS:
      break
    if poison and poison[1] == i:
      b["x"] = b["x"].copy()
      b["x"][poison[0]] = np.nan
    out.append(b)
  return out


def _train_population(setup, batches, frozen=None):
  # A copy: the jitted step donates its input (on a CPU, setup.states' own buffers).
  states = setup.steps.place_states(jax.tree.map(np.array, setup.states))
  hp = dict(setup.hparams)
  if frozen is not None:
    hp["frozen"] = jnp.asarray(frozen)
  history = []
  for b in batches:
    states, m = setup.train_step(states, setup.put_batches(b), setup.rngs, hp)
    history.append(jax.device_get(m))
  return jax.device_get(states), history


def _train_alone(config, ds, mesh, batches, member):
  run = steps_lib.setup_run(config, ds, mesh, _steps_per_epoch(ds, config))
  state = run.steps.place_state(run.state)
  rng = jax.random.key(config.train.seed + 1)  # As train.train_and_evaluate makes it.
  history = []
  for b in batches:
    state, m = run.steps.train_step(state, run.steps.put_batch(
        {k: v[member] for k, v in b.items()}), rng)
    history.append(jax.device_get(m))
  return run, jax.device_get(state), history


def _assert_close(a, b, what):
  bad = []
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    noise = "params" in what and any(n in jax.tree_util.keystr(path) for n in NOISE_PARAMS)
    if not np.allclose(x, y, rtol=RTOL, atol=NOISE_ATOL if noise else ATOL, equal_nan=True):
      bad.append(f"{what}{jax.tree_util.keystr(path)}: max abs diff "
                 f"{np.max(np.abs(x - y)):.3g} (max abs {np.max(np.abs(y)):.3g})")
  assert not bad, "\n".join(bad)


def _check_members(configs, ds, mesh, batches, states, history, skip=()):
  singles = []
  for i, c in enumerate(configs):
    if i in skip:
      continue
    run, alone, alone_history = _train_alone(c, ds, mesh, batches, i)
    member = jax.tree.map(lambda a: a[i], states)
    assert int(member.step) == int(alone.step) == STEPS
    _assert_close(member.params, alone.params, f"member {i} params")
    _assert_close(member.opt_state, alone.opt_state, f"member {i} opt_state")
    for t, (pm, am) in enumerate(zip(history, alone_history)):
      assert set(am) <= set(pm)
      _assert_close({k: pm[k][i] for k in am}, am, f"member {i} step {t} metrics")
    singles.append((i, run, alone))
  return singles


def test_batches_are_each_members_own_plan(data):
  root, ds, _ = data
  configs = _configs(root, [{"train.seed": 0}, {"train.seed": 3}])
  got = _batches(ds, configs)
  for i, c in enumerate(configs):
    plan = loader.train_plan(ds, c.data, c.train.batch_size, c.train.seed, 0)
    for t, alone in zip(range(STEPS), loader.train_batches(ds, plan)):
      for k in ("x", "y", "r"):
        np.testing.assert_array_equal(got[t][k][i], alone[k])
  assert not np.array_equal(got[0]["y"][0], got[0]["y"][1])  # Different orders.


def test_member_schedule_is_make_optimizers(data):
  root, _, _ = data
  c = _configs(root, [{"train.epochs": 3, "train.warmup_epochs": 0.5,
                       "train.lr": 3e-3, "train.end_lr": 1e-4}])[0]
  _, reference = state_lib.make_optimizer(c.train, 40)
  schedule = member_step.member_schedule(c.train, 40, jnp.float32(3e-3), jnp.float32(1e-4))
  counts = np.arange(0, 130)
  np.testing.assert_allclose([float(schedule(n)) for n in counts],
                             [float(reference(n)) for n in counts], rtol=1e-6, atol=1e-12)


def test_group_splits_on_shared_settings(data):
  root, _, _ = data
  configs = _configs(root, [{"train.seed": 0, "loss.alpha": "1,4"},
                            {"train.seed": 1, "loss.gamma": 0.0, "name": "other"},
                            {"model.hidden": 16},
                            {"train.lr": 1e-2, "eval.trials": 9},
                            {"model.hidden": 16, "train.seed": 5}])
  assert population.group(configs) == [[0, 1, 3], [2, 4]]
  with pytest.raises(ValueError, match="config.model.hidden: member 1"):
    population.setup_population(configs[1:3], data[1], data[2], 10)


def test_gru_members_equal_their_single_runs(data):
  """Seed, lr and end lr, focal gamma, class weights ("1,4", "1,8", inverse frequency),
  label smoothing, return weight and mixup probability (1 vs 0) differ, in one compile
  (strategy "auto": lax.map on a CPU); member 2 gets a NaN batch at step 2 (it skips,
  the others update); member 3 is frozen (bit for bit unchanged). Predictions match."""
  root, ds, mesh = data
  configs = _configs(root, [
      {"train.seed": 0, "train.lr": 2e-3, "loss.gamma": 2.0, "loss.alpha": "1,4"},
      {"train.seed": 1, "train.lr": 5e-3, "loss.gamma": 0.0, "loss.alpha": "1,8",
       "loss.label_smoothing": 0.1, "loss.return_weight": 0.5, "train.mixup_prob": 1.0},
      {"train.seed": 2, "train.lr": 1e-3, "train.end_lr": 1e-4, "loss.gamma": 1.0,
       "loss.alpha": "inverse_frequency", "loss.return_weight": 1.0},
      {"train.seed": 3}])
  setup = population.setup_population(configs, ds, mesh, _steps_per_epoch(ds, configs[0]))
  batches = _batches(ds, configs, poison=(2, 2))
  states, history = _train_population(setup, batches, frozen=[False, False, False, True])
  assert [float(h["mixup"][1]) for h in history] == [1.0] * STEPS
  assert [int(h["skipped"][2]) for h in history] == [0, 0, 1, 0, 0]
  assert sum(int(h["skipped"][i]) for h in history for i in (0, 1)) == 0
  frozen = jax.tree.map(lambda a: a[3], states)
  start = jax.tree.map(lambda a: a[3], setup.states)
  for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(start)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  singles = _check_members(configs, ds, mesh, batches, states, history, skip=(3,))
  probs, rets = setup.predict_split(setup.steps.place_states(states), ds, "val", 256)
  assert probs.shape == (4, len(ds.splits["val"]), ds.num_classes)
  # The single run's predict step (one compile for the three), on every window of val.
  predict = jax.jit(steps_lib.make_predict_step(state_lib.make_model(configs[0],
                                                                    ds.num_classes)))
  x = ds.windows("val", np.arange(len(ds.splits["val"])))
  for i, _, alone in singles:
    p, r = predict(alone, x)
    np.testing.assert_allclose(probs[i], p, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(rets[i], r, rtol=RTOL, atol=ATOL)


def test_transformer_composite_members_under_vmap(data):
  """Composite-loss members with their own composite alpha, under jax.vmap (member 1 is
  compared with its single run: each single run is a compile of its own)."""
  root, ds, mesh = data
  base = {"loss.name": "composite", "loss.composite_schedule": "fixed",
          "model.attention": "dense"}  # Dense: the same step, a quicker compile.
  configs = _configs(root, [{**base, "loss.composite_alpha": 0.3},
                            {**base, "loss.composite_alpha": 0.8, "train.seed": 4}],
                     config=lambda: transformer.get_config("quick"))
  setup = population.setup_population(configs, ds, mesh, _steps_per_epoch(ds, configs[0]),
                                      strategy="vmap")
  batches = _batches(ds, configs)
  states, history = _train_population(setup, batches)
  assert not np.allclose(history[-1]["composite_alpha"], history[-1]["composite_alpha"][0])
  _check_members(configs, ds, mesh, batches, states, history, skip=(0,))


def test_lanes_give_each_member_the_one_lane_result_bit_for_bit(data):
  """Members split into concurrent lanes (jaxquant/lanes.py; 3 members: lanes of 2 and 1)
  train and predict exactly as the same population in one lane, and the lanes are sized
  as documented."""
  from jaxquant import lanes
  root, ds, mesh = data
  configs = _configs(root, [{"train.seed": 0, "loss.alpha": "1,4"},
                            {"train.seed": 1, "loss.gamma": 0.0, "train.lr": 5e-3},
                            {"train.seed": 2, "loss.alpha": "1,14.6"}])
  batches = _batches(ds, configs, poison=(1, 3))
  got = {}
  for n in (1, 2):
    setup = population.setup_population(configs, ds, mesh, _steps_per_epoch(ds, configs[0]),
                                        lanes=n)
    assert setup.steps.lanes == n
    states, history = _train_population(setup, batches)
    probs, rets = setup.predict_split(setup.steps.place_states(states), ds, "val", 256)
    got[n] = (states, history, probs, rets)
  assert [int(h["skipped"][1]) for h in got[2][1]] == [0, 0, 0, 1, 0]
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(got[2])):
    assert np.asarray(a).shape == np.asarray(b).shape
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  assert lanes.bounds(3, 2) == [(0, 2), (2, 1)]
  assert lanes.bounds(32, 3) == [(0, 11), (11, 11), (22, 10)]
  assert lanes.lane_count(1, mesh) == 1
  assert 1 <= lanes.lane_count(64, mesh) == min(64, lanes.cores())
