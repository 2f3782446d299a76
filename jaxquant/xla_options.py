"""XLA compiler options of the jitted train and predict steps.

XLA:CPU hands dots *and* elementwise/reduction fusions to YNNPACK by default.
On the quick models (2-core CPU, jax 0.10.2) the latter made the Transformer's
and the MoE's train steps slower (attention softmax, LayerNorm and their
backward reductions) and did not help GRU/LSTM/ResNet; YNNPACK for dots only is
as fast or faster for every model (measured by hand when chosen; no benchmark
keeps the figures). Other backends: no options.
"""

import functools

import jax
import jax.numpy as jnp

_CPU = {"xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def step_options():
  """`compiler_options` for `jax.jit` of a step: a dict, {} where they do not apply.

  An XLA that does not know the option (another jaxlib) gets none, rather
  than a compile error.
  """
  if jax.default_backend() != "cpu":
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU).lower(jnp.zeros(())).compile()
  except Exception:  # noqa: BLE001 — unknown option or value in this XLA.
    return {}
  return dict(_CPU)
