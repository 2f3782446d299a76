"""Defaults every config starts from; the files in configs/ import this and change what differs.

It lives in the library because the library needs it too: jaxquant.evaluate merges a
saved run's config.json onto these (a run saved before a setting existed gets that
setting's default). configs/default.py exposes the same get_config().

Run: python -m jaxquant.main --config=configs/gru.py[:quick] [--config.train.epochs=3]
"""

import ml_collections


def get_config(arg=None):
  """Returns the default ConfigDict (`arg` is accepted for symmetry with variants)."""
  del arg
  c = ml_collections.ConfigDict()
  c.name = "default"  # Run name: used for the default workdir runs/<name>-<timestamp>.

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" (generated into data.dir if missing), "shards" or "samples" (an ingested sample folder).
  c.data.dir = ""  # Shard directory; "" = data/<synthetic parameters> for synthetic data.
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.instruments = 4  # Instruments of the synthetic market.
  c.data.synth.days = 30  # Trading days (360 one-minute bars each).
  c.data.synth.signal = 1.0  # Planted signal strength; 0 = pure random walk.
  c.data.synth.seed = 0  # Seed of the synthetic market (independent of train.seed).
  c.data.features = "default"  # Comma-separated features/presets ("original", "default,realized_vol:60"): data/features.py.
  c.data.window = 500  # T: bars per input window.
  c.data.horizon = 15  # h: bars of the forward return that defines the label.
  c.data.label_kind = "binary"  # "binary", "three_class" (down/flat/up at ±threshold) or "triple_barrier".
  c.data.label_threshold = 0.006  # Forward return > threshold → class 1.
  c.data.take_profit = 0.006  # triple_barrier: upper barrier, in barrier_units above the close...
  c.data.stop_loss = 0.003  # ...and lower barrier below it; first touch within `horizon` wins.
  c.data.barrier_units = "return"  # "return", "price" or "ticks" (futures trade in ticks).
  c.data.tick_size = 1.0  # barrier_units="ticks": price of one tick where <data.dir>/instruments.csv gives none.
  c.data.barrier_binary = True  # True: take-profit first → 1, else 0; False: stop/time/take = 0/1/2.
  c.data.val_fraction = 0.15  # Chronological share of bars for validation...
  c.data.test_fraction = 0.15  # ...and for test (the rest, first in time, trains).
  c.data.embargo = 0  # Extra bars dropped between splits beyond the T + h gap.
  c.data.fold = ""  # One walk-forward / CPCV fold (JSON groups/test/train; jaxquant.walkforward sets it); "" = the val/test fractions.
  c.data.normalization = "pooled"  # "pooled" (one set of feature statistics) or "per_instrument" (each on its own training bars).
  c.data.roll = ml_collections.ConfigDict()  # Contract months of one product (ingest's manifest "products") → one series:
  c.data.roll.by = "open_interest"  # Daily roll rule compares "open_interest" (the day's last) or "volume" (the day's sum).
  c.data.roll.adjust = "ratio"  # Back-adjustment: "ratio", "difference" (keeps the tick grid) or "none" (windows crossing a roll dropped).
  c.data.workers = 0  # grain worker processes gathering training batches (0 = 2 threads).
  c.data.device_windows = "auto"  # Feature matrix on the device(s), windows gathered in the step from indices: "auto" (when it fits and no jitter), "on" (required) or "off" (host gather).
  # Batch composition of the TRAINING split (val/test always keep the true ratio):
  c.data.sampler = "shuffle"  # "shuffle", "stratified", "undersample" or "oversample".
  c.data.positives_per_batch = 2  # sampler="stratified": exact positives per batch (2 of 16 in the original).
  c.data.undersample_ratio = 7.0  # sampler="undersample": negatives kept per positive.
  c.data.oversample_fraction = 0.15  # sampler="oversample": positives' share after repeating them.
  c.data.oversample_jitter = 0.0  # Std of noise added to repeated positives (normalised units).

  c.model = ml_collections.ConfigDict()
  c.model.name = "gru"  # See jaxquant.models.names().
  c.model.hidden = 128
  c.model.num_layers = 2
  c.model.dropout = 0.1

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "focal"  # "focal", "ce", "soft_f1", "dice" or "composite".
  c.loss.gamma = 2.0  # Focal exponent.
  c.loss.alpha = "inverse_frequency"  # Class weights: "inverse_frequency", "profit_loss", "none" or "w0,w1" (e.g. "1,14.6").
  c.loss.label_smoothing = 0.0  # eps: targets (1 - eps)·one_hot + eps/K.
  c.loss.composite_schedule = "progressive"  # loss.name="composite": "fixed", "progressive" (0.3/0.5/0.7), "linear".
  c.loss.composite_alpha = 0.5  # Fixed alpha of alpha·softF1 + (1 - alpha)·weightedCE.
  c.loss.composite_start = 0.3  # Linear schedule: alpha at the start...
  c.loss.composite_end = 1.0  # ...and at the end of training.
  c.loss.return_weight = 0.0  # λ of λ·MSE on the (standardised) forward return; 0 = class loss only.

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 50
  c.train.batch_size = 32
  c.train.seed = 0  # Parameter init, dropout and shuffling.
  c.train.lr = 2e-4  # Peak AdamW learning rate.
  c.train.end_lr = 1e-6  # Cosine decay floor.
  c.train.warmup_epochs = 1.0  # Linear warmup length, in epochs (fractions allowed).
  c.train.weight_decay = 1e-3
  c.train.clip_norm = 1.0  # Global gradient-norm clip.
  c.train.patience = 10  # Early stopping: epochs without a better val F1.
  c.train.dtype = "float32"  # Compute dtype ("bfloat16" on accelerators); params stay float32.
  c.train.mixup_alpha = 0.2  # Beta(alpha, alpha) of mixup's mixing weight.
  c.train.mixup_prob = 0.0  # Share of batches mixed up (0 = off).
  c.train.max_bad_steps = 20  # Consecutive non-finite steps (skipped) before the run stops.
  c.train.init_from = ""  # Run directory whose best checkpoint initialises the parameters.
  c.train.trainable = "all"  # "all"; "heads" freezes all but the output heads (PEFT); "lora" trains only LoRA adapters (model.lora_rank) and heads.

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1024  # Any size gives the same numbers (padded, masked).
  c.eval.min_positive_rate = 0.001  # Below this predicted-positive share a model counts as collapsed.
  c.eval.max_positive_rate = 0.9  # ...and above this one (signals on ~every window ≈ "always up").
  c.eval.keep_best = 2  # Best-F1 checkpoints kept (the latest is always kept too).
  c.eval.collapse_patience = 3  # Consecutive collapsed epochs before the run stops.
  c.eval.tensorboard = True  # Scalars per step and per epoch in <workdir>/tb/.
  c.eval.bootstrap = 500  # Block-bootstrap resamples for the 95 % intervals (0 = off).
  c.eval.data_dir = ""  # Evaluate on other shards (every window = test), same normalisation.
  c.eval.calibration = "none"  # "temperature": calibration figures and ECE after a T fitted on val.
  c.eval.threshold_objective = "f1"  # Threshold picked on val: "f1" (the checkpoint's), "precision" or "net_return" (after costs).
  c.eval.min_signals = 30  # "precision" / "net_return": thresholds with fewer val signals are not considered.
  c.eval.trials = 1  # Runs the chosen one was picked from (the Deflated Sharpe Ratio's N; jaxquant.compare sets it).

  c.backtest = ml_collections.ConfigDict()  # Signals → trades after costs (jaxquant/backtest.py).
  c.backtest.fill = "next_open"  # A signal at bar t's close fills at bar t+1's open ("next_open") or at t's close ("close").
  c.backtest.tick_size = 1.0  # Price of one tick (for slippage) where <data dir>/instruments.csv gives none.
  c.backtest.multiplier = 1.0  # Currency per price unit per contract where instruments.csv gives none.
  c.backtest.commission = 0.0001  # Per side, where instruments.csv gives none: currency per contract, or a fraction of turnover.
  c.backtest.commission_kind = "per_turnover"  # "per_contract" or "per_turnover" (× entry or exit price × multiplier).
  c.backtest.slippage_ticks = 1.0  # Ticks lost per side (× tick_size × multiplier).

  c.walkforward = ml_collections.ConfigDict()  # python -m jaxquant.walkforward (docs/walkforward.md):
  c.walkforward.warm_start = "none"  # Each fold from the previous fold's best: "none", "full", "heads" (PEFT) or "lora" (adapters).
  c.walkforward.train_groups = 1  # --scheme=rolling: test periods' worth of bars that train before each test period.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Devices on the data axis (-1 = all remaining).
  c.mesh.expert = 1  # Devices on the MoE expert axis.
  c.mesh.member = 1  # Devices a population's members are split over (-1 = all remaining; must divide the member count).
  return c
