"""Defaults every config starts from; variants import this and change what differs.

Run: python -m jaxquant.main --config=configs/gru.py[:quick] [--config.train.epochs=3]
"""

import ml_collections


def get_config(arg=None):
  """Returns the default ConfigDict (`arg` is accepted for symmetry with variants)."""
  del arg
  c = ml_collections.ConfigDict()
  c.name = "default"  # Run name: used for the default workdir runs/<name>-<timestamp>.

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" (generated into data.dir if missing) or "shards".
  c.data.dir = ""  # Shard directory; "" = data/<synthetic parameters> for synthetic data.
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.instruments = 4  # Instruments of the synthetic market.
  c.data.synth.days = 30  # Trading days (360 one-minute bars each).
  c.data.synth.signal = 1.0  # Planted signal strength; 0 = pure random walk.
  c.data.synth.seed = 0  # Seed of the synthetic market (independent of train.seed).
  c.data.window = 500  # T: bars per input window.
  c.data.horizon = 15  # h: bars of the forward return that defines the label (≈6.6 % positive on the synthetic market).
  c.data.label_threshold = 0.006  # Forward return > threshold → class 1.
  c.data.val_fraction = 0.15  # Chronological share of bars for validation...
  c.data.test_fraction = 0.15  # ...and for test (the rest, first in time, trains).
  c.data.embargo = 0  # Extra bars dropped between splits beyond the T + h gap.

  c.model = ml_collections.ConfigDict()
  c.model.name = "gru"  # See jaxquant.models.names().
  c.model.hidden = 128
  c.model.num_layers = 2
  c.model.dropout = 0.1

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "focal"  # Per-example classification loss.
  c.loss.gamma = 2.0  # Focal exponent.
  c.loss.alpha = "inverse_frequency"  # Per-class weights: "inverse_frequency" or "none".

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

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1024  # Any size gives the same numbers (padded, masked).
  c.eval.min_positive_rate = 0.001  # Below this predicted-positive share a model counts as collapsed.
  c.eval.keep_best = 2  # Best-F1 checkpoints kept (the latest is always kept too).
  return c
