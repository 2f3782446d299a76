"""GRU, focal loss with gamma 2 and alpha = [1, profit/loss ratio] (the original's focal setup).

python -m jaxquant.main --config=configs/recipes/focal_pl.py          # full scale
python -m jaxquant.main --config=configs/recipes/focal_pl.py:quick    # minutes on a 2-core CPU
"""

from configs import recipes


def get_config(arg=None):
  c = recipes.gru_recipe(arg, __file__)
  c.loss.name = "focal"
  c.loss.gamma = 2.0
  c.loss.alpha = "profit_loss"  # [1, mean win of positives / mean loss of negatives].
  return c
