"""GRU, inverse-frequency weighted CE with label smoothing 0.2 and mixup (alpha 0.2, half the batches).

python -m jaxquant.main --config=configs/recipes/smooth_mixup.py          # full scale
python -m jaxquant.main --config=configs/recipes/smooth_mixup.py:quick    # minutes on a 2-core CPU
"""

from configs import recipes


def get_config(arg=None):
  c = recipes.gru_recipe(arg, __file__)
  c.loss.name = "ce"
  c.loss.alpha = "inverse_frequency"
  c.loss.label_smoothing = 0.2
  c.train.mixup_alpha = 0.2
  c.train.mixup_prob = 0.5
  return c
