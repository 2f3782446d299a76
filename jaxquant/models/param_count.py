"""Parameter counting, the one place that sizes a params pytree."""

import jax
import numpy as np


def leaf_names(path):
  """The key names along a pytree path (dict keys, attribute names)."""
  return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def count_parameters(params, where=None):
  """Number of parameters (arrays or jax.eval_shape structs alike).

  Args:
    params: a params pytree.
    where: None (count every leaf) or a function of a leaf's key names → bool.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return int(sum(int(np.prod(leaf.shape)) for path, leaf in flat
                 if where is None or where(leaf_names(path))))
