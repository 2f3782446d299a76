"""GRU, composite a·softF1 + (1 − a)·weighted CE, a = 0.3 → 0.5 → 0.7 at 30 % / 80 % of training.

python -m jaxquant.main --config=configs/recipes/composite_progressive.py          # full scale
python -m jaxquant.main --config=configs/recipes/composite_progressive.py:quick    # minutes on a 2-core CPU
"""

from configs import recipes


def get_config(arg=None):
  c = recipes.gru_recipe(arg, __file__)
  c.loss.name = "composite"
  c.loss.alpha = "inverse_frequency"  # Weights of the CE part.
  c.loss.composite_schedule = "progressive"
  return c
