"""Mixture-of-experts Transformer (every feed-forward layer → 8 experts, top-2).

Full scale: d_model 256, 8 heads, 4 layers, expert MLP 1760, 8 experts top-2,
capacity factor 1.25, attention radius 20, head dropout 0.1, load-balancing weight 0.01,
z-loss 1e-3 → 30.10 M parameters in total, 8.42 M active per token with the 6
bar features (`python benchmarks/param_counts.py`; original system: ~30 M / ~7.5 M,
i.e. total·k/E; counting the shared attention/embedding weights as always active
gives our higher active count).
Batch 32, T=500, AdamW 2e-4, focal loss.

python -m jaxquant.main --config=configs/moe.py          # full scale
python -m jaxquant.main --config=configs/moe.py:quick    # minutes on a 2-core CPU
"""

from configs import common
from configs import default
from configs import transformer


def get_config(arg=None):
  quick = common.QUICK in common.parse_arg(arg, __file__, common.QUICK)
  c = default.get_config()
  c.name = "moe"
  # Keys must be MoETransformer attributes (the Transformer's plus the MoE ones).
  c.model = transformer.model_config(quick)
  c.model.name = "moe"
  del c.model["mlp_dim"]  # Unused: every feed-forward layer is an MoE (expert_dim).
  c.model.d_model = 256
  c.model.num_heads = 8
  c.model.num_layers = 4
  c.model.num_experts = 8
  c.model.top_k = 2
  c.model.capacity_factor = 1.25  # Slots per expert = ceil(1.25 · tokens · k / E).
  c.model.expert_dim = 1760
  c.model.aux_loss_weight = 0.01  # Load-balancing loss, summed over layers.
  c.model.z_loss_weight = 1e-3  # Router z-loss, summed over layers.
  if quick:
    common.apply_quick(c)
    c.model.d_model = 32
    c.model.num_heads = 2
    c.model.num_layers = 1
    c.model.expert_dim = 32  # Still 8 experts, top-2.
  return c
