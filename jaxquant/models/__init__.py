"""Model registry: `config.model.name` → a Flax module.

Every model maps `x: [B, T, F]` (float) with `train: bool` to a dict:
  logits [B, num_classes] float32, ret [B] float32 (forward-return head),
  aux_loss scalar (0 unless the model has one, e.g. MoE load balancing),
  and optionally stats: a dict of arrays to log (e.g. expert load).
Dropout draws from the "dropout" RNG stream.
"""

import jax.numpy as jnp

from jaxquant.models import moe
from jaxquant.models import resnet
from jaxquant.models import rnn
from jaxquant.models import settings
from jaxquant.models import transformer

# name → (module class, fixed keyword arguments, the Python module whose SETTINGS (and
# optional CROSS_RULES) declare its config.model settings). A new model: its module
# here + one config.
_REGISTRY = {
    "gru": (rnn.RNNClassifier, {"cell": "gru"}, rnn),
    "lstm": (rnn.RNNClassifier, {"cell": "lstm"}, rnn),
    "resnet": (resnet.ResNet, {}, resnet),
    "transformer": (transformer.Transformer, {}, transformer),
    "moe": (moe.MoETransformer, {}, moe),
}


def names():
  return sorted(_REGISTRY)


def adapted_names():
  """The models that take LoRA adapters (config.model.lora_rank > 0)."""
  return sorted(n for n, (_, _, owner) in _REGISTRY.items() if "lora_rank" in owner.SETTINGS)


def check_model_config(model_config):
  """Checks every declared setting of the model `model_config.name` names (config values,
  else the module's defaults), then the rules between them.

  Raises:
    settings.SettingError: `config.model.<key>=<value> is invalid: <why>` (one line).
  """
  if model_config.name not in _REGISTRY:
    raise settings.invalid("name", model_config.name, f"known models: {names()}")
  module_cls, fixed, owner = _REGISTRY[model_config.name]
  rank = model_config.get("lora_rank", 0)
  if rank and "lora_rank" not in owner.SETTINGS:
    raise settings.invalid("lora_rank", rank, f"model {model_config.name!r} has no LoRA "
                           f"adapters (models with them: {adapted_names()}); use 0")
  vals = settings.values(model_config, module_cls, fixed)
  settings.check(owner.SETTINGS, vals)
  for rule in getattr(owner, "CROSS_RULES", ()):
    rule(vals)


def build_model(model_config, num_classes, dtype=jnp.float32):
  """Builds the Flax module named by `model_config.name`.

  Args:
    model_config: ConfigDict with `name` and the module's attributes.
    num_classes: size of the classification head.
    dtype: compute dtype (parameters stay float32).

  Returns:
    An unbound `flax.linen.Module`.
  """
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  if name not in _REGISTRY:
    raise ValueError(f"config.model.name={name!r} is not a known model; "
                     f"choose one of {names()}")
  module_cls, fixed, _ = _REGISTRY[name]
  fields = set(module_cls.__dataclass_fields__)
  if "lora_rank" not in fields and not kwargs.get("lora_rank", 1):
    del kwargs["lora_rank"]  # 0 = no adapters: what a model without any is anyway.
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"config.model.{unknown[0]} is not a setting of model {name!r}; "
                     f"its settings are {sorted(fields - {'parent', 'name'})}")
  return module_cls(**fixed, **kwargs, num_classes=num_classes, dtype=dtype)
