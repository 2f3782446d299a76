"""PEFT: a trained Transformer fine-tuned with only its heads trainable."""

import jax
import numpy as np

from conftest import tiny_config
from configs import transformer
from jaxquant import evaluate
from jaxquant import train


def _config(data_dir, variant):
  return tiny_config(data_dir, config=transformer.get_config(variant))


def _best_state(workdir, config):
  _, state, _, _, _ = evaluate.restore(workdir, config)
  return {"params": state.params, "opt_state": state.opt_state}


def test_heads_only_fine_tuning(tmp_path):
  base_dir, peft_dir = str(tmp_path / "base"), str(tmp_path / "peft")
  base_config = _config(tmp_path / "data", "quick")
  train.train_and_evaluate(base_config, base_dir)
  c = _config(tmp_path / "data", "quick,peft")
  c.train.init_from = base_dir
  report = train.train_and_evaluate(c, peft_dir)
  base, tuned = _best_state(base_dir, base_config), _best_state(peft_dir, c)

  changed = {}
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(base["params"]),
                               jax.tree_util.tree_leaves_with_path(tuned["params"])):
    changed[jax.tree_util.keystr(path)] = not np.array_equal(np.asarray(a), np.asarray(b))
  heads = {k: v for k, v in changed.items() if k.startswith("['head']")}
  body = {k: v for k, v in changed.items() if not k.startswith("['head']")}
  assert heads and any(heads.values()), "the heads did not train"
  assert body and not any(body.values()), [k for k, v in body.items() if v]

  # Trainable vs total, and no optimizer memory for frozen parameters.
  counts = report["parameters"]
  head_size = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tuned["params"]["head"]))
  assert counts["trainable"] == head_size < counts["total"]
  opt_floats = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tuned["opt_state"])
                   if np.ndim(x) > 0)
  assert opt_floats == 2 * head_size  # Adam's mu and nu, for the heads only.
