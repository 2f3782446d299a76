"""Resuming a run: what must match (the fingerprint), where it stopped, preemption.

A run saves its position (epoch, batch, early-stopping state) with every
checkpoint; `resume` restores the latest one when it comes from the same config
and data, so a re-run continues at the exact batch where it stopped.
"""

import json
import os
import signal

import jax
import numpy as np

from jaxquant import checkpoints as checkpoints_lib
from jaxquant import config_defaults
from jaxquant import io_utils
from jaxquant.data import shards as shards_lib
from jaxquant.models import lora
from jaxquant.models import param_count


class Preempted(Exception):
  """SIGTERM/SIGINT arrived: a resume checkpoint was saved."""


class Preemption:
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

  def agreed(self, batch=None, every=8):
    """The signal every process stops on, or None: all stop at the same batch.

    With several processes each has its own flag (scancel's SIGTERMs land apart,
    or on one task only); the save is collective, so they agree by an allgather
    at every `every`-th batch (`batch`) or wherever all call it with None.
    """
    if jax.process_count() == 1:
      return self.requested
    if batch is not None and batch % every:
      return None
    from jax.experimental import multihost_utils  # (Multi-process runs only.)
    mine = signal.Signals[self.requested].value if self.requested else 0
    agreed = int(np.max(multihost_utils.process_allgather(np.int32(mine))))
    self.requested = signal.Signals(agreed).name if agreed else None
    return self.requested

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


# Settings that change how fast a run goes, never its numbers (tests/test_device_windows.py).
RESULT_NEUTRAL = ("device_windows", "workers")


def same_run(saved, current):
  """Whether a checkpoint's fingerprint is this run's: equal, or differing only in settings
  that did not exist when it was saved and that take their default now (a run saved before
  data.fold or model.lora_rank existed resumes; one that set another value is refused)."""
  if saved == current:
    return True
  defaults = {f"config.{k}": v for k, v in _flat(json.loads(
      config_defaults.get_config().to_json_best_effort())).items()}
  a, b = _flat(saved or {}), _flat(current)
  for k in set(a) | set(b):
    if a.get(k, None) == b.get(k, None):
      continue
    new_default = k not in a and (b[k] == defaults.get(k) if k in defaults else
                                  k.startswith("config.model.") and b[k] in (0, "", False))
    if not new_default:
      return False
  return True


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def run_fingerprint(config, ds, data_dir):
  """What must not change between a run and its resumption: the config (but the
  number of epochs) and the data pipeline (shards, split sizes)."""
  c = json.loads(config.to_json_best_effort())
  c["train"].pop("epochs", None)  # Training longer is a legitimate resume.
  for key in RESULT_NEUTRAL:  # How the batches get to the step, not what they hold.
    c["data"].pop(key, None)
  # (Bar shards and samples.parquet alike.)
  shards = sorted((f, os.path.getsize(os.path.join(data_dir, f))) for f in os.listdir(data_dir)
                  if f.endswith(shards_lib.SHARD_SUFFIX))
  fingerprint = {"config": c, "shards": shards,
                 "splits": {n: len(s) for n, s in ds.splits.items()},
                 "processes": jax.process_count()}
  return json.loads(json.dumps(fingerprint))  # As it reads back from the checkpoint.


def fingerprint_diff(saved, current, limit=5):
  """The keys where two fingerprints differ, as 'key: saved -> current' strings."""
  a, b = _flat(saved or {}), _flat(current)
  name = lambda k: k[len("config."):] if k.startswith("config.") else k
  diffs = [f"{name(k)}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
           for k in sorted(set(a) | set(b)) if a.get(k, None) != b.get(k, None)]
  if len(diffs) > limit:
    diffs = diffs[:limit] + [f"... {len(diffs) - limit} more"]
  return diffs


def fresh_progress():
  """Where a new run starts: epoch 0, batch 0, no best score yet."""
  return {"epoch": 0, "batch": 0, "best_score": -np.inf, "bad_epochs": 0,
          "collapsed_epochs": 0, "partial": None}


def resume(store, state, fingerprint, workdir, force=False, log=print):
  """The latest checkpoint's state and progress, or `state` and a fresh start.

  Refuses checkpoints of another config or data unless `force`; trims the metrics
  of epochs logged after the latest checkpoint (a kill between log and save).

  Returns:
    (state, progress, history): history is metrics.jsonl's records up to `progress`.
  """
  progress = fresh_progress()
  # A corrupt (or half-committed) step is moved aside: resume from the newest intact one.
  set_aside = store.set_aside_corrupt()
  for step, why, where in set_aside:
    log(f"WARNING: {why}; moved it to {where}")
  if set_aside and store.latest_step() is None:
    log("WARNING: no intact checkpoint is left: training starts afresh")
  latest = store.latest_step()
  if latest is not None:
    meta = store.restore_meta(latest)
    if not same_run(meta.get("fingerprint"), fingerprint):
      diff = "; ".join(fingerprint_diff(meta.get("fingerprint"), fingerprint))
      if not force:
        raise ValueError(f"workdir {workdir} holds checkpoints of a different config or data "
                         f"({diff}); use another --workdir, or --force to resume them "
                         "under this config")
      log(f"WARNING: --force: resuming checkpoints of a different config or data ({diff})")
    try:
      state, meta = store.restore(latest, checkpoints_lib.abstract_like(state))
    except checkpoints_lib.CorruptCheckpoint:
      raise
    except Exception as e:  # Orbax reports a shape/structure mismatch in many ways.
      asked = checkpoints_lib.model_description(
          fingerprint["config"].get("model"), param_count.count_parameters(state.params))
      raise ValueError(f"workdir {workdir}: its latest checkpoint (step {latest}) does not "
                       f"fit this model: it was trained as {checkpoints_lib.trained_model(meta)}"
                       f", this config builds {asked}; use another --workdir, or the run's "
                       "own model settings") from e
    progress = meta["progress"]
    log(f"Resuming at epoch {progress['epoch'] + 1}, batch {progress['batch']} "
        f"(step {int(state.step)})" + (", the newest intact checkpoint" if set_aside else ""))
  history = read_history(workdir)
  if len(history) > progress["epoch"]:  # Epochs logged, then killed before their save.
    history = history[:progress["epoch"]]
    if jax.process_index() == 0:
      io_utils.atomic_write_text(os.path.join(workdir, "metrics.jsonl"),
                                 "".join(json.dumps(r) + "\n" for r in history))
  return state, progress, history


def stop_reason(progress, config, last_record):
  """Why the run stops after the epoch of `last_record` (None: it goes on).

  The loop asks after each epoch's save; a re-run asks it of the saved progress, so a
  run that had stopped early is evaluated, not trained one epoch more."""
  if progress["batch"]:  # Preempted mid-epoch: not stopped.
    return None
  if progress["collapsed_epochs"] >= config.eval.collapse_patience:
    why = last_record.get("val_collapse_reason") or "collapsed"
    return (f"collapsed on validation for {progress['collapsed_epochs']} epochs in a row "
            f"(last: {why})")
  if progress["bad_epochs"] >= config.train.patience:
    return f"early stopping: no better validation F1 for {progress['bad_epochs']} epochs"
  return None


def init_from_run(state, tx, run_dir, log=print):
  """Starts from the parameters of another run's best checkpoint (fine-tuning / PEFT).

  The architecture must match; the optimizer state starts fresh. LoRA adapters the
  checkpoint lacks (a plain model's run into model.lora_rank > 0) keep their initial
  values (B = 0: the adapted model starts as the checkpoint's model).
  """
  store = checkpoints_lib.CheckpointStore(os.path.join(run_dir, "checkpoints"))
  step = store.best_step()
  if step is None:
    raise ValueError(f"config.train.init_from={run_dir!r} holds no checkpoint")
  source = {"params": state.params}
  if jax.tree.leaves(state.batch_stats):
    source["batch_stats"] = state.batch_stats
  cause = None
  try:
    try:
      restored = store.restore_partial(step, checkpoints_lib.abstract_like(source))
      # A name absent from the checkpoint comes back as its placeholder, not an error;
      # absent adapters start from `state`'s.
      restored = jax.tree_util.tree_map_with_path(
          lambda path, got, init: init if _absent(got) and lora.is_adapter(path) else got,
          restored, source)
      fits = not any(_absent(leaf) for leaf in jax.tree.leaves(restored))
    except checkpoints_lib.CorruptCheckpoint:
      raise
    except Exception as e:  # Orbax reports a shape/structure mismatch in many ways.
      fits, cause = False, e
    if not fits:
      raise ValueError(f"config.train.init_from={run_dir!r}: its checkpoint (step {step}) "
                       f"does not fit this model: it was trained as "
                       f"{checkpoints_lib.trained_model(store.restore_meta(step))}, this model "
                       f"has {param_count.count_parameters(state.params):,} parameters") from cause
    # Restoring by name would drop trained adapters silently: the model would change.
    saved_rank = _saved_model(store.restore_meta(step)).get("lora_rank", 0)
    if saved_rank and not lora.has_adapters(state.params):
      raise ValueError(f"config.train.init_from={run_dir!r}: its checkpoint (step {step}) "
                       f"holds LoRA adapters (model.lora_rank={saved_rank}) that this model "
                       f"lacks: set config.model.lora_rank={saved_rank}, or merge them "
                       "(models/lora.merge)")
  finally:
    store.close()
  log(f"Initialised from {run_dir} (step {step})")
  return state.replace(params=restored["params"],
                       batch_stats=restored.get("batch_stats", state.batch_stats),
                       opt_state=tx.init(restored["params"]))


def _absent(leaf):
  """A restore placeholder: the checkpoint has no entry of that name."""
  return isinstance(leaf, jax.ShapeDtypeStruct)


def _saved_model(meta):
  """The model section of a checkpoint's config ({} when unknown)."""
  return ((meta.get("fingerprint") or {}).get("config") or {}).get("model") or {}


def read_history(workdir):
  """The per-epoch records of workdir/metrics.jsonl ([] when there are none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          records.append(json.loads(line))
        except ValueError as e:  # The file and line, not a traceback.
          raise ValueError(f"{path}: line {n} is not valid JSON ({e}); fix or remove that "
                           "line (the checkpoints hold the run's state)") from None
        if not isinstance(records[-1], dict):
          raise ValueError(f"{path}: line {n} is not an epoch record (a JSON object)")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  except (IsADirectoryError, PermissionError) as e:
    raise ValueError(f"{path}: cannot read ({e.strerror})") from None
  return records
