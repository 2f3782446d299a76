"""Train state, optimizer, the jitted train/predict steps and the training loop."""

import json
import os
import signal
import time
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxquant import checkpoints as checkpoints_lib
from jaxquant import io_utils
from jaxquant import losses
from jaxquant import metrics as metrics_lib
from jaxquant import mixup as mixup_lib
from jaxquant import models
from jaxquant import optim
from jaxquant import parallel
from jaxquant import report as report_lib
from jaxquant import tb as tb_lib
from jaxquant import xla_options
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import loader

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_STEP_KEYS = ("loss", "class_loss", "return_loss", "grad_norm", "lr", "skipped", "mixup")


class TrainState(flax.struct.PyTreeNode):
  """Everything a train step reads and writes. Only arrays: it is checkpointed as is."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def build_model(config, num_classes):
  return models.build_model(config.model, num_classes, _DTYPES[config.train.dtype])


def make_optimizer(train_config, steps_per_epoch, trainable=None):
  """clip by global norm → AdamW on a warmup + cosine schedule (decay masked to kernels).

  Args:
    train_config: config.train.
    steps_per_epoch: optimizer steps per epoch (sets warmup and decay lengths).
    trainable: None (train everything) or a function params → pytree of bools;
      frozen parameters get `optax.set_to_zero` — no update and no optimizer state.

  Returns:
    (optax transformation, learning-rate schedule).
  """
  total = max(train_config.epochs * steps_per_epoch, 2)
  warmup = min(int(round(train_config.warmup_epochs * steps_per_epoch)), total - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=total, end_value=train_config.end_lr)
  tx = optim.clip_adamw(schedule, train_config.clip_norm, train_config.weight_decay,
                        mask=decay_mask)
  if trainable is not None:
    tx = optax.multi_transform(
        {"train": tx, "freeze": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda t: "train" if t else "freeze", trainable(params)))
  return tx, schedule


def trainable_fn(train_config):
  """The `trainable` argument of make_optimizer for `train.trainable`.

  "all" trains every parameter; "heads" (PEFT) trains only the output heads
  (the top-level "head" module every model has) and freezes the rest.
  """
  if train_config.trainable == "all":
    return None
  if train_config.trainable == "heads":
    def heads_only(params):
      return {k: jax.tree.map(lambda _, k=k: k == "head", v) for k, v in params.items()}
    return heads_only
  raise ValueError(f"config.train.trainable={train_config.trainable!r}: use 'all' or 'heads'")


def decay_mask(params):
  """Weight decay on matrices/kernels only, chosen by parameter name, not by ndim
  (stacked per-expert biases are 2-D but must not decay)."""
  def wants_decay(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name in ("kernel", "embedding") or name.startswith("w_")
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def create_train_state(model, tx, num_features, window, seed, abstract=False):
  """Initial parameters (from `seed`), batch statistics and optimizer state.

  Args:
    abstract: return only shapes and dtypes (jax.ShapeDtypeStruct leaves).
  """
  x = jnp.zeros((1, window, num_features), jnp.float32)

  def init(key):
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

  if abstract:
    return jax.eval_shape(init, jax.random.key(seed))
  # Run once, so compile it without optimisation: XLA:CPU spends tens of seconds
  # optimising the random initialisers of a ResNet, 4x the unoptimised run.
  return jax.jit(init, compiler_options={"xla_backend_optimization_level": 0})(
      jax.random.key(seed))


def parameter_counts(params, trainable=None):
  """{"total": ..., "trainable": ...} parameter counts."""
  sizes = jax.tree.leaves(jax.tree.map(lambda x: int(np.prod(x.shape)), params))
  if trainable is None:
    return {"total": sum(sizes), "trainable": sum(sizes)}
  flags = jax.tree.leaves(trainable(params))
  return {"total": sum(sizes), "trainable": sum(n for n, t in zip(sizes, flags) if t)}


def make_train_step(model, tx, loss_fn, schedule, config, num_classes, total_steps,
                    return_scale=1.0):
  """Returns `train_step(state, batch, rng) -> (state, metrics)` (pure; jit it).

  The objective is the class loss (on one-hot targets, mixed up when configured) + `loss.return_weight` · MSE of the return head on the forward
  return / `return_scale` (its training-split std) + the model's auxiliary loss
  (MoE load balancing). A step whose loss or gradient is not finite leaves the
  state unchanged and reports `skipped=1`.
  """
  return_weight = float(config.loss.return_weight)
  mix_alpha, mix_prob = float(config.train.mixup_alpha), float(config.train.mixup_prob)

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    mix_rng, dropout_rng = jax.random.split(rng)
    # Label smoothing, when configured, happens inside loss_fn (CE/focal terms only).
    targets = jax.nn.one_hot(batch["y"], num_classes)
    x, returns, mixed = batch["x"], batch["r"], jnp.zeros((), bool)
    if mix_prob > 0:
      x, targets, returns, mixed = mixup_lib.mixup(mix_rng, x, targets, returns,
                                                   mix_alpha, mix_prob)
    progress = jnp.minimum(state.step / total_steps, 1.0)

    def objective(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      out, updates = model.apply(variables, x, train=True, rngs={"dropout": dropout_rng},
                                 mutable=["batch_stats"])
      mask = jnp.ones(returns.shape, jnp.float32)
      class_loss, parts = loss_fn(out["logits"], targets, mask, progress)
      return_loss = jnp.mean((out["ret"] - returns / return_scale) ** 2)
      loss = class_loss + return_weight * return_loss + out["aux_loss"]
      return loss, (class_loss, return_loss, {**parts, **out.get("stats", {})}, updates)

    (loss, (class_loss, return_loss, stats, updates)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    grad_norm = optim.global_norm(grads)  # The clipping's expression: XLA computes it once.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step keeps the old state: the optimizer leaves parameters,
    # moments and counts as they were (`apply`), and jnp.where the batch statistics.
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params, apply=ok)
    batch_stats = jax.tree.map(lambda a, b: jnp.where(ok, a, b),
                               updates.get("batch_stats", state.batch_stats),
                               state.batch_stats)
    new = state.replace(step=state.step + 1,
                        params=optax.apply_updates(state.params, param_updates),
                        batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss, "class_loss": class_loss, "return_loss": return_loss,
               "grad_norm": grad_norm, "lr": schedule(state.step),
               "skipped": (~ok).astype(jnp.int32), "mixup": mixed.astype(jnp.float32),
               **stats}
    return new, metrics

  return train_step


def make_predict_step(model):
  """Returns `predict(state, x) -> (class probabilities [B, K], return [B])` (pure)."""
  def predict(state, x):
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                      train=False)
    return jax.nn.softmax(out["logits"], axis=-1), out["ret"]
  return predict


class Runner:
  """The jitted steps of one model on one mesh, with the host-side batch plumbing."""

  def __init__(self, model, mesh, state, train_step=None):
    self.mesh = mesh
    self.batch_sharding = parallel.batch_sharding(mesh)
    self.state_sharding = parallel.state_shardings(state, mesh)
    repl = parallel.replicated(mesh)
    if train_step is not None:
      self.train_step = jax.jit(train_step, donate_argnums=0,
                                in_shardings=(self.state_sharding, self.batch_sharding, repl),
                                out_shardings=(self.state_sharding, repl),
                                compiler_options=xla_options.step_options())
    self._predict = jax.jit(make_predict_step(model),
                            in_shardings=(self.state_sharding, self.batch_sharding),
                            out_shardings=(repl, repl),
                            compiler_options=xla_options.step_options())

  def place_state(self, state):
    return jax.device_put(state, self.state_sharding)

  def put_batch(self, local):
    return parallel.global_batch(local, self.batch_sharding)

  def predict_split(self, state, dataset, split, batch_size):
    """Class probabilities [n, K] and predicted returns [n] for every window of a split.

    Deterministic, and independent of how many devices or processes run it.
    """
    rows = parallel.process_slice(batch_size)
    probs, rets = [], []
    for batch in loader.eval_batches(dataset, split, batch_size, rows):
      p, r = self._predict(state, self.put_batch(batch["x"]))
      probs.append(np.asarray(p))
      rets.append(np.asarray(r))
    n = len(dataset.splits[split])
    if not probs:
      return np.zeros((0, dataset.num_classes), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(probs)[:n], np.concatenate(rets)[:n]


def eval_batch_size(config, mesh):
  """eval.batch_size rounded up to a multiple of the device count (padding is masked)."""
  n = mesh.size
  return -(-config.eval.batch_size // n) * n


def split_loss(loss_fn, probs, labels, num_classes):
  """The class loss of a split from its predicted probabilities (at the end of training)."""
  logits = jnp.log(jnp.clip(jnp.asarray(probs), 1e-12, 1.0))
  targets = jax.nn.one_hot(jnp.asarray(labels), num_classes)
  value, _ = loss_fn(logits, targets, jnp.ones(len(labels)), jnp.ones(()))
  return float(value)


def validation_report(labels, probs, min_rate):
  """Validation metrics at the F1-best threshold, with the collapse verdict.

  The signal class is the last one (1 of two; "up" of three); with three classes
  its one-vs-rest metrics pick the checkpoint and the argmax report is added.
  """
  signal = probs.shape[1] - 1
  scores, binary = probs[:, signal], (labels == signal).astype(np.int64)
  threshold, _ = metrics_lib.best_f1_threshold(binary, scores, min_rate=min_rate)
  summary = metrics_lib.summarize(binary, scores, threshold)
  collapsed, reason = metrics_lib.is_collapsed(scores, threshold, min_rate)
  summary["collapsed"] = bool(collapsed)
  summary["collapse_reason"] = reason if collapsed else ""
  pred = (scores >= threshold) if np.isfinite(threshold) else np.zeros(len(scores), bool)
  summary["class_shares"] = metrics_lib.class_shares(pred.astype(np.int64), 2)
  if probs.shape[1] > 2:
    summary["multiclass"] = report_lib.multiclass_report(labels, probs.argmax(1), probs.shape[1])
  return summary


def run_fingerprint(config, ds, data_dir):
  """What must not change between a run and its resumption: the config (but the
  number of epochs) and the data pipeline (shards, split sizes)."""
  c = json.loads(config.to_json_best_effort())
  c["train"].pop("epochs", None)  # Training longer is a legitimate resume.
  shards = sorted((f, os.path.getsize(os.path.join(data_dir, f)))
                  for f in os.listdir(data_dir) if f.endswith(".jqs"))
  fingerprint = {"config": c, "shards": shards,
                 "splits": {n: len(s) for n, s in ds.splits.items()},
                 "processes": jax.process_count()}
  return json.loads(json.dumps(fingerprint))  # As it reads back from the checkpoint.


def fingerprint_diff(saved, current, limit=5):
  """The keys where two fingerprints differ, as 'key: saved -> current' strings."""
  def flat(tree, prefix=""):
    if isinstance(tree, dict):
      out = {}
      for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}."))
      return out
    return {prefix[:-1]: tree}
  a, b = flat(saved or {}), flat(current)
  name = lambda k: k[len("config."):] if k.startswith("config.") else k
  diffs = [f"{name(k)}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
           for k in sorted(set(a) | set(b)) if a.get(k, None) != b.get(k, None)]
  if len(diffs) > limit:
    diffs = diffs[:limit] + [f"... {len(diffs) - limit} more"]
  return diffs


class _Preemption:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits cleanly.

  (Orbax's reached_preemption needs JAX's preemption service, absent on one host.)
  """

  def __init__(self):
    self.requested = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _):
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class Preempted(Exception):
  pass


class RunSetup(NamedTuple):
  """What `setup_run` builds."""
  trainable: Any  # trainable_fn's partition, or None.
  tx: optax.GradientTransformation
  alpha: np.ndarray  # Class weights.
  loss_fn: Any
  return_scale: float  # Std of the training split's forward returns.
  state: TrainState  # Initial, from train.seed, on the host.
  runner: Runner  # With the jitted train step.


def setup_run(config, ds, mesh, steps_per_epoch):
  """The model, optimizer, loss, initial state and jitted steps of a run on `ds`.

  `train_and_evaluate` trains with these, and benchmarks/epoch_time.py times the
  same step, so a benchmarked step is the one a run takes.
  """
  model = build_model(config, ds.num_classes)
  trainable = trainable_fn(config.train)
  tx, schedule = make_optimizer(config.train, steps_per_epoch, trainable)
  train_split = ds.splits["train"]
  alpha = losses.class_weights(config.loss, train_split.labels, train_split.fwd_returns,
                               ds.num_classes)
  loss_fn = losses.make_loss_fn(config.loss, alpha)
  return_scale = float(np.std(train_split.fwd_returns)) or 1.0
  state = create_train_state(model, tx, ds.num_features, ds.window, config.train.seed)
  # The Runner takes its shardings from the state's structure, which init_from keeps.
  runner = Runner(model, mesh, state, make_train_step(
      model, tx, loss_fn, schedule, config, ds.num_classes,
      config.train.epochs * steps_per_epoch, return_scale))
  return RunSetup(trainable, tx, alpha, loss_fn, return_scale, state, runner)


def train_and_evaluate(config, workdir, force=False):
  """Trains, keeps the best-F1 checkpoints, then evaluates the best on the test split.

  Re-running with the same workdir and config resumes from the latest checkpoint
  (at the exact batch where it stopped). Raises Preempted after saving on SIGTERM.
  A workdir whose checkpoints come from another config or data is refused unless
  `force` (then it resumes from them under the new config, if the shapes fit).

  Returns:
    The report dict (also written to workdir/report.json).
  """
  from jaxquant import evaluate  # Local import: evaluate imports this module.
  lead = jax.process_index() == 0
  log = (lambda *a: print(*a, flush=True)) if lead else (lambda *a: None)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  data_dir = dataset_lib.ensure_data(config.data, log=log)
  ds = dataset_lib.build_dataset(config.data, data_dir)
  log(dataset_lib.describe(ds, data_dir))

  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divides(config.train.batch_size, mesh)
  log(parallel.describe(mesh))
  plan = lambda epoch: loader.epoch_plan(ds, config.data, config.train.batch_size,
                                         config.train.seed, epoch, shards=mesh.size)
  steps = plan(0).shape[0]
  run = setup_run(config, ds, mesh, steps)
  runner, state = run.runner, run.state
  if config.train.init_from:
    state = init_from_run(state, run.tx, config.train.init_from, log)
  counts = parameter_counts(state.params, run.trainable)
  log(f"Model {config.model.name}: {counts['total']:,} parameters ({counts['trainable']:,} "
      f"trainable); {steps} steps/epoch of {config.train.batch_size}; class weights "
      f"{[round(float(a), 3) for a in run.alpha]}")

  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                          keep_best=config.eval.keep_best)
  fingerprint = run_fingerprint(config, ds, data_dir)
  progress = {"epoch": 0, "batch": 0, "best_score": -np.inf, "bad_epochs": 0,
              "collapsed_epochs": 0, "partial": None}
  history = _read_history(workdir)
  if store.latest_step() is not None:
    meta = store.restore_meta(store.latest_step())
    if meta.get("fingerprint") != fingerprint:
      diff = "; ".join(fingerprint_diff(meta.get("fingerprint"), fingerprint))
      if not force:
        raise ValueError(f"workdir {workdir} holds checkpoints of a different config or data "
                         f"({diff}); use another --workdir, or --force to resume them "
                         "under this config")
      log(f"WARNING: --force: resuming checkpoints of a different config or data ({diff})")
    try:
      state, meta = store.restore(store.latest_step(), checkpoints_lib.abstract_like(state))
    except Exception as e:  # Orbax reports a shape/structure mismatch in many ways.
      raise ValueError(f"workdir {workdir}: its latest checkpoint (step {store.latest_step()}) "
                       f"does not fit this model ({str(e).split('. ')[0][:200]})") from e
    progress = meta["progress"]
    log(f"Resuming at epoch {progress['epoch'] + 1}, batch {progress['batch']} "
        f"(step {int(state.step)})")
  if len(history) > progress["epoch"]:  # Epochs logged, then killed before their save.
    history = history[:progress["epoch"]]
    if lead:
      io_utils.atomic_write_text(os.path.join(workdir, "metrics.jsonl"),
                                 "".join(json.dumps(r) + "\n" for r in history))
  state = runner.place_state(state)
  if lead:
    io_utils.atomic_write_text(os.path.join(workdir, "config.json"),
                               config.to_json_best_effort(indent=2))

  tb = tb_lib.TBWriter(os.path.join(workdir, "tb"), enabled=lead and config.eval.tensorboard)
  rng = jax.random.key(config.train.seed + 1)
  val = ds.splits["val"]
  eval_bs = eval_batch_size(config, mesh)
  rows = parallel.process_slice(config.train.batch_size)
  stop_reason = "completed all epochs"

  def save(step_state, meta, score):
    store.save(int(step_state.step), step_state, meta, score)  # Raises DiskFull.

  first_epoch = progress["epoch"]
  finished = _stop_reason(progress, config, history[-1] if history else {})
  if finished:  # Re-run of a run that already stopped: evaluate, do not train on.
    stop_reason, first_epoch = finished, config.train.epochs
    log(f"Already stopped ({stop_reason}); evaluating its best checkpoint.")

  with _Preemption() as preemption:
    for epoch in range(first_epoch, config.train.epochs):
      t0 = time.time()
      partial, step_metrics = progress.get("partial"), []
      batches = loader.train_batches(ds, plan(epoch), rows=rows, skip=progress["batch"],
                                     jitter=config.data.oversample_jitter,
                                     seed=config.train.seed, epoch=epoch,
                                     workers=config.data.workers)
      bar = tqdm(batches, total=steps - progress["batch"], leave=False, mininterval=1.0,
                 desc=f"epoch {epoch + 1}/{config.train.epochs}", disable=None if lead else True)
      bad_streak, checked = 0, 0
      for i, batch in enumerate(bar, start=progress["batch"] + 1):
        state, m = runner.train_step(state, runner.put_batch(batch), rng)
        step_metrics.append(m)  # Stays on device: no host sync per step.
        if i % 32 == 0 or i == steps:  # Look at non-finite steps now and then.
          recent = jax.device_get([s["skipped"] for s in step_metrics[checked:]])
          checked = len(step_metrics)
          bad_streak = _streak(bad_streak, recent)
          if bad_streak >= config.train.max_bad_steps:
            stop_reason = (f"{bad_streak} consecutive steps with a non-finite loss or gradient "
                           f"(last at step {int(state.step)}); updates were skipped, the last "
                           "good checkpoint is kept")
            break
        if preemption.requested:
          progress.update(epoch=epoch, batch=i, partial={
              k: v.tolist() for k, v in _stack_host(partial, step_metrics).items()})
          save(state, {"progress": progress, "fingerprint": fingerprint,
                       "preempted": preemption.requested}, checkpoints_lib.PREEMPTED_SCORE)
          store.close()
          log(f"{preemption.requested}: saved a checkpoint at epoch {epoch + 1}, batch {i} "
              f"(step {int(state.step)}); re-run the same command to resume.")
          raise Preempted(preemption.requested)
      if bad_streak >= config.train.max_bad_steps:
        log(f"STOP: {stop_reason}")
        break

      train_m = _stack_host(partial, step_metrics)
      probs, _ = runner.predict_split(state, ds, "val", eval_bs)
      report = validation_report(val.labels, probs, config.eval.min_positive_rate)
      score = checkpoints_lib.COLLAPSED_SCORE if report["collapsed"] else report["f1"]
      improved = score > progress["best_score"]
      progress["best_score"] = max(progress["best_score"], score)
      progress["bad_epochs"] = 0 if improved else progress["bad_epochs"] + 1
      progress["collapsed_epochs"] = progress["collapsed_epochs"] + 1 if report["collapsed"] else 0
      record = _epoch_record(epoch, state, t0, train_m, report, run.loss_fn, probs, val.labels,
                             ds.num_classes)
      record["samples_per_s"] = round(len(train_m["loss"]) * config.train.batch_size
                                      / max(time.time() - t0, 1e-9), 1)
      record["samples_per_s_per_device"] = round(record["samples_per_s"] / mesh.size, 1)
      history.append(record)
      _log_tensorboard(tb, train_m, record, int(state.step))
      if lead:
        io_utils.append_jsonl(os.path.join(workdir, "metrics.jsonl"), record)
      progress.update(epoch=epoch + 1, batch=0, partial=None)
      meta = {"epoch": epoch, "threshold": report["threshold"], "val": report,
              "normalizer": ds.normalizer, "class_weights": [float(a) for a in run.alpha],
              "return_scale": run.return_scale, "parameters": counts, "progress": progress,
              "fingerprint": fingerprint}
      save(state, meta, score)
      log(_epoch_line(record, improved))
      stopped = _stop_reason(progress, config, record)
      if stopped:
        stop_reason = stopped
        if report["collapsed"]:
          log(f"STOP: {stop_reason}")
        break
  store.close()
  tb.close()
  if lead:
    evaluate.plot_history(history, workdir)
  return evaluate.evaluate(workdir, config=config, stop_reason=stop_reason,
                           train_seconds=time.time() - t_start)


def _stop_reason(progress, config, last_record):
  """Why the run stops after the epoch of `last_record` (None: it goes on).

  The loop asks after each epoch's save; a re-run asks it of the saved progress, so a
  run that had stopped early is evaluated, not trained one epoch more."""
  if progress["batch"]:  # Preempted mid-epoch: not stopped.
    return None
  if progress["collapsed_epochs"] >= config.eval.collapse_patience:
    why = last_record.get("val_collapse_reason") or "collapsed"
    return (f"collapsed: the model {why} on validation for {progress['collapsed_epochs']} "
            "epochs in a row")
  if progress["bad_epochs"] >= config.train.patience:
    return f"early stopping: no better validation F1 for {progress['bad_epochs']} epochs"
  return None


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


def _streak(streak, skipped):
  """Length of the run of non-finite steps ending at the last step."""
  for s in skipped:
    streak = streak + 1 if s else 0
  return streak


def _stack_host(partial, step_metrics):
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


def _epoch_record(epoch, state, t0, train_m, report, loss_fn, probs, labels, num_classes):
  good = train_m["skipped"] == 0
  first = int(state.step) - len(good) + 1  # Optimizer step of the epoch's first batch.
  skipped_at = [first + int(j) for j in np.flatnonzero(~good)[:20]]
  model_stats = {k: v[good].mean(0).tolist() if good.any() else None
                 for k, v in train_m.items() if k not in _STEP_KEYS}
  mean = lambda k: float(train_m[k][good].mean()) if good.any() else float("nan")
  return {"epoch": epoch + 1, "step": int(state.step), "seconds": round(time.time() - t0, 2),
          "train_loss": mean("loss"), "train_class_loss": mean("class_loss"),
          "train_return_loss": mean("return_loss"), "grad_norm": mean("grad_norm"),
          "lr": float(train_m["lr"][-1]), "skipped_steps": int((~good).sum()),
          "skipped_at": skipped_at,
          "mixup_share": float(train_m["mixup"].mean()), **model_stats,
          "val_loss": split_loss(loss_fn, probs, labels, num_classes),
          **{f"val_{k}": v for k, v in report.items()}}


def init_from_run(state, tx, run_dir, log=print):
  """Starts from the parameters of another run's best checkpoint (fine-tuning / PEFT).

  The architecture must match; the optimizer state starts fresh.
  """
  store = checkpoints_lib.CheckpointStore(os.path.join(run_dir, "checkpoints"))
  step = store.best_step()
  if step is None:
    raise ValueError(f"config.train.init_from={run_dir!r} holds no checkpoint")
  source = {"params": state.params}
  if jax.tree.leaves(state.batch_stats):
    source["batch_stats"] = state.batch_stats
  try:
    restored = store.restore_partial(step, checkpoints_lib.abstract_like(source))
  except Exception as e:  # Orbax reports a shape/structure mismatch in many ways.
    raise ValueError(f"config.train.init_from={run_dir!r}: its checkpoint does not fit this "
                     f"model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  finally:
    store.close()
  log(f"Initialised from {run_dir} (step {step})")
  return state.replace(params=restored["params"],
                       batch_stats=restored.get("batch_stats", state.batch_stats),
                       opt_state=tx.init(restored["params"]))


def _read_history(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _epoch_line(r, improved):
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
