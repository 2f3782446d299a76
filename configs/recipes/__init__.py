"""Loss recipes: the original system's imbalance-handling variants on the GRU config.

Each module's `get_config(arg)` starts from `configs.gru.get_config(arg)` (so
`configs/recipes/<recipe>.py:quick` works) and changes only the loss settings.
"""

import os

from configs import common
from configs import gru


def gru_recipe(arg, file):
  """configs/gru.py's config for variant `arg`, named gru-<recipe file>[-quick]."""
  common.parse_arg(arg, file, common.QUICK)  # Names the recipe file in the error.
  c = gru.get_config(arg)
  c.name = c.name.replace("gru", "gru-" + os.path.splitext(os.path.basename(file))[0])
  return c
