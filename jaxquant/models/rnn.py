"""Stacked GRU / LSTM classifiers over `[B, T, F]` windows."""

import flax.linen as nn
import jax.numpy as jnp

from jaxquant.models import dropout as dropout_lib
from jaxquant.models import heads as heads_lib
from jaxquant.models import lstm as lstm_lib
from jaxquant.models import settings

# Largest batch for which lstm_impl="auto" picks the hand-written LSTM (chosen by
# hand-timing both on a 2-core CPU; no benchmark keeps the figures): a small batch
# is latency-bound (fewer kernels per step win); at a large one the scan's fused
# per-step weight gradients win.
_FUSED_LSTM_MAX_BATCH = 32
LSTM_IMPLS = ("auto", "fused", "scan")

# config.model's settings and their ranges (config_check reads them via models.check_model_config).
SETTINGS = {
    "cell": settings.one_of(("gru", "lstm")),
    "hidden": settings.at_least(1),
    "num_layers": settings.at_least(1),
    "dropout": settings.fraction(),
    "lstm_impl": settings.one_of(LSTM_IMPLS),
}


class RNNClassifier(nn.Module):
  """`num_layers` stacked recurrent layers, dropout between them, heads on the last step.

  Attributes:
    cell: "gru" or "lstm".
    hidden: hidden size of every layer.
    num_layers: number of stacked layers.
    dropout: dropout rate between layers and before the heads.
    num_classes: classes of the classification head.
    lstm_impl: "fused" (jaxquant.models.lstm: hand-written backward), "scan"
      (flax's OptimizedLSTMCell under nn.RNN, autodiff) or "auto" (fused for
      batches up to 32). Same parameters and function either way.
  """
  cell: str = "gru"
  hidden: int = 128
  num_layers: int = 2
  dropout: float = 0.1
  num_classes: int = 2
  lstm_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.cell not in ("gru", "lstm"):
      raise ValueError(f"model.cell={self.cell!r}: choose 'gru' or 'lstm'")
    if self.lstm_impl not in LSTM_IMPLS:
      raise ValueError(f"model.lstm_impl={self.lstm_impl!r}: use one of {LSTM_IMPLS}")
    fused = self.cell == "lstm" and (
        self.lstm_impl == "fused"
        or (self.lstm_impl == "auto" and x.shape[0] <= _FUSED_LSTM_MAX_BATCH))
    h = x.astype(self.dtype)
    for i in range(self.num_layers):
      if i > 0:
        h = dropout_lib.Dropout(self.dropout, deterministic=not train)(h)
      last = i == self.num_layers - 1
      if fused:
        # Named like the OptimizedLSTMCell it stands for: same parameter tree.
        h = lstm_lib.LSTM(self.hidden, last_only=last, dtype=self.dtype,
                 name=f"OptimizedLSTMCell_{i}")(h)
      else:
        cell = nn.GRUCell if self.cell == "gru" else nn.OptimizedLSTMCell
        h = nn.RNN(cell(features=self.hidden, dtype=self.dtype, param_dtype=jnp.float32),
                   name=f"rnn_{i}")(h)
        h = h[:, -1] if last else h
    out = heads_lib.ClassAndReturnHead(self.num_classes, self.dropout, self.dtype, name="head")(
        h, train=train)
    out["aux_loss"] = jnp.zeros((), jnp.float32)
    return out
