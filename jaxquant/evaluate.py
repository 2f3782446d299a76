"""Restore a checkpoint and evaluate it: report.json, report.md, pictures, predictions.

The decision threshold is the one chosen on validation and saved with the
checkpoint; the test split only ever has it applied. Restoring works on any
device count: the mesh comes from the machine that evaluates.
"""

import io
import json
import math
import os
import tempfile

import jax
import ml_collections
import numpy as np

from jaxquant import backtest
from jaxquant import bootstrap
from jaxquant import checkpoints as checkpoints_lib
from jaxquant import config_defaults
from jaxquant import io_utils
from jaxquant import parallel
from jaxquant import plots
from jaxquant import report_md
from jaxquant import resume as resume_lib
from jaxquant import state as state_lib
from jaxquant import steps as steps_lib
from jaxquant import trading
from jaxquant import verdict
from jaxquant import workdir as workdir_lib
from jaxquant.data import dataset as dataset_lib


def load_run_config(workdir):
  """The run's saved config, on top of today's defaults (a run saved before a
  setting existed gets that setting's default)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no config.json: not a jaxquant run directory")
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:  # JSON or encoding errors: name the file, not only the line.
    raise ValueError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(saved, dict) or not isinstance(saved.get("model", {}), dict):
    raise ValueError(f"{path} is not a jaxquant config (a JSON object of sections)")
  model = saved.get("model", {})
  if "window" in model and model.get("name") in ("transformer", "moe"):
    model["attention_radius"] = model.pop("window")  # A run saved before the rename.
  config = config_defaults.get_config()
  try:
    _merge(config, saved)
  except (AttributeError, KeyError, TypeError) as e:  # A section of the wrong type.
    raise ValueError(f"{path} does not fit today's config ({type(e).__name__}: {e})") from None
  return config


def _merge(config, saved):
  for key, value in saved.items():
    if isinstance(value, dict) and key in config and key != "model":
      _merge(config[key], value)
    else:  # The model section is the run's own: its keys depend on the model.
      config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def restore(workdir, config, step=None):
  """Restores a run's checkpoint onto this machine's devices.

  Args:
    workdir: run directory.
    config: the run's config.
    step: checkpoint step; None = the best by validation F1.

  Returns:
    (steps, state, meta, step, all_collapsed): the jitted ShardedSteps;
    all_collapsed is True when even the best checkpoint is a collapsed model.
  """
  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"))
  try:
    if store.latest_step() is None:
      raise ValueError(f"{workdir}/checkpoints holds no checkpoint to evaluate")
    if step is None:
      step = store.best_step()
    elif step not in store.all_steps():
      raise ValueError(f"--step={step} is not a kept checkpoint; kept: {store.all_steps()}")
    try:  # A corrupt checkpoint is refused, never evaluated: name what else there is.
      store.verify(step)
    except checkpoints_lib.CorruptCheckpoint as e:
      intact = store.intact_steps()
      raise checkpoints_lib.CorruptCheckpoint(
          f"{e}; refusing to evaluate it. Intact steps: "
          + (f"{intact} (pick one with --step)" if intact else "none")) from e
    meta = store.restore_meta(step)
    if "normalizer" not in meta:
      raise ValueError(f"checkpoint {step} was saved mid-epoch (preempted) and has no "
                       "validation; resume training first or pick another --step")
    model = state_lib.make_model(config, len(meta["class_weights"]))
    tx, _ = state_lib.make_optimizer(config.train, 1,
                                     state_lib.trainable_partition(config.train))
    num_features = len(meta["normalizer"]["mean"])
    abstract = state_lib.create_train_state(model, tx, num_features, config.data.window,
                                            config.train.seed, abstract=True)
    steps = steps_lib.ShardedSteps(model, parallel.restore_mesh(config.mesh), abstract)
    abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                            abstract, steps.state_sharding)
    try:
      state, meta = store.restore(step, abstract)
    except Exception as e:  # Orbax's message is a dump of both trees: say what was trained.
      asked = checkpoints_lib.model_description(
          config.model.to_dict(), state_lib.parameter_counts(abstract.params))
      raise ValueError(f"checkpoint step {step} of {workdir} does not fit this config's "
                       f"model: it was trained as {checkpoints_lib.trained_model(meta)}, this "
                       f"config builds {asked}; evaluate with the run's own config (leave out "
                       "--config)") from e
  finally:
    store.close()
  return steps, state, meta, int(step), bool(meta["val"]["collapsed"])


def _split_results(labels, probs, fwd, threshold, config, block):
  """The split's verdict at the validation threshold, the trading sweep and the
  bootstrap intervals."""
  r = verdict.split_verdict(labels, probs, threshold, config.eval.min_positive_rate,
                            config.eval.max_positive_rate)
  binary, scores = verdict.signal_view(labels, probs)
  r["sweep"] = trading.trading_sweep(binary, scores, fwd)
  r["at_threshold"] = trading.trading_sweep(binary, scores, fwd, [threshold])[0]
  if config.eval.bootstrap > 0:
    r["bootstrap"] = bootstrap.bootstrap_metrics(binary, scores, threshold, block=block,
                                                 n_boot=config.eval.bootstrap,
                                                 seed=config.train.seed)
  return r


def _return_scale(config, meta):
  """The factor from the return head's output to return units (the training split's
  std of forward returns, saved with the checkpoint); None when there is no trained
  return head (loss.return_weight = 0) or the checkpoint predates the saved scale."""
  if not config.loss.return_weight > 0:
    return None
  if meta.get("return_scale") is None:
    print("WARNING: the checkpoint has no return_scale: return head not reported", flush=True)
    return None
  return float(meta["return_scale"])


def _in_return_units(rets, scale):
  """The return head's output (trained on return / return_scale) in return units."""
  return np.asarray(rets, np.float64) * scale


def _return_head(predicted, realised, config, block):
  """Information coefficients of the return head on one split, with block-bootstrap
  intervals (nan bounds with eval.bootstrap = 0)."""
  ok = np.isfinite(realised)  # Windows whose future is known.
  predicted, realised = predicted[ok], np.asarray(realised, np.float64)[ok]
  if config.eval.bootstrap > 0:
    out = bootstrap.bootstrap_ic(predicted, realised, block=block, n_boot=config.eval.bootstrap,
                                 seed=config.train.seed)
  else:
    ic = bootstrap.information_coefficients(predicted, realised)
    out = {name: {"estimate": v, "lo": math.nan, "hi": math.nan}
           for name, v in zip(bootstrap.IC_METRICS, ic)}
  return {**out, "n": int(ok.sum())}


@workdir_lib.locked(shared=True)  # Not while a run trains on it.
def evaluate(workdir, config=None, step=None, stop_reason=None, train_seconds=None,
             out_dir=None):
  """Evaluates the best checkpoint (or `step`) of a run on validation and test.

  Refuses when the run's own data changed since training (the checkpoint's
  fingerprint). With `config.eval.data_dir` set, "test" is every window of that
  other data (another instrument or period), through the run's own normalisation,
  and the report is report-<dirname>.json/.md with <dirname>-*.png pictures: the
  run's own report is never overwritten. Without stop_reason/train_seconds (a
  re-evaluation) they are read back from the run's previous report.json.

  Returns:
    The summary dict, also written atomically to out_dir (default workdir)/report.json
    (+ report.md).
  """
  config = config or load_run_config(workdir)
  out_dir = out_dir or workdir
  _check_writable(out_dir, "--out_dir=DIR")  # Before the restore: fail in seconds.
  steps, state, meta, step, all_collapsed = restore(workdir, config, step)
  eval_bs = steps_lib.eval_batch_size(config, steps.mesh)
  data_dir = dataset_lib.ensure_data(config.data)
  ds = dataset_lib.build_dataset(config.data, data_dir, normalizer=meta["normalizer"])
  _check_same_data(meta, config, ds, data_dir, workdir)
  if stop_reason is None and train_seconds is None:
    stop_reason, train_seconds = _training_facts(workdir, meta)
  sets = {"val": (ds, "val"), "test": (ds, "test")}
  if config.eval.data_dir:
    other = dataset_lib.build_inference_set(config.data, config.eval.data_dir,
                                            meta["normalizer"], labelled_only=True)
    sets["test"] = (other, "all")
  preds = {n: steps.predict_split(state, d, sp, eval_bs) for n, (d, sp) in sets.items()}
  return report_predictions(config, workdir, out_dir, data_dir, ds, sets, preds, meta, step,
                            all_collapsed, stop_reason, train_seconds)


def report_predictions(config, workdir, out_dir, data_dir, ds, sets, preds, meta, step,
                       all_collapsed, stop_reason, train_seconds, extra=None, pictures=True):
  """report.json, report.md, the pictures and the backtest of one checkpoint's predictions
  `preds` ({"val"|"test": (probs [n, K], returns [n])} on `sets`): `evaluate`'s second half,
  which a population (jaxquant/population_train.py) calls per member after one batched
  prediction of all members; `extra` joins the summary (an ensemble's members). Without
  `pictures` (a sweep's members: matplotlib would take most of a sweep's time) no PNG is
  drawn; `--mode=eval` on the workdir draws them."""
  threshold = meta["threshold"]
  block = config.data.window + config.data.horizon  # Windows this far apart don't overlap.
  scale = _return_scale(config, meta)

  lead = jax.process_index() == 0
  results, arrays, returns = {}, {}, None
  trading_bt = backtest.Backtests(config, sets, {n: p for n, (p, _) in preds.items()}, data_dir)
  threshold, objective = trading_bt.choose_threshold(threshold)  # eval.threshold_objective
  for name, (d, split) in sets.items():
    probs, rets = preds[name]
    s = d.splits[split]
    arrays[name] = verdict.signal_view(s.labels, probs)
    results[name] = _split_results(s.labels, probs, s.fwd_returns, threshold, config, block)
    trading_bt.add(results[name], name, threshold)  # <split>.backtest, the sweep's net columns
    if name == "test" and scale is not None:
      returns = (_in_return_units(rets, scale), s.fwd_returns)
      results[name]["return_head"] = _return_head(*returns, config, block)
  calibration = None
  if config.eval.calibration == "temperature":  # Fitted on val; the pictures show it.
    arrays, calibration = _temperature_scaled(arrays, threshold)
  summary = {
      "config_name": config.name,
      "workdir": os.path.abspath(workdir),
      "data": {"dir": data_dir, **ds.summary()},
      "eval_data_dir": config.eval.data_dir or None,
      "best_step": step, "best_epoch": int(meta["epoch"]) + 1,
      "threshold": threshold, "threshold_chosen_on": "val", "threshold_objective": objective,
      "all_checkpoints_collapsed": all_collapsed,
      "stop_reason": stop_reason, "train_seconds": train_seconds,
      "parameters": meta.get("parameters"),
      "uncalibrated_scores": uncalibrated_reason(config), "calibration": calibration,
      "val": results["val"], "test": results["test"],
  }
  prefix = ""
  if config.eval.data_dir:
    summary["test_data"] = sets["test"][0].summary()
    prefix = os.path.basename(os.path.normpath(config.eval.data_dir)) + "-"
  summary.update(extra or {})
  if not pictures:
    summary["pictures"] = False
  if lead:
    if pictures:
      _pictures(out_dir, arrays, results, threshold, returns, prefix)
    trading_bt.write(out_dir, prefix, equity=pictures)  # trades.csv, equity.png
    for name, (d, split) in sets.items():  # val_/test_predictions.npz (walk-forward, sweeps)
      _save_predictions(os.path.join(out_dir, f"{prefix}{name}_predictions.npz"), d, split,
                        preds[name][0], threshold)
    name = f"report-{prefix[:-1]}" if prefix else "report"
    io_utils.atomic_write_json(os.path.join(out_dir, name + ".json"), summary)
    md = report_md.write_report_md(summary, out_dir, name=name + ".md", figure_prefix=prefix)
    print(report_md.console_summary(summary, md), flush=True)
  return summary


def _save_predictions(path, d, split, probs, threshold):
  """A split's windows with their scores (walk-forward and sweeps pool them), before
  report.json: so a report.json means they are there."""
  s = d.splits[split]
  labels, scores = verdict.signal_view(s.labels, probs)
  buf = io.BytesIO()
  np.savez_compressed(buf, instrument=np.asarray(d.instruments)[s.instrument],
                      timestamp=s.timestamps, probability=scores, label=labels,
                      forward_return=s.fwd_returns, threshold=threshold,
                      probabilities=np.asarray(probs), classes=s.labels)
  io_utils.atomic_write_bytes(path, buf.getvalue())


def load_split_predictions(workdir, split):
  """{column: array} of a run's <split>_predictions.npz (_save_predictions's)."""
  with np.load(os.path.join(workdir, f"{split}_predictions.npz")) as z:
    return {k: z[k] for k in z.files}


def _check_writable(out_dir, flag):
  """One line, before any work, where the outputs cannot be written (a read-only
  workdir or filesystem); a probe file, as access() passes read-only mounts for root."""
  try:
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir):
      pass
  except OSError as e:
    raise ValueError(f"cannot write to {out_dir} ({e.strerror}): pass {flag} to write "
                     "the outputs elsewhere") from None


def _check_same_data(meta, config, ds, data_dir, workdir):
  """Refuses data other than the run's: the shards and split sizes of the
  checkpoint's fingerprint (not its config: eval may override settings)."""
  saved = meta.get("fingerprint")
  if not saved:  # A checkpoint saved before fingerprints: nothing to compare.
    return
  now = resume_lib.run_fingerprint(config, ds, data_dir)
  part = lambda f: {"shards": dict(map(tuple, f.get("shards") or [])),
                    "splits": f.get("splits")}
  if part(saved) != part(now):
    diff = "; ".join(resume_lib.fingerprint_diff(part(saved), part(now)))
    raise ValueError(f"the data in {data_dir} is not what run {workdir} was trained on "
                     f"({diff}); restore it, or evaluate on other data with "
                     "--config.eval.data_dir=DIR (its own report)")


def _training_facts(workdir, meta):
  """(stop_reason, train_seconds) of a run evaluated again: from its previous
  report.json, else the checkpoint meta (None where neither has them)."""
  previous = {}
  try:
    with open(os.path.join(workdir, "report.json")) as f:
      previous = json.load(f)
  except (OSError, ValueError):  # No (readable) earlier report.
    pass
  previous = previous if isinstance(previous, dict) else {}
  return (previous.get("stop_reason") or meta.get("stop_reason"),
          previous.get("train_seconds") or meta.get("train_seconds"))


def uncalibrated_reason(config):
  """Why the scores are not calibrated probabilities (None when they are: plain
  cross-entropy without class weights)."""
  loss = config.loss
  if loss.name in ("soft_f1", "dice", "composite") or (loss.name == "focal" and loss.gamma):
    return f"trained with the {loss.name} loss"
  if str(loss.alpha) != "none":
    return f"class weights loss.alpha={loss.alpha}"
  return None


def _tempered(scores, t):
  """sigmoid(logit(score) / t): monotonic, so rankings and decisions stay as they are."""
  s = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
  return 0.5 * (1 + np.tanh((np.log(s) - np.log1p(-s)) / (2 * t)))


def _temperature_scaled(arrays, threshold):
  """The signal scores tempered by the T of least validation log-loss (a grid over
  0.05..20), and what it did: T, the threshold in tempered units, ECE before/after."""
  y, s = arrays["val"]
  nll = lambda p: -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
  grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 300))
  t = float(grid[int(np.argmin([nll(np.clip(_tempered(s, g), 1e-12, 1 - 1e-12))
                                for g in grid]))])
  tempered = {k: (y, _tempered(s, t)) for k, (y, s) in arrays.items()}
  ece = lambda a: {k: plots.calibration_table(*v)["ece"] for k, v in a.items()}
  return tempered, {"method": "temperature", "fitted_on": "val", "temperature": t,
                    "threshold": float(_tempered(threshold, t)),
                    "ece_before": ece(arrays), "ece_after": ece(tempered)}


def _pictures(out_dir, arrays, results, threshold, returns=None, prefix=""):
  path = lambda name: os.path.join(out_dir, prefix + name)
  if returns is not None:  # (predicted, realised) test returns of a trained return head.
    ok = np.isfinite(returns[1])
    head = results["test"]["return_head"]
    plots.plot_return_head(returns[0][ok], returns[1][ok], path("test_return_head.png"),
                           ic=(head["ic"]["estimate"], head["rank_ic"]["estimate"]))
  for split, (labels, scores) in arrays.items():
    if labels.min() != labels.max():
      plots.plot_roc_pr(labels, scores, path(f"{split}_roc_pr.png"), split=split)
    plots.plot_calibration(labels, scores, path(f"{split}_calibration.png"), split=split)
  plots.plot_confusion(results["test"]["confusion"], path("test_confusion.png"),
                            class_names=["no signal", "signal"], title="Test confusion")
  plots.plot_threshold_sweep(results["val"]["sweep"], results["test"]["sweep"],
                                  path("threshold_sweep.png"), chosen_threshold=threshold)


@workdir_lib.locked(shared=True)
def predict(workdir, config=None, step=None, data_dir=None, out=None):
  """Writes per-window probabilities for new data (every window of `data_dir`).

  Outputs `out` (default workdir/predictions.npz) and a .csv twin with columns
  instrument, timestamp, probability, predicted class (at the saved threshold),
  label and forward return (NaN / -1 where the future is not known yet) and, when
  the run trained a return head (loss.return_weight > 0), predicted_return (in
  return units: the head's output times the run's saved return_scale).

  Returns:
    The columns as arrays, by name.
  """
  config = config or load_run_config(workdir)
  out = out or os.path.join(workdir, "predictions.npz")
  if os.path.isdir(out):
    raise ValueError(f"--out={out} is a directory: give a file name, e.g. "
                     f"--out={os.path.join(out, 'predictions.npz')}")
  _check_writable(os.path.dirname(os.path.abspath(out)), "--out=FILE")
  steps, state, meta, step, _ = restore(workdir, config, step)
  data_dir = data_dir or config.eval.data_dir or dataset_lib.ensure_data(config.data)
  d = dataset_lib.build_inference_set(config.data, data_dir, meta["normalizer"])
  probs, rets = steps.predict_split(state, d, "all",
                                    steps_lib.eval_batch_size(config, steps.mesh))
  s = d.splits["all"]
  threshold = meta["threshold"]
  _, scores = verdict.signal_view(s.labels, probs)
  arrays = {"instrument": np.asarray(d.instruments)[s.instrument], "timestamp": s.timestamps,
            "probability": scores,
            "predicted_class": (scores >= threshold).astype(np.int32),
            "label": s.labels.astype(np.int32), "forward_return": s.fwd_returns}
  scale = _return_scale(config, meta)
  if scale is not None:
    arrays["predicted_return"] = _in_return_units(rets, scale)
  if jax.process_index() == 0:
    buf = io.BytesIO()
    np.savez_compressed(buf, threshold=threshold, probabilities=np.asarray(probs),
                        config_json=config.to_json_best_effort(), **arrays)  # For backtest.
    io_utils.atomic_write_bytes(out, buf.getvalue())
    lines = ["instrument,timestamp,probability,predicted_class,label,forward_return"
             + (",predicted_return" if scale is not None else "")]
    for i in range(len(s)):
      ts = np.datetime64(int(arrays["timestamp"][i]), "ns").astype("datetime64[s]")
      lines.append(f"{arrays['instrument'][i]},{ts},{arrays['probability'][i]:.6f},"
                   f"{arrays['predicted_class'][i]},{arrays['label'][i]},"
                   f"{arrays['forward_return'][i]:.6g}"
                   + (f",{arrays['predicted_return'][i]:.6g}" if scale is not None else ""))
    io_utils.atomic_write_text(os.path.splitext(out)[0] + ".csv", "\n".join(lines) + "\n")
    print(f"Wrote {len(s):,} predictions (threshold {threshold:.4f}, checkpoint step {step}) "
          f"to {out} and {os.path.splitext(out)[0]}.csv", flush=True)
  return arrays
