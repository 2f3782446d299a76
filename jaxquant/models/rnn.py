"""Stacked GRU / LSTM classifiers over `[B, T, F]` windows."""

import flax.linen as nn
import jax.numpy as jnp

from jaxquant.models.dropout import Dropout
from jaxquant.models.heads import ClassAndReturnHead

_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}


class RNNClassifier(nn.Module):
  """`num_layers` stacked recurrent layers, dropout between them, heads on the last step.

  Attributes:
    cell: "gru" or "lstm".
    hidden: hidden size of every layer.
    num_layers: number of stacked layers.
    dropout: dropout rate between layers and before the heads.
    num_classes: classes of the classification head.
  """
  cell: str = "gru"
  hidden: int = 128
  num_layers: int = 2
  dropout: float = 0.1
  num_classes: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    cell_cls = _CELLS[self.cell]
    h = x.astype(self.dtype)
    for i in range(self.num_layers):
      if i > 0:
        h = Dropout(self.dropout, deterministic=not train)(h)
      h = nn.RNN(cell_cls(features=self.hidden, dtype=self.dtype,
                          param_dtype=jnp.float32), name=f"rnn_{i}")(h)
    out = ClassAndReturnHead(self.num_classes, self.dropout, self.dtype, name="head")(
        h[:, -1], train=train)
    out["aux_loss"] = jnp.zeros((), jnp.float32)
    return out
