"""Train a population: train.py's loop for M members in one compiled step (population.py).

Each member is a run of its own in its own workdir: metrics.jsonl, best-F1 checkpoints with
their threshold, collapse detection, early stopping (a stopped member is frozen in the step
while the others go on), non-finite step skipping, report.json / report.md. A kill saves
every member at the same batch and the same command resumes them there. The data is loaded
once, the step compiled once, and validation and the final evaluation predict all members
in one batched call.
"""

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxquant import checkpoints as checkpoints_lib
from jaxquant import cli
from jaxquant import evaluate
from jaxquant import io_utils
from jaxquant import parallel
from jaxquant import population
from jaxquant import resume as resume_lib
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
from jaxquant import train as train_lib
from jaxquant import workdir as workdir_lib
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import loader

Preempted = resume_lib.Preempted


@dataclasses.dataclass
class Member:
  """One member's own run: what train.Run holds for a single run."""
  config: Any
  workdir: str
  store: checkpoints_lib.CheckpointStore
  fingerprint: dict
  progress: dict
  history: list
  stop: str = None  # Why it stopped (None: it trains on).


def _index(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def train_population(configs, workdirs, force=False):
  """Trains the members (configs of one population.group) together, then evaluates each.

  Returns:
    Each member's evaluation summary (its report.json), in order.
  Raises:
    Preempted, after saving every member at the same batch, on SIGTERM/SIGINT.
  """
  t_start = time.time()
  lead = jax.process_index() == 0
  log = (lambda *a: print(*a, flush=True)) if lead else (lambda *a: None)
  locks = []
  try:
    for wd in workdirs:
      locks.append(workdir_lib.lock(wd, lead=lead))
    try:
      pop, members, states = _prepare(configs, workdirs, force, log)
      cli.raise_if_interrupted()
    except cli.Interrupted as e:
      raise cli.Interrupted(e.signame, f"{e.signame} during start-up (data, model, resume): "
                            "stopped before training; nothing was saved by this run") from None
    return _train(pop, members, states, log, lead, t_start)
  finally:
    for lock in locks:
      lock.release()


@dataclasses.dataclass
class Population:
  configs: list
  ds: Any
  data_dir: str
  mesh: Any
  setup: Any  # population.PopulationSetup
  steps_per_epoch: int
  counts: dict


def _prepare(configs, workdirs, force, log):
  c = configs[0]
  data_dir = dataset_lib.ensure_data(c.data, log=log)
  ds = dataset_lib.build_dataset(c.data, data_dir)
  log(dataset_lib.describe_data(ds, data_dir))
  mesh = parallel.make_mesh(c.mesh)
  parallel.check_batch_divides(c.train.batch_size, mesh)
  log(parallel.describe_mesh(mesh))
  steps_per_epoch = loader.train_plan(ds, c.data, c.train.batch_size, c.train.seed, 0,
                                      shards=mesh.size).shape[0]
  setup = population.setup_population(configs, ds, mesh, steps_per_epoch)
  initial = jax.device_get(setup.states)  # Sliced on the host: no gather compiled per member.
  states = [jax.device_put(_index(initial, i)) for i in range(len(configs))]
  if c.train.init_from:
    tx, _ = state_lib.make_optimizer(c.train, steps_per_epoch, setup.trainable)
    states = [resume_lib.init_from_run(s, tx, c.train.init_from, log) for s in states]
  counts = state_lib.parameter_counts(states[0].params, setup.trainable)
  lanes = f" ({setup.steps.lanes} lanes, one per CPU core)" if setup.steps.lanes > 1 else ""
  log(f"Population of {len(configs)} {c.model.name} members in one compiled step{lanes}: "
      f"{counts['total']:,} parameters each ({counts['trainable']:,} trainable); "
      f"{steps_per_epoch} steps/epoch of {c.train.batch_size}")
  members = []
  for i, (mc, wd) in enumerate(zip(configs, workdirs)):
    store = checkpoints_lib.CheckpointStore(os.path.join(wd, "checkpoints"),
                                            keep_best=mc.eval.keep_best)
    fingerprint = resume_lib.run_fingerprint(mc, ds, data_dir)
    states[i], progress, history = resume_lib.resume(
        store, states[i], fingerprint, wd, force, lambda *a, wd=wd: log(f"[{wd}]", *a))
    m = Member(mc, wd, store, fingerprint, progress, history)
    m.stop = resume_lib.stop_reason(progress, mc, history[-1] if history else {})
    members.append(m)
    if jax.process_index() == 0:
      io_utils.atomic_write_text(os.path.join(wd, "config.json"),
                                 mc.to_json_best_effort(indent=2))
  # Members that train on stand at one place: the furthest; one behind it (a re-run after
  # a member diverged) is evaluated as it stands.
  at = max(((m.progress["epoch"], m.progress["batch"]) for m in members if not m.stop),
           default=None)
  for m in members:
    if not m.stop and (m.progress["epoch"], m.progress["batch"]) != at:
      m.stop = f"stopped earlier (at epoch {m.progress['epoch']}) than the population"
  pop = Population(list(configs), ds, data_dir, mesh, setup, steps_per_epoch, counts)
  return pop, members, setup.steps.place_states(_stack(states))


def _frozen(members):
  return jnp.asarray([m.stop is not None for m in members])


def _train(pop, members, states, log, lead, t_start):
  c = pop.configs[0]
  active = [m for m in members if not m.stop]
  first_epoch = active[0].progress["epoch"] if active else c.train.epochs
  if not active:
    log("Every member already stopped; evaluating their best checkpoints.")
  try:
    with resume_lib.Preemption() as preemption:
      for epoch in range(first_epoch, c.train.epochs):
        if all(m.stop for m in members):
          break
        t0 = time.time()
        states, train_m = _train_epoch(pop, members, states, epoch, preemption, log, lead)
        _validate_epoch(pop, members, states, epoch, t0, train_m, log, lead)
      for m in members:
        m.store.close()
    if preemption.agreed():
      raise cli.Interrupted(preemption.requested)
    for m in members:  # (No training_curves.png: metrics.jsonl holds the curves.)
      m.stop = m.stop or "completed all epochs"
    return _evaluate(pop, members, time.time() - t_start)
  except cli.Interrupted as e:
    for m in members:
      m.store.close()
    log(f"{e.signame} after training: the members' checkpoints are saved and they were not "
        "evaluated; re-run the same command to evaluate them.")
    raise Preempted(e.signame) from None


def _train_epoch(pop, members, states, epoch, preemption, log, lead):
  """One epoch of population steps; returns (states, per-member host metrics or None)."""
  c, setup = pop.configs[0], pop.setup
  start = next(m.progress["batch"] for m in members if not m.stop)
  hp = {**setup.hparams, "frozen": _frozen(members)}
  batches = population.population_batches(
      pop.ds, pop.configs, epoch, rows=parallel.process_slice(c.train.batch_size), skip=start,
      shards=pop.mesh.size, workers=c.data.workers)
  bar = tqdm(batches, total=pop.steps_per_epoch - start, leave=False, mininterval=1.0,
             desc=f"epoch {epoch + 1}/{c.train.epochs} ({len(members)} members)",
             disable=None if lead else True)
  step_metrics, streaks, checked = [], [0] * len(members), 0
  for i, batch in enumerate(bar, start=start + 1):
    states, m = setup.train_step(states, setup.put_batches(batch), setup.rngs, hp)
    step_metrics.append(m)
    if i % 32 == 0 or i == pop.steps_per_epoch:
      recent = np.asarray(jax.device_get([s["skipped"] for s in step_metrics[checked:]]))
      checked = len(step_metrics)
      for j, mem in enumerate(members):
        if mem.stop:
          continue
        streaks[j] = train_lib.nonfinite_streak(streaks[j], recent[:, j])
        if streaks[j] >= mem.config.train.max_bad_steps:
          mem.stop = (f"{streaks[j]} consecutive steps with a non-finite loss or gradient; "
                      "updates were skipped, the last good checkpoint is kept")
          log(f"[{mem.workdir}] STOP: {mem.stop}")
          hp = {**hp, "frozen": _frozen(members)}
    if preemption.agreed(i, every=1 if i == pop.steps_per_epoch else 8):
      host, saved = _member_metrics(members, step_metrics), jax.device_get(states)
      for j, mem in enumerate(members):
        if mem.stop:
          continue
        mem.progress.update(epoch=epoch, batch=i, partial={
            k: v.tolist() for k, v in train_lib.stack_host(mem.progress.get("partial"),
                                                           host[j]).items()})
        mem.store.save(int(_index(saved, j).step), _index(saved, j), {
            "progress": mem.progress, "fingerprint": mem.fingerprint,
            "preempted": preemption.requested}, checkpoints_lib.PREEMPTED_SCORE)
        mem.store.close()
      log(f"{preemption.requested}: saved every member at epoch {epoch + 1}, batch {i}; "
          "re-run the same command to resume.")
      raise Preempted(preemption.requested)
  host = _member_metrics(members, step_metrics)
  return states, [train_lib.stack_host(m.progress.get("partial"), h)
                  for m, h in zip(members, host)]


def _member_metrics(members, step_metrics):
  """[M] lists of per-step metric dicts (host numpy scalars) from the stacked ones."""
  host = jax.device_get(step_metrics)
  return [[{k: np.asarray(v)[j] for k, v in s.items()} for s in host]
          for j in range(len(members))]


def _validate_epoch(pop, members, states, epoch, t0, train_m, log, lead):
  """Each training member's validation, record and checkpoint (train.validate_epoch's)."""
  ds, setup = pop.ds, pop.setup
  val = ds.splits["val"]
  eval_bs = steps_lib.eval_batch_size(pop.configs[0], pop.mesh)
  probs, _ = setup.predict_split(states, ds, "val", eval_bs)
  seconds = time.time() - t0
  # On the host once: slicing device arrays member by member would compile a gather each.
  host = jax.device_get(states)
  for j, m in enumerate(members):
    if m.stop:
      continue
    state = _index(host, j)
    val_verdict, score, improved = train_lib.judge_epoch(m.config, val, probs[j], m.progress)
    val_loss = steps_lib.split_loss(setup.loss_fns[j], probs[j], val.labels, ds.num_classes)
    record = train_lib.epoch_record(epoch, state, t0, train_m[j], val_verdict, val_loss)
    record["samples_per_s"] = round(len(train_m[j]["loss"]) * m.config.train.batch_size
                                    / max(seconds, 1e-9), 1)
    record["samples_per_s_per_device"] = round(record["samples_per_s"] / pop.mesh.size, 1)
    record["population_members"] = len(members)
    if lead:
      io_utils.append_jsonl(os.path.join(m.workdir, "metrics.jsonl"), record)
    m.history.append(record)
    m.progress.update(epoch=epoch + 1, batch=0, partial=None)
    meta = {"epoch": epoch, "threshold": val_verdict["threshold"], "val": val_verdict,
            "normalizer": ds.normalizer, "class_weights": [float(a) for a in setup.alphas[j]],
            "return_scale": setup.return_scale, "parameters": pop.counts,
            "progress": m.progress, "fingerprint": m.fingerprint}
    m.store.save(int(state.step), state, meta, score)
    log(f"[{os.path.basename(m.workdir)}] " + train_lib.epoch_line(record, improved))
    m.stop = resume_lib.stop_reason(m.progress, m.config, record)
    if m.stop and val_verdict["collapsed"]:
      log(f"[{m.workdir}] STOP: {m.stop}")


def _evaluate(pop, members, seconds):
  """Every member's best checkpoint, predicted in one batched call per split, then each
  member's report.json and report.md as evaluate.evaluate writes them, without pictures
  (`python -m jaxquant.main --mode=eval --workdir=MEMBER` draws them)."""
  best, metas, steps = [], [], []
  template = jax.device_put(_index(jax.device_get(pop.setup.states), 0))
  for m in members:
    store = checkpoints_lib.CheckpointStore(os.path.join(m.workdir, "checkpoints"))
    try:
      step = store.best_step()
      if step is None:
        raise ValueError(f"{m.workdir}/checkpoints holds no checkpoint to evaluate")
      store.verify(step)  # A corrupt checkpoint is refused, never evaluated (evaluate.restore).
      state, meta = store.restore(step, checkpoints_lib.abstract_like(template))
    finally:
      store.close()
    best.append(jax.device_get(state))
    metas.append(meta)
    steps.append(int(step))
  states = pop.setup.steps.place_states(_stack(best))
  c = pop.configs[0]
  sets = {"val": (pop.ds, "val"), "test": (pop.ds, "test")}
  if c.eval.data_dir:
    other = dataset_lib.build_inference_set(c.data, c.eval.data_dir, pop.ds.normalizer,
                                            labelled_only=True)
    sets["test"] = (other, "all")
  eval_bs = steps_lib.eval_batch_size(c, pop.mesh)
  preds = {n: pop.setup.predict_split(states, d, sp, eval_bs) for n, (d, sp) in sets.items()}
  out = []
  for j, m in enumerate(members):
    own = {n: (p[j], r[j]) for n, (p, r) in preds.items()}
    out.append(evaluate.report_predictions(
        m.config, m.workdir, m.workdir, pop.data_dir, pop.ds, sets, own, metas[j], steps[j],
        bool(metas[j]["val"]["collapsed"]), m.stop, seconds, pictures=False))
  return out
