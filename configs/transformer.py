"""Transformer with local attention on the original system's settings.

Full scale: d_model 512, 8 heads, 8 layers, MLP 2240, attention radius 20, head dropout
0.1, learned positions (max_len 512 ≥ T=500) → 27.06 M parameters with the 6
bar features (`python benchmarks/param_counts.py`; original system: 26.9 M).
Batch 32, T=500, AdamW 2e-4, focal loss.

python -m jaxquant.main --config=configs/transformer.py          # full scale
python -m jaxquant.main --config=configs/transformer.py:quick    # minutes on a 2-core CPU

PEFT ("enhanced Transformer"): fine-tune only the output heads of a trained run:
python -m jaxquant.main --config=configs/transformer.py:peft --config.train.init_from=RUN_DIR
(`:quick,peft` for the quick architecture.)
"""

import ml_collections

from configs import common
from configs import default


def model_config(quick: bool):
  """The c.model block shared with configs/moe.py (keys = Transformer attributes)."""
  m = ml_collections.ConfigDict()
  m.name = "transformer"
  m.d_model = 512
  m.num_heads = 8
  m.num_layers = 8
  m.mlp_dim = 2240
  m.attention_radius = 20  # Attend to |i - j| <= 20 bars.
  m.causal = False
  m.attention = "local"  # "dense" = full T×T attention, for comparison only.
  m.positions = "learned"  # Or "sinusoidal".
  m.max_len = 512  # Longest window the learned positions cover; raise for longer T.
  m.dropout = 0.1
  m.head_dropout = 0.1  # Whole attention heads dropped with this probability.
  m.pooling = "mean"  # Or "last".
  m.lora_rank = 0  # LoRA adapters of this rank on the attention/MLP kernels (train.trainable="lora"); 0 = none.
  if quick:  # One layer keeps a 2-core CPU run at minutes.
    m.d_model = 32
    m.num_heads = 2
    m.num_layers = 1
    m.mlp_dim = 64
    m.max_len = 64
  return m


def get_config(arg=None):
  variants = common.parse_arg(arg, __file__, common.QUICK, "peft")
  c = default.get_config()
  c.name = "transformer"
  # Replace the default (GRU) model settings: keys must be Transformer attributes.
  c.model = model_config(quick=common.QUICK in variants)
  if common.QUICK in variants:
    common.apply_quick(c)
  if "peft" in variants:
    c.name += "-peft"
    c.train.trainable = "heads"  # Everything but the heads frozen: no update, no Adam state.
  return c
