"""Declared model settings: each model module's `SETTINGS` maps a field to a rule.

A rule is `(type, test, description)`; `check` applies a table to `config.model`
(fields the config leaves out take the module's default), so a bad value stops
before any data is read, with a message naming the key.
"""

import math


def at_least(low, kind=int):
  return (kind, lambda v: v >= low, f"must be >= {low}")


def above(low, kind=float):
  return (kind, lambda v: v > low, f"must be > {low}")


def fraction():
  """A rate in [0, 1): 1 would zero every activation."""
  return (float, lambda v: 0 <= v < 1, "must be in [0, 1)")


def one_of(choices):
  return (type(choices[0]), lambda v: v in choices, f"use one of {tuple(choices)}")


def boolean():
  return (bool, lambda v: True, "must be true or false")


def optional(rule):
  """None or a value passing `rule` (e.g. MoE's expert_dim: None = mlp_dim)."""
  kind, test, why = rule
  return (kind, lambda v: v is None or test(v), f"{why} (or None)")


def sizes(low=1):
  """A sequence of ints >= low (e.g. the ResNet head's hidden sizes)."""
  return (tuple, lambda v: all(_is(x, int) and x >= low for x in v),
          f"must be a list of ints >= {low}")


def _is(value, kind):
  """Type test where bool is no int and an int is a fine float."""
  if kind is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if kind is float:
    return isinstance(value, (int, float)) and math.isfinite(value)
  if kind is tuple:
    return isinstance(value, (tuple, list))
  return isinstance(value, kind)


class SettingError(ValueError):
  """One line: `config.model.<key>=<value> is invalid: <why>`."""


def invalid(key, value, why):
  return SettingError(f"config.model.{key}={value!r} is invalid: {why}")


def values(model_config, module_cls, fixed=None):
  """{field: value} of every declared field: the config's, else the module default."""
  out = {k: f.default for k, f in module_cls.__dataclass_fields__.items()
         if k not in ("parent", "name")}
  out.update(fixed or {})
  out.update({k: v for k, v in dict(model_config).items() if k != "name"})
  return out


def check(table, vals):
  """Raises SettingError for the first value of `vals` that breaks its rule in `table`."""
  for key, (kind, test, why) in table.items():
    if key not in vals:
      continue
    v = vals[key]
    if v is None and "(or None)" in why:
      continue
    if not _is(v, kind) or not test(v):
      raise invalid(key, v, why if _is(v, kind) else f"expected {kind.__name__}; {why}")
