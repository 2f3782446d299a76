"""Output heads shared by every model: class logits and a forward-return regression."""

import flax.linen as nn
import jax.numpy as jnp

from jaxquant.models import dropout as dropout_lib


class ClassAndReturnHead(nn.Module):
  """Maps a pooled representation to `{"logits": [B, K], "ret": [B]}`.

  Both heads are always built so a checkpoint can be fine-tuned with or without
  the regression loss; the loss config decides whether `ret` is trained.
  """
  num_classes: int = 2
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, *, train: bool):
    h = dropout_lib.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="cls")(h)
    ret = nn.Dense(1, dtype=self.dtype, name="ret")(h)[..., 0]
    # Losses are computed in float32 whatever the compute dtype.
    return {"logits": logits.astype(jnp.float32), "ret": ret.astype(jnp.float32)}
