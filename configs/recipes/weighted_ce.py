"""GRU, cross-entropy with the original's flat 14.6x weight on positives.

python -m jaxquant.main --config=configs/recipes/weighted_ce.py          # full scale
python -m jaxquant.main --config=configs/recipes/weighted_ce.py:quick    # minutes on a 2-core CPU
"""

from configs import recipes


def get_config(arg=None):
  c = recipes.gru_recipe(arg, __file__)
  c.loss.name = "ce"
  # A string, not a tuple: ConfigDict keeps the str type of loss.alpha, and the
  # string form can be overridden from the command line (--config.loss.alpha=1,10).
  c.loss.alpha = "1.0,14.6"
  return c
