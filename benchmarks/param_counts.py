"""Parameter counts of every full-scale config next to the original system's.

python benchmarks/param_counts.py      # prints the table and writes it to docs/performance.md

Shapes only (jax.eval_shape): nothing is initialised or run.
"""

import importlib
import os
import re
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxquant import state as state_lib  # noqa: E402
from jaxquant.data import features  # noqa: E402
from jaxquant.models import moe  # noqa: E402

ORIGINAL = {"resnet": "— (ResNet-18 on 10 channels; count not given)",
            "gru": "—", "lstm": "—", "transformer": "26.9 M",
            "moe": "~30 M total / ~7.5 M active"}
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "performance.md")


def counts(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  model = state_lib.make_model(config, 2)
  tx, _ = state_lib.make_optimizer(config.train, 1)
  state = state_lib.create_train_state(model, tx, len(features.FEATURE_NAMES), config.data.window,
                                   0, abstract=True)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  active = total
  if config.model.name == "moe":
    active = moe.active_params(state.params, config.model.top_k, config.model.num_experts)
  return config, total, active


def main():
  lines = ["| config | model | T | total parameters | active per token | original |",
           "|---|---|---:|---:|---:|---|"]
  for name in ("gru", "lstm", "resnet", "transformer", "moe"):
    if not os.path.exists(os.path.join(os.path.dirname(DOC), "..", "configs", f"{name}.py")):
      continue
    config, total, active = counts(name)
    lines.append(f"| configs/{name}.py | {config.model.name} | {config.data.window} | "
                 f"{total / 1e6:.2f} M | {active / 1e6:.2f} M | {ORIGINAL[name]} |")
  table = "\n".join(lines)
  print(table)
  section = ("## Parameter counts\n\n`python benchmarks/param_counts.py` (shapes only, "
             f"{len(features.FEATURE_NAMES)} input features, 2 classes + return head).\n\n"
             + table + "\n")
  text = open(DOC).read() if os.path.exists(DOC) else "# Performance\n"
  if "## Parameter counts" in text:
    text = re.sub(r"## Parameter counts\n.*?(?=\n## |\Z)", section.rstrip("\n") + "\n", text,
                  flags=re.S)
  else:
    text = text.rstrip("\n") + "\n\n" + section
  from jaxquant import io_utils
  io_utils.atomic_write_text(DOC, text)


if __name__ == "__main__":
  main()
