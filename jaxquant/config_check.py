"""Checks a config before any work starts; every message names the offending key."""

import difflib
import math
import sys

import ml_collections
import numpy as np

from jaxquant import config_defaults
from jaxquant import losses
from jaxquant import models
from jaxquant import trades
from jaxquant import verdict
from jaxquant.data import dataset
from jaxquant.data import features
from jaxquant.data import folds
from jaxquant.data import instruments
from jaxquant.data import labels
from jaxquant.data import rolls
from jaxquant.data import sampling


class ConfigError(ValueError):
  pass


def set_value(config, key, value):
  """Sets config.<key> (dotted) from a command-line string, cast to the field's type.

  Raises:
    ConfigError: the key does not exist or the value does not fit its type.
  """
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise ConfigError(f"unknown config key {key!r}")
    node = node[p]
  if leaf not in node:
    raise ConfigError(f"unknown config key {key!r}")
  old = node[leaf]
  try:
    node[leaf] = value.lower() in ("1", "true") if isinstance(old, bool) else type(old)(value)
  except ValueError:
    raise ConfigError(f"config.{key}={value!r} is invalid: expected a "
                      f"{type(old).__name__}") from None


def loaded(config):
  """The validated config of --config=FILE (config_flags gives a placeholder object
  for a missing or unloadable file)."""
  if not isinstance(config, ml_collections.ConfigDict):
    given = [a for a in sys.argv if a.startswith("--config=")]
    raise ConfigError(f"could not load {given[0] if given else '--config'} (expected a "
                      "Python file with get_config(), e.g. --config=configs/gru.py:quick)")
  validate(config)
  return config


def with_overrides(config, overrides):
  """`config` with '--config.key=value' (or 'key=value') strings applied, validated."""
  for arg in overrides:
    key, sep, value = arg.removeprefix("--config.").partition("=")
    if not sep:
      raise ConfigError(f"{arg}: expected --config.key=value")
    set_value(config, key, value)
  validate(config)
  return config


def _require(ok, key, value, why):
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is invalid: {why}")


def _paths(node, prefix=""):
  """Dotted paths of every key under `node`, sections included."""
  for key in node.keys():
    yield prefix + key
    if isinstance(node[key], ml_collections.ConfigDict):
      yield from _paths(node[key], f"{prefix}{key}.")


def _check_known_keys(config):
  """A key the defaults lack is a typo in a config file (command-line overrides are caught
  by set_value); the model section's keys are the model's fields, checked by build_model."""
  defaults = config_defaults.get_config()
  known = [p for p in _paths(defaults) if not p.startswith("model.")]
  for path in _paths(config):
    if path in known or path.startswith("model."):
      continue
    close = difflib.get_close_matches(path, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "see jaxquant/config_defaults.py"
    raise ConfigError(f"config.{path} is not a setting ({hint}): fix or remove it in the "
                      "config file")


def validate(config):
  """Raises ConfigError for a missing section, an unknown key or an impossible value."""
  for section in ("data", "model", "loss", "train", "eval"):
    if section not in config:
      raise ConfigError(f"config has no section {section!r}")
  _check_known_keys(config)
  d, t, e = config.data, config.train, config.eval
  _require(d.source in ("synthetic", "shards", "samples"), "data.source", d.source,
           "use 'synthetic', 'shards' or 'samples'")
  _require(d.source == "synthetic" or d.dir, "data.dir", d.dir,
           f"set the ingested directory for data.source={d.source!r}")
  if d.source == "synthetic":
    _require(d.synth.instruments >= 1, "data.synth.instruments", d.synth.instruments, "must be >= 1")
    _require(d.synth.days >= 1, "data.synth.days", d.synth.days, "must be >= 1")
    _require(d.synth.signal >= 0, "data.synth.signal", d.synth.signal, "must be >= 0")
  _require(d.window >= 1, "data.window", d.window, "must be >= 1")
  try:
    fold = folds.parse_fold(d.get("fold", ""))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(not fold or d.source != "samples", "data.fold", d.fold,
           "cross-validation folds need bars (data.source 'synthetic' or 'shards')")
  try:  # Feature names and parameters (a user function imported), before any data is read.
    features.resolve_features(d.features)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:  # Checks the label keys on a dummy bar, before any data is read.
    labels.make_labels(dataset.label_config(d), np.ones((2, 6)))
  except ValueError as e:
    raise ConfigError(str(e).replace("config.data.kind", "config.data.label_kind")) from None
  _require(d.sampler in sampling.SAMPLERS, "data.sampler", d.sampler,
           f"use one of {sampling.SAMPLERS}")
  _require(d.sampler != "stratified" or 0 < d.positives_per_batch < config.train.batch_size,
           "data.positives_per_batch", d.positives_per_batch,
           "must be in [1, train.batch_size - 1] for the stratified sampler")
  _require(d.workers >= 0, "data.workers", d.workers, "must be >= 0")
  _require(d.device_windows in ("auto", "on", "off"), "data.device_windows", d.device_windows,
           "use 'auto', 'on' or 'off'")
  # Jitter noise is drawn on the host, per copied window: only the host gather has it.
  _require(d.device_windows != "on" or not (d.oversample_jitter > 0 and d.sampler == "oversample"),
           "data.device_windows", d.device_windows, "data.oversample_jitter > 0 adds noise to "
           "windows on the host: use 'auto' or 'off', or data.oversample_jitter=0")
  _require(d.undersample_ratio > 0, "data.undersample_ratio", d.undersample_ratio, "must be > 0")
  _require(0 < d.oversample_fraction < 1, "data.oversample_fraction", d.oversample_fraction,
           "must be in (0, 1)")
  _require(d.oversample_jitter >= 0, "data.oversample_jitter", d.oversample_jitter,
           "must be >= 0")
  _require(d.horizon >= 1, "data.horizon", d.horizon, "must be >= 1")
  _require(d.embargo >= 0, "data.embargo", d.embargo, "must be >= 0")
  _require(d.normalization in instruments.NORMALIZATIONS, "data.normalization",
           d.normalization, f"use one of {instruments.NORMALIZATIONS}")
  _require(d.normalization == "pooled" or d.source != "samples", "data.normalization",
           d.normalization, "samples carry no instrument: use 'pooled' with data.source='samples'")
  _require(d.roll.by in rolls.ROLL_BY, "data.roll.by", d.roll.by, f"use one of {rolls.ROLL_BY}")
  _require(d.roll.adjust in rolls.ROLL_ADJUST, "data.roll.adjust", d.roll.adjust,
           f"use one of {rolls.ROLL_ADJUST}")
  for key in ("val_fraction", "test_fraction"):
    _require(0 < d[key] < 1, f"data.{key}", d[key], "must be in (0, 1)")
  _require(d.val_fraction + d.test_fraction < 1, "data.test_fraction", d.test_fraction,
           "val_fraction + test_fraction must be < 1")
  _require(config.model.name in models.names(), "model.name", config.model.name,
           f"known models: {models.names()}")
  try:  # Each model declares its settings' ranges (models/<model>.py SETTINGS).
    models.check_model_config(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    # Per-class settings (explicit alpha weights) take the label kind's class count.
    losses.validate_loss_config(config.loss, labels.class_count(dataset.label_config(d)))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(t.mixup_alpha > 0, "train.mixup_alpha", t.mixup_alpha, "must be > 0")
  _require(0 <= t.mixup_prob <= 1, "train.mixup_prob", t.mixup_prob, "must be in [0, 1]")
  _require(t.max_bad_steps >= 1, "train.max_bad_steps", t.max_bad_steps, "must be >= 1")
  _require(config.eval.collapse_patience >= 1, "eval.collapse_patience",
           config.eval.collapse_patience, "must be >= 1")
  _require(config.eval.bootstrap >= 0, "eval.bootstrap", config.eval.bootstrap, "must be >= 0")
  _require(t.trainable in ("all", "heads", "lora"), "train.trainable", t.trainable,
           "use 'all', 'heads' or 'lora'")
  _require(t.trainable == "all" or t.init_from, "train.init_from", t.init_from,
           f"train.trainable={t.trainable!r} fine-tunes a trained model: set train.init_from to its run directory")
  _require(t.trainable != "lora" or config.model.get("lora_rank", 0) >= 1, "model.lora_rank",
           config.model.get("lora_rank", 0), "train.trainable='lora' trains LoRA adapters: "
           f"set model.lora_rank >= 1 (models with adapters: {models.adapted_names()})")
  _require(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
  _require(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
  _require(t.lr > 0, "train.lr", t.lr, "must be > 0")
  _require(0 <= t.end_lr <= t.lr, "train.end_lr", t.end_lr, "must be in [0, train.lr]")
  _require(t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, "must be >= 0")
  _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
  _require(t.clip_norm > 0, "train.clip_norm", t.clip_norm, "must be > 0")
  _require(t.patience >= 1, "train.patience", t.patience, "must be >= 1")
  _require(t.dtype in ("float32", "bfloat16"), "train.dtype", t.dtype,
           "use 'float32' or 'bfloat16'")
  _require(e.batch_size >= 1, "eval.batch_size", e.batch_size, "must be >= 1")
  _require(0 <= e.min_positive_rate < 0.5, "eval.min_positive_rate", e.min_positive_rate,
           "must be in [0, 0.5)")
  _require(e.min_positive_rate < e.max_positive_rate <= 1, "eval.max_positive_rate",
           e.max_positive_rate, "must be in (eval.min_positive_rate, 1]; 1 = no ceiling")
  _require(e.keep_best >= 1, "eval.keep_best", e.keep_best, "must be >= 1")
  _require(e.calibration in ("none", "temperature"), "eval.calibration", e.calibration,
           "use 'none' or 'temperature'")
  member = (config.get("mesh") or config_defaults.get_config().mesh).get("member", 1)
  _require(member == int(member) and (member >= 1 or member == -1), "mesh.member", member,
           "must be a device count >= 1, or -1 (all remaining devices)")
  _check_backtest(config)


def _check_backtest(config):
  """eval's threshold objective and trials, and the backtest's costs."""
  e, b = config.eval, config.get("backtest") or config_defaults.get_config().backtest
  _require(e.threshold_objective in verdict.THRESHOLD_OBJECTIVES, "eval.threshold_objective",
           e.threshold_objective, f"use one of {verdict.THRESHOLD_OBJECTIVES}")
  _require(e.threshold_objective != "net_return" or config.data.source != "samples",
           "eval.threshold_objective", e.threshold_objective,
           "data.source='samples' has no bars to backtest: use 'f1' or 'precision'")
  _require(e.min_signals >= 1, "eval.min_signals", e.min_signals, "must be >= 1")
  _require(e.trials >= 1, "eval.trials", e.trials, "must be >= 1")
  _require(b.fill in trades.FILLS, "backtest.fill", b.fill, f"use one of {trades.FILLS}")
  _require(b.commission_kind in trades.COMMISSION_KINDS, "backtest.commission_kind",
           b.commission_kind, f"use one of {trades.COMMISSION_KINDS}")
  for key in ("tick_size", "multiplier"):
    _require(math.isfinite(b[key]) and b[key] > 0, f"backtest.{key}", b[key], "must be > 0")
  for key in ("commission", "slippage_ticks"):
    _require(math.isfinite(b[key]) and b[key] >= 0, f"backtest.{key}", b[key], "must be >= 0")
  _require(b.commission_kind == "per_contract" or b.commission < 1, "backtest.commission",
           b.commission, "a per_turnover commission is a fraction of turnover: must be < 1")
