"""Bad configs stop before any work, with one line naming the key and the value."""

import os
import subprocess
import sys

import pytest

from configs import default
from configs import gru
from jaxquant import config_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("key, value, why", [
    ("train.lr", -1.0, "must be > 0"),
    ("train.lr", 0.0, "must be > 0"),
    ("train.batch_size", 0, "must be >= 1"),
    ("train.end_lr", 1.0, "must be in [0, train.lr]"),
    ("data.window", 0, "must be >= 1"),
    ("data.test_fraction", 0.9, ""),
    ("data.sampler", "magic", ""),
    ("model.name", "gpt5", ""),
    ("model.lstm_impl", "cudnn", "use one of"),
    ("train.dtype", "float8", ""),
    ("eval.min_positive_rate", 0.7, ""),
])
def test_impossible_values_name_key_and_value(key, value, why):
  config = gru.get_config("quick")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  msg = str(e.value)
  assert f"config.{key}=" in msg, msg
  assert why in msg
  assert "\n" not in msg


def test_every_shipped_config_is_valid():
  import glob
  from jaxquant import compare
  paths = [p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
           if os.path.basename(p) not in ("__init__.py", "common.py")]  # common.py: helpers.
  assert len(paths) >= 10
  for path in sorted(paths):
    config_check.validate(compare.load_config_file(path))
    try:
      quick = compare.load_config_file(path + ":quick")
    except ValueError as e:
      assert "unknown variant" in str(e)
      continue
    config_check.validate(quick)
  config_check.validate(default.get_config())


def test_set_value_converts_and_rejects():
  config = gru.get_config("quick")
  config_check.set_value(config, "train.lr", "0.01")
  assert config.train.lr == 0.01 and isinstance(config.train.lr, float)
  config_check.set_value(config, "train.epochs", "3")
  assert config.train.epochs == 3
  with pytest.raises(config_check.ConfigError, match="train.lrr"):
    config_check.set_value(config, "train.lrr", "1")
  with pytest.raises(config_check.ConfigError, match="train.epochs"):
    config_check.set_value(config, "train.epochs", "three")


def test_window_larger_than_the_data_is_one_clear_line(tmp_path):
  from jaxquant.data import dataset as dataset_lib
  config = gru.get_config("quick")
  config.data.dir = str(tmp_path / "data")
  config.data.synth.instruments, config.data.synth.days = 1, 2
  config.data.window = 5000
  data_dir = dataset_lib.ensure_data(config.data, log=lambda *a: None)
  with pytest.raises(ValueError, match=r"data.window=5000"):
    dataset_lib.build_dataset(config.data, data_dir)


def test_batch_that_does_not_divide_over_devices():
  import jax
  import numpy as np
  from jax.sharding import Mesh
  from jaxquant import parallel
  mesh = Mesh(np.array(jax.devices()[:1] * 1).reshape(1, 1), ("data", "expert"))
  parallel.check_batch_divides(6, mesh)  # One device: anything divides.

  class EightDevices:
    size = 8
  with pytest.raises(ValueError, match=r"batch_size=100 does not divide over 8 devices"):
    parallel.check_batch_divides(100, EightDevices())


@pytest.mark.parametrize("flag, expected", [
    ("--config.train.lrr=1", "unknown config key 'lrr' in --config.train.lrr"),
    ("--config.train.lr=abc", "--config.train.lr=abc: could not convert"),
])
def test_command_line_gives_one_line_and_no_traceback(flag, expected):
  p = subprocess.run([sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
                      flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 1
  assert "Traceback" not in p.stderr
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_unknown_variant_is_one_line_naming_it_and_the_file():
  p = subprocess.run([sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick,nope"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 1
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown variant 'nope' of configs/gru.py (known: quick)" in lines[0], lines


def test_a_run_saved_with_the_old_attention_key_still_loads(tmp_path):
  """Runs saved before model.window (the attention half-width) became
  model.attention_radius keep their value under the new name."""
  import json
  from configs import transformer
  from jaxquant import evaluate
  saved = json.loads(transformer.get_config("quick").to_json())
  saved["model"]["window"] = saved["model"].pop("attention_radius")
  saved["model"]["window"] = 7
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = evaluate.load_run_config(str(tmp_path))
  assert config.model.attention_radius == 7 and "window" not in config.model
  config_check.validate(config)


@pytest.mark.parametrize("changes, alpha", [
    ({"data.label_kind": "three_class"}, "1,2,3"),
    ({"data.label_kind": "triple_barrier", "data.barrier_binary": False}, "1,1,4"),
    ({"data.label_kind": "triple_barrier"}, "1,4"),
    ({"data.label_kind": "binary"}, "1,14.6"),
])
def test_explicit_class_weights_take_one_weight_per_class_of_the_label_kind(changes, alpha):
  config = gru.get_config("quick")
  for key, value in changes.items():
    config_check.set_value(config, key, str(value))
  config_check.set_value(config, "loss.alpha", alpha)
  config_check.validate(config)
  wrong = ",".join(["1"] * (5 - len(alpha.split(","))))  # 2 weights for 3 classes, 3 for 2.
  config_check.set_value(config, "loss.alpha", wrong)
  with pytest.raises(config_check.ConfigError, match=r"config.loss.alpha=.* needs \d weights"):
    config_check.validate(config)


_TYPO_CONFIG = """
from configs import gru


def get_config(arg=None):
  c = gru.get_config("quick")
  c.{key} = {value}
  return c
"""


@pytest.mark.parametrize("key, value, expected", [
    ("train.lrr", "1e-3", "config.train.lrr is not a setting (did you mean train.lr?)"),
    ("data.windw", "64", "config.data.windw is not a setting (did you mean data.window?)"),
    ("data.synth.dayz", "3", "config.data.synth.dayz is not a setting (did you mean "
     "data.synth.days?)"),
    ("eval.zzz", "1", "config.eval.zzz is not a setting"),
])
def test_unknown_key_in_a_config_file_is_refused(tmp_path, key, value, expected):
  from jaxquant import compare
  path = tmp_path / "typo.py"
  path.write_text(_TYPO_CONFIG.format(key=key, value=value))
  config = compare.load_config_file(str(path))
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  msg = str(e.value)
  assert expected in msg and "\n" not in msg, msg
  if key == "train.lrr":  # The same file through the command line: one line, exit 1.
    p = subprocess.run([sys.executable, "-m", "jaxquant.main", f"--config={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def test_model_keys_are_left_to_the_model_check():
  config = gru.get_config("quick")
  config.model.attention_radius = 3  # Not a GRU field: models.build_model refuses it.
  config_check.validate(config)


@pytest.mark.parametrize("name, key, value, why", [
    ("gru", "dropout", 1.5, "must be in [0, 1)"),
    ("gru", "hidden", 0, "must be >= 1"),
    ("gru", "num_layers", 0, "must be >= 1"),
    ("lstm", "hidden", 0, "must be >= 1"),
    ("lstm", "lstm_impl", "cudnn", "use one of"),
    ("resnet", "width", 0, "must be >= 1"),
    ("resnet", "depth", 50, "use one of (10, 18, 34)"),
    ("resnet", "conv_impl", "fft", "use one of"),
    ("resnet", "dropout", -0.1, "must be in [0, 1)"),
    ("transformer", "num_layers", 0, "must be >= 1"),
    ("transformer", "head_dropout", 1.0, "must be in [0, 1)"),
    ("transformer", "pooling", "max", "use one of"),
    ("moe", "num_experts", 0, "must be >= 1"),
    ("moe", "capacity_factor", 0.0, "must be > 0"),
    ("moe", "top_k", 9, "must be <= model.num_experts=8"),
])
def test_every_model_setting_is_checked_before_any_data(name, key, value, why):
  """Each model's declared settings (models/<model>.py SETTINGS) are checked by
  config_check, one line naming the key, before data or model exist."""
  from configs import lstm, moe, resnet, transformer
  mod = {"gru": gru, "lstm": lstm, "resnet": resnet, "transformer": transformer, "moe": moe}
  config = mod[name].get_config("quick")
  config_check.validate(config)
  with config.model.unlocked():
    config.model[key] = value
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  msg = str(e.value)
  assert msg.startswith(f"config.model.{key}={value!r} is invalid: ") and why in msg, msg
  assert "\n" not in msg


@pytest.mark.parametrize("name", ["transformer", "moe"])
def test_heads_must_divide_the_model_width(name):
  from configs import moe, transformer
  config = {"transformer": transformer, "moe": moe}[name].get_config("quick")
  config.model.d_model, config.model.num_heads = 32, 3
  with pytest.raises(config_check.ConfigError,
                     match=r"config.model.num_heads=3 is invalid: model.d_model=32 must be"):
    config_check.validate(config)
  config.model.num_heads = 4
  config_check.validate(config)


def test_a_bad_model_setting_stops_the_command_before_any_data(tmp_path):
  p = subprocess.run([sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
                      f"--config.data.dir={tmp_path / 'data'}", "--config.model.dropout=1.5",
                      f"--workdir={tmp_path / 'run'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 1
  lines = p.stderr.strip().splitlines()
  assert lines == ["error: config.model.dropout=1.5 is invalid: must be in [0, 1)"], lines
  assert not (tmp_path / "data").exists()  # Stopped before generating any data.
