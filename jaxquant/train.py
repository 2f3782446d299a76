"""Train state, optimizer, the jitted train/eval steps and the training loop."""

import json
import os
import time
from typing import Any

import flax
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
from jaxquant import models
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import loader

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
  """Everything a train step reads and writes. Only arrays: it is checkpointed as is."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def build_model(config, num_classes):
  return models.build_model(config.model, num_classes, _DTYPES[config.train.dtype])


def make_optimizer(train_config, steps_per_epoch):
  """clip by global norm → AdamW on a warmup + cosine schedule (decay masked to kernels).

  Returns:
    (optax transformation, learning-rate schedule).
  """
  total = max(train_config.epochs * steps_per_epoch, 2)
  warmup = min(int(round(train_config.warmup_epochs * steps_per_epoch)), total - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=total, end_value=train_config.end_lr)
  tx = optax.chain(
      optax.clip_by_global_norm(train_config.clip_norm),
      optax.adamw(schedule, weight_decay=train_config.weight_decay, mask=decay_mask))
  return tx, schedule


def decay_mask(params):
  """Weight decay on matrices/kernels only, chosen by parameter name, not by ndim
  (stacked per-expert biases are 2-D but must not decay)."""
  def wants_decay(path, _):
    name = str(getattr(path[-1], "key", path[-1]))
    return name in ("kernel", "embedding") or name.startswith("w_")
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def init_variables(model, num_features, window, seed):
  x = jnp.zeros((1, window, num_features), jnp.float32)
  variables = model.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed)},
                         x, train=False)
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(model, tx, num_features, window, seed):
  params, batch_stats = init_variables(model, num_features, window, seed)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params))


def make_train_step(model, tx, loss_fn, schedule):
  """Returns the jitted `train_step(state, batch, rng) -> (state, metrics)`.

  A step whose loss or gradient is not finite leaves the state unchanged and
  reports `skipped=1`; the loop stops the run after too many in a row.
  """
  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)

    def objective(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      out, updates = model.apply(variables, batch["x"], train=True,
                                 rngs={"dropout": rng}, mutable=["batch_stats"])
      mask = jnp.ones(batch["y"].shape, jnp.float32)
      class_loss = loss_fn(out["logits"], batch["y"], mask)
      return class_loss + out["aux_loss"], (class_loss, updates)

    (loss, (class_loss, updates)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1,
                        params=optax.apply_updates(state.params, param_updates),
                        batch_stats=updates.get("batch_stats", state.batch_stats),
                        opt_state=opt_state)
    # Keep the old state on a non-finite step (jnp.where keeps NaNs out of it).
    new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
    new = new.replace(step=state.step + 1)
    metrics = {"loss": loss, "class_loss": class_loss, "grad_norm": grad_norm,
               "lr": schedule(state.step), "skipped": (~ok).astype(jnp.int32)}
    return new, metrics

  return jax.jit(train_step, donate_argnums=0)


def make_predict_step(model):
  """Returns the jitted `predict(state, x) -> (class probabilities [B, K], return [B])`."""
  def predict(state, x):
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                      train=False)
    return jax.nn.softmax(out["logits"], axis=-1), out["ret"]
  return jax.jit(predict)


def predict_split(predict_fn, state, dataset, split, batch_size):
  """Class probabilities [n, K] and predicted returns [n] for every window of a split."""
  probs, rets = [], []
  for batch in loader.eval_batches(dataset, split, batch_size):
    p, r = predict_fn(state, batch["x"])
    keep = batch["mask"]
    probs.append(np.asarray(p)[keep])
    rets.append(np.asarray(r)[keep])
  if not probs:
    return np.zeros((0, dataset.num_classes), np.float32), np.zeros((0,), np.float32)
  return np.concatenate(probs), np.concatenate(rets)


def split_loss(loss_fn, probs, labels):
  """The training loss of a split, from its predicted probabilities (float64 on host)."""
  logits = jnp.log(jnp.clip(jnp.asarray(probs), 1e-12, 1.0))
  return float(loss_fn(logits, jnp.asarray(labels), jnp.ones(len(labels))))


def validation_report(labels, probs, min_rate):
  """Validation metrics at the F1-best threshold, with the collapse verdict."""
  scores = probs[:, 1]
  threshold, _ = metrics_lib.best_f1_threshold(labels, scores, min_rate=min_rate)
  summary = metrics_lib.summarize(labels, scores, threshold)
  collapsed, reason = metrics_lib.is_collapsed(scores, threshold, min_rate)
  summary["collapsed"] = bool(collapsed)
  summary["collapse_reason"] = reason if collapsed else ""
  summary["class_shares"] = metrics_lib.class_shares(
      (scores >= threshold).astype(np.int64) if np.isfinite(threshold)
      else np.zeros(len(scores), np.int64), 2)
  return summary


def run_fingerprint(config):
  """What must not change between a run and its resumption."""
  c = json.loads(config.to_json_best_effort())
  c["train"].pop("epochs", None)  # Training longer is a legitimate resume.
  return c


def train_and_evaluate(config, workdir):
  """Trains, keeps the best-F1 checkpoints, then evaluates the best on the test split.

  Returns:
    The report dict (also written to workdir/report.json).
  """
  from jaxquant import evaluate  # Local import: evaluate imports this module.
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  data_dir = dataset_lib.ensure_data(config.data)
  ds = dataset_lib.build_dataset(config.data, data_dir)
  _log_data(ds, data_dir)

  steps = loader.steps_per_epoch(ds, config.train.batch_size)
  if steps == 0:
    raise ValueError(f"train.batch_size={config.train.batch_size} is larger than the "
                     f"{len(ds.splits['train'])} training windows")
  model = build_model(config, ds.num_classes)
  tx, schedule = make_optimizer(config.train, steps)
  alpha = losses.class_weights(config.loss, ds.splits["train"].labels, ds.num_classes)
  loss_fn = losses.make_loss_fn(config.loss, alpha)
  train_step = make_train_step(model, tx, loss_fn, schedule)
  predict_fn = make_predict_step(model)
  state = create_train_state(model, tx, ds.num_features, ds.window, config.train.seed)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f"Model {config.model.name}: {n_params:,} parameters; {steps} steps/epoch of "
        f"{config.train.batch_size}; class weights {np.round(alpha, 3).tolist()}", flush=True)

  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                          keep_best=config.eval.keep_best)
  fingerprint = run_fingerprint(config)
  start_epoch, best_score, bad_epochs = 0, -np.inf, 0
  history = _read_history(workdir)
  if store.latest_step() is not None:
    meta = store.restore_meta(store.latest_step())
    if meta.get("fingerprint") != fingerprint:
      raise ValueError(f"workdir {workdir} holds checkpoints of a different config; "
                       "use another --workdir")
    state, meta = store.restore(store.latest_step(), checkpoints_lib.abstract_like(state))
    start_epoch, best_score, bad_epochs = meta["epoch"] + 1, meta["best_score"], meta["bad_epochs"]
    history = history[:start_epoch]
    print(f"Resuming from epoch {start_epoch} (step {int(state.step)})", flush=True)
  io_utils.atomic_write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  rng = jax.random.key(config.train.seed + 1)
  val = ds.splits["val"]
  stop_reason = "completed all epochs"
  for epoch in range(start_epoch, config.train.epochs):
    t0 = time.time()
    step_metrics = []
    batches = loader.train_batches(ds, config.train.batch_size, config.train.seed, epoch)
    for batch in tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{config.train.epochs}",
                      leave=False, mininterval=1.0, disable=None):
      state, m = train_step(state, batch, rng)
      step_metrics.append(m)  # Stays on device: no host sync inside the epoch.
    train_m = {k: np.asarray(v) for k, v in jax.device_get(
        jax.tree.map(lambda *xs: jnp.stack(xs), *step_metrics)).items()}
    skipped = int(train_m["skipped"].sum())
    if skipped == steps:
      stop_reason = f"every step of epoch {epoch + 1} had a non-finite loss or gradient"
      print(f"STOP: {stop_reason}", flush=True)
      break
    good = train_m["skipped"] == 0
    probs, _ = predict_split(predict_fn, state, ds, "val", config.eval.batch_size)
    report = validation_report(val.labels, probs, config.eval.min_positive_rate)
    score = (checkpoints_lib.COLLAPSED_SCORE if report["collapsed"] else report["f1"])
    improved = score > best_score
    best_score, bad_epochs = (score, 0) if improved else (best_score, bad_epochs + 1)
    record = {
        "epoch": epoch + 1, "step": int(state.step), "seconds": round(time.time() - t0, 2),
        "train_loss": float(train_m["loss"][good].mean()),
        "grad_norm": float(train_m["grad_norm"][good].mean()),
        "lr": float(train_m["lr"][-1]), "skipped_steps": skipped,
        "val_loss": split_loss(loss_fn, probs, val.labels),
        **{f"val_{k}": v for k, v in report.items()},
    }
    history.append(record)
    io_utils.append_jsonl(os.path.join(workdir, "metrics.jsonl"), record)
    meta = {"epoch": epoch, "threshold": report["threshold"], "val": report,
            "normalizer": ds.normalizer, "class_weights": alpha.tolist(),
            "best_score": best_score, "bad_epochs": bad_epochs, "fingerprint": fingerprint}
    store.save(int(state.step), state, meta, score)
    _log_epoch(record, improved)
    if bad_epochs >= config.train.patience:
      stop_reason = f"early stopping: no better validation F1 for {bad_epochs} epochs"
      break
  store.close()
  train_seconds = time.time() - t_start
  evaluate.plot_history(history, workdir)
  report = evaluate.evaluate(workdir, config=config, stop_reason=stop_reason,
                             train_seconds=train_seconds)
  return report


def _read_history(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _log_data(ds, data_dir):
  parts = [f"{name} {s['windows']:,} windows ({s['positive_rate']:.1%} positive)"
           for name, s in ds.summary()["splits"].items()]
  print(f"Data {data_dir}: {len(ds.instruments)} instruments, {ds.features.shape[0]:,} bars; "
        + "; ".join(parts), flush=True)


def _log_epoch(r, improved):
  flag = ""
  if r["val_collapsed"]:
    flag = f"  COLLAPSED: {r['val_collapse_reason']} — not eligible as best"
  elif improved:
    flag = "  * best so far (saved)"
  print(f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  val_loss {r['val_loss']:.4f}  "
        f"val F1 {r['val_f1']:.3f} (all-positive {r['val_f1_baseline']:.3f}) "
        f"P {r['val_precision']:.3f} R {r['val_recall']:.3f} @ {r['val_threshold']:.3f}  "
        f"AUC {r['val_roc_auc']:.3f}  PR-AUC {r['val_pr_auc']:.3f} (prior "
        f"{r['val_prior']:.3f})  {r['seconds']:.0f}s{flag}", flush=True)
