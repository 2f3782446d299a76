"""The training loop: resume, train one epoch, validate one epoch, stop, evaluate.

The state and its builders live in state.py, the pure steps and their jitted form
in steps.py, resuming and preemption in resume.py; this module only runs them.
"""

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxquant import checkpoints as checkpoints_lib
from jaxquant import cli
from jaxquant import device_windows
from jaxquant import evaluate
from jaxquant import io_utils
from jaxquant import parallel
from jaxquant import plots
from jaxquant import resume as resume_lib
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
from jaxquant import tb as tb_lib
from jaxquant import verdict
from jaxquant import workdir as workdir_lib
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import loader
from jaxquant.data import sample_set

Preempted = resume_lib.Preempted


@dataclasses.dataclass
class Run:
  """What the phases of one run share (built once by `prepare`)."""
  config: Any
  workdir: str
  ds: Any  # data.dataset.Dataset
  mesh: Any
  setup: steps_lib.RunSetup
  steps_per_epoch: int
  store: checkpoints_lib.CheckpointStore
  fingerprint: dict
  counts: dict  # Parameter counts.
  log: Any
  lead: bool  # Process 0: the one that writes files.
  lock: Any = None  # workdir.Lock: one run per workdir, until train_and_evaluate ends.

  def plan(self, epoch):
    c = self.config
    return loader.train_plan(self.ds, c.data, c.train.batch_size, c.train.seed, epoch,
                             shards=self.mesh.size)


def prepare(config, workdir, force, log):
  """Data, mesh, model, optimizer and the resumed state: (Run, state, progress, history).

  First takes the workdir's lock (creating it): a second run on it is refused."""
  lead = jax.process_index() == 0
  lock = workdir_lib.lock(workdir, lead=lead)
  try:
    return _prepare(config, workdir, force, log, lead, lock)
  except BaseException:
    lock.release()
    raise


def _prepare(config, workdir, force, log, lead, lock):
  data_dir = dataset_lib.ensure_data(config.data, log=log)
  ds = dataset_lib.build_dataset(config.data, data_dir)
  if isinstance(ds, sample_set.SampleDataset) and not ds.has_returns \
          and config.loss.return_weight > 0:
    raise ValueError(f"config.loss.return_weight={config.loss.return_weight}: no sample of "
                     f"{data_dir} carries a return to fit (r/ret/return/fwd_return); set it to 0")
  log(dataset_lib.describe_data(ds, data_dir))
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divides(config.train.batch_size, mesh)
  log(parallel.describe_mesh(mesh))
  steps_per_epoch = loader.train_plan(ds, config.data, config.train.batch_size,
                                      config.train.seed, 0, shards=mesh.size).shape[0]
  setup = steps_lib.setup_run(config, ds, mesh, steps_per_epoch,
                              windows=device_windows.for_run(config.data, ds, mesh, log))
  state = setup.state
  if config.train.init_from:
    state = resume_lib.init_from_run(state, setup.tx, config.train.init_from, log)
  counts = state_lib.parameter_counts(state.params, setup.trainable)
  log(f"Model {config.model.name}: {counts['total']:,} parameters ({counts['trainable']:,} "
      f"trainable); {steps_per_epoch} steps/epoch of {config.train.batch_size}; class weights "
      f"{[round(float(a), 3) for a in setup.alpha]}")
  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                          keep_best=config.eval.keep_best)
  fingerprint = resume_lib.run_fingerprint(config, ds, data_dir)
  # Placed first, so a resume restores straight into the run's shardings (a host-local
  # restore then device_put would need cross-host transfers, which XLA:CPU lacks).
  state = setup.steps.place_state(state)
  state, progress, history = resume_lib.resume(store, state, fingerprint, workdir, force, log)
  if lead:
    io_utils.atomic_write_text(os.path.join(workdir, "config.json"),
                               config.to_json_best_effort(indent=2))
  run = Run(config, workdir, ds, mesh, setup, steps_per_epoch, store, fingerprint, counts,
            log, lead, lock)
  return run, state, progress, history


def train_epoch(run, state, epoch, progress, rng, preemption):
  """One epoch of train steps from `progress["batch"]`.

  Returns:
    (state, per-step metrics on the host, why the run stops now or None).
  Raises:
    Preempted, after saving a resume checkpoint, on SIGTERM/SIGINT.
  """
  config, steps = run.config, run.setup.steps
  partial, step_metrics = progress.get("partial"), []
  rows = parallel.process_slice(config.train.batch_size)
  if steps.windows is not None:  # The step gathers the windows on the device.
    batches = loader.train_ends(run.ds, run.plan(epoch), rows=rows, skip=progress["batch"])
  else:
    batches = loader.train_batches(run.ds, run.plan(epoch), rows=rows, skip=progress["batch"],
                                   jitter=config.data.oversample_jitter, seed=config.train.seed,
                                   epoch=epoch, workers=config.data.workers)
  bar = tqdm(batches, total=run.steps_per_epoch - progress["batch"], leave=False,
             mininterval=1.0, desc=f"epoch {epoch + 1}/{config.train.epochs}",
             disable=None if run.lead else True)
  bad_streak, checked = 0, 0
  for i, batch in enumerate(bar, start=progress["batch"] + 1):
    state, m = steps.train_step(state, steps.put_batch(batch), rng)
    step_metrics.append(m)  # Stays on device: no host sync per step.
    if i % 32 == 0 or i == run.steps_per_epoch:  # Look at non-finite steps now and then.
      recent = jax.device_get([s["skipped"] for s in step_metrics[checked:]])
      checked = len(step_metrics)
      bad_streak = nonfinite_streak(bad_streak, recent)
      if bad_streak >= config.train.max_bad_steps:
        return state, None, (
            f"{bad_streak} consecutive steps with a non-finite loss or gradient (last at step "
            f"{int(state.step)}); updates were skipped, the last good checkpoint is kept")
    if preemption.agreed(i, every=1 if i == run.steps_per_epoch else 8):
      progress.update(epoch=epoch, batch=i, partial={
          k: v.tolist() for k, v in stack_host(partial, step_metrics).items()})
      run.store.save(int(state.step), state, {
          "progress": progress, "fingerprint": run.fingerprint,
          "preempted": preemption.requested}, checkpoints_lib.PREEMPTED_SCORE)
      run.store.close()
      run.log(f"{preemption.requested}: saved a checkpoint at epoch {epoch + 1}, batch {i} "
              f"(step {int(state.step)}); re-run the same command to resume.")
      raise Preempted(preemption.requested)
  return state, stack_host(partial, step_metrics), None


def judge_epoch(config, val, probs, progress):
  """An epoch's validation verdict at its best-F1 threshold, the checkpoint score (a
  collapsed model never scores) and whether it improved; counts the epochs without
  improvement and the collapsed ones in `progress` (the early-stopping state).

  Returns:
    (verdict, score, improved).
  """
  min_rate = config.eval.min_positive_rate
  val_verdict = verdict.split_verdict(val.labels, probs,
                                      verdict.choose_threshold(val.labels, probs, min_rate),
                                      min_rate, config.eval.max_positive_rate)
  score = checkpoints_lib.COLLAPSED_SCORE if val_verdict["collapsed"] else val_verdict["f1"]
  improved = score > progress["best_score"]
  progress["best_score"] = max(progress["best_score"], score)
  progress["bad_epochs"] = 0 if improved else progress["bad_epochs"] + 1
  progress["collapsed_epochs"] = (progress["collapsed_epochs"] + 1 if val_verdict["collapsed"]
                                  else 0)
  return val_verdict, score, improved


def validate_epoch(run, state, epoch, t0, train_m, progress):
  """Validation, the epoch's record (metrics.jsonl) and its checkpoint.

  Returns:
    (record, improved, validation verdict).
  """
  config, ds = run.config, run.ds
  val = ds.splits["val"]
  probs, _ = run.setup.steps.predict_split(state, ds, "val",
                                           steps_lib.eval_batch_size(config, run.mesh))
  val_verdict, score, improved = judge_epoch(config, val, probs, progress)
  val_loss = steps_lib.split_loss(run.setup.loss_fn, probs, val.labels, ds.num_classes)
  record = epoch_record(epoch, state, t0, train_m, val_verdict, val_loss)
  record["samples_per_s"] = round(len(train_m["loss"]) * config.train.batch_size
                                  / max(time.time() - t0, 1e-9), 1)
  record["samples_per_s_per_device"] = round(record["samples_per_s"] / run.mesh.size, 1)
  if run.lead:
    io_utils.append_jsonl(os.path.join(run.workdir, "metrics.jsonl"), record)
  progress.update(epoch=epoch + 1, batch=0, partial=None)
  meta = {"epoch": epoch, "threshold": val_verdict["threshold"], "val": val_verdict,
          "normalizer": ds.normalizer, "class_weights": [float(a) for a in run.setup.alpha],
          "return_scale": run.setup.return_scale, "parameters": run.counts,
          "progress": progress, "fingerprint": run.fingerprint}
  run.store.save(int(state.step), state, meta, score)  # Raises DiskFull.
  return record, improved, val_verdict


def train_and_evaluate(config, workdir, force=False):
  """Trains, keeps the best-F1 checkpoints, then evaluates the best on the test split.

  Re-running with the same workdir and config resumes from the latest checkpoint
  (at the exact batch where it stopped). Raises Preempted after saving on SIGTERM.
  A workdir whose checkpoints come from another config or data is refused unless
  `force` (then it resumes from them under the new config, if the shapes fit).

  Returns:
    The evaluation summary (also written to workdir/report.json).
  """
  t_start = time.time()
  try:
    lead = jax.process_index() == 0  # (Starts JAX's backend: a signal may land here.)
    log = (lambda *a: print(*a, flush=True)) if lead else (lambda *a: None)
    run, state, progress, history = prepare(config, workdir, force, log)
    cli.raise_if_interrupted()
  except cli.Interrupted as e:  # Data, model or resume: nothing of this run saved yet.
    raise cli.Interrupted(e.signame, f"{e.signame} during start-up (data, model, resume): "
                          "stopped before training; nothing was saved by this run") from None
  try:
    return _train_and_evaluate(run, state, progress, history, t_start)
  finally:
    run.lock.release()


def _train_and_evaluate(run, state, progress, history, t_start):
  config, workdir, log, lead = run.config, run.workdir, run.log, run.lead
  rng = jax.random.key(config.train.seed + 1)
  stop_reason = "completed all epochs"
  first_epoch = progress["epoch"]
  finished = resume_lib.stop_reason(progress, config, history[-1] if history else {})
  if finished:  # Re-run of a run that already stopped: evaluate, do not train on.
    stop_reason, first_epoch = finished, config.train.epochs
    log(f"Already stopped ({stop_reason}); evaluating its best checkpoint.")

  # The try holds the loop too: a signal still pending when Preemption gives cli's handler
  # back is raised there, on the way out: after training all the same.
  try:
    with resume_lib.Preemption() as preemption:
      tb = tb_lib.TBWriter(os.path.join(workdir, "tb"), enabled=lead and config.eval.tensorboard)
      for epoch in range(first_epoch, config.train.epochs):
        t0 = time.time()
        state, train_m, diverged = train_epoch(run, state, epoch, progress, rng, preemption)
        if diverged:
          stop_reason = diverged
          log(f"STOP: {stop_reason}")
          break
        record, improved, val_verdict = validate_epoch(run, state, epoch, t0, train_m, progress)
        history.append(record)
        _log_tensorboard(tb, train_m, record, int(state.step))
        log(epoch_line(record, improved))
        stopped = resume_lib.stop_reason(progress, config, record)
        if stopped:
          stop_reason = stopped
          if val_verdict["collapsed"]:
            log(f"STOP: {stop_reason}")
          break
      run.store.close()  # Under the flag handler: a signal must not land inside Orbax.
    if preemption.agreed():  # It came during the last epoch's validation or save.
      raise cli.Interrupted(preemption.requested)
    tb.close()
    if lead and history:
      plots.plot_history(history, os.path.join(workdir, "training_curves.png"))
    return evaluate.evaluate(workdir, config=config, stop_reason=stop_reason,
                             train_seconds=time.time() - t_start)
  except cli.Interrupted as e:  # Every epoch's checkpoint is saved: a resume point.
    run.store.close()  # (Closing twice is harmless.)
    log(f"{e.signame} after training: its checkpoints are saved and it was not evaluated; "
        "re-run the same command to evaluate it.")
    raise Preempted(e.signame) from None


def _log_tensorboard(tb, train_m, record, last_step):
  """Per-step training scalars (from the epoch's collected metrics: no extra host
  sync during the epoch) and the epoch's validation metrics and model stats."""
  n = len(train_m["loss"])
  for j in range(n):
    tb.scalars(last_step - n + j + 1, {"train": {
        k: train_m[k][j] for k in ("loss", "class_loss", "return_loss", "grad_norm", "lr")}})
  tb.scalars(last_step, {"epoch": {k: v for k, v in record.items()
                                   if isinstance(v, (int, float, list)) and k != "step"}})
  tb.flush()


def nonfinite_streak(streak, skipped):
  """Length of the run of non-finite steps ending at the last step."""
  for s in skipped:
    streak = streak + 1 if s else 0
  return streak


def stack_host(partial, step_metrics):
  """Per-step metrics → {name: host array [steps, ...]}.

  Args:
    partial: {name: list} of the steps of this epoch run before a resume, or None.
    step_metrics: list of per-step metric dicts (device arrays).
  """
  host = jax.device_get(step_metrics)
  keys = host[0].keys() if host else (partial or {}).keys()
  out = {}
  for k in keys:
    parts = [np.asarray(partial[k])] if partial else []
    if host:
      parts.append(np.stack([np.asarray(h[k]) for h in host]))
    # float64 on both paths, so a resumed epoch (its first steps read back from
    # JSON) averages to exactly the same number as an uninterrupted one.
    out[k] = np.concatenate([p.astype(np.float64) for p in parts])
  return out


def epoch_record(epoch, state, t0, train_m, val_verdict, val_loss):
  good = train_m["skipped"] == 0
  first = int(state.step) - len(good) + 1  # Optimizer step of the epoch's first batch.
  skipped_at = [first + int(j) for j in np.flatnonzero(~good)[:20]]
  model_stats = {k: v[good].mean(0).tolist() if good.any() else None
                 for k, v in train_m.items() if k not in steps_lib.STEP_METRICS}
  mean = lambda k: float(train_m[k][good].mean()) if good.any() else float("nan")
  return {"epoch": epoch + 1, "step": int(state.step), "seconds": round(time.time() - t0, 2),
          "train_loss": mean("loss"), "train_class_loss": mean("class_loss"),
          "train_return_loss": mean("return_loss"), "grad_norm": mean("grad_norm"),
          "lr": float(train_m["lr"][-1]), "skipped_steps": int((~good).sum()),
          "skipped_at": skipped_at,
          "mixup_share": float(train_m["mixup"].mean()), **model_stats,
          "val_loss": val_loss, **{f"val_{k}": v for k, v in val_verdict.items()}}


def epoch_line(r, improved):
  flag = ""
  if r["val_collapsed"]:
    flag = f"  COLLAPSED: {r['val_collapse_reason']} — not eligible as best"
  elif improved:
    flag = "  * best so far (saved)"
  if r["skipped_steps"]:
    at = ", ".join(map(str, r["skipped_at"])) + (", ..." if r["skipped_steps"] > 20 else "")
    flag += f"  SKIPPED {r['skipped_steps']} non-finite step(s): {at}"
  shares = "/".join(f"{s:.0%}" for s in r["val_class_shares"])
  return (f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  val_loss {r['val_loss']:.4f}  "
          f"val F1 {r['val_f1']:.3f} (all-positive {r['val_f1_baseline']:.3f}) "
          f"P {r['val_precision']:.3f} R {r['val_recall']:.3f} @ {r['val_threshold']:.3f} "
          f"[pred 0/1 {shares}]  AUC {r['val_roc_auc']:.3f}  PR-AUC {r['val_pr_auc']:.3f} "
          f"(prior {r['val_prior']:.3f})  {r['seconds']:.0f}s "
          f"({r['samples_per_s']:,.0f} samples/s, {r['samples_per_s_per_device']:,.0f}/device)"
          f"{flag}")
