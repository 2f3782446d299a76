"""Evaluation checks what it evaluates: the run's own data, other data's own report,
the training facts kept; and its failures are one line (read-only workdir, --out a
directory, a broken config.json)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_config
from jaxquant import config_check
from jaxquant import evaluate
from jaxquant import train
from jaxquant.data import synth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny trained run (its data, workdir and report), shared: tests copy it."""
  base = tmp_path_factory.mktemp("eval_checks")
  config = tiny_config(base / "data")
  workdir = str(base / "run")
  report = train.train_and_evaluate(config, workdir)
  return base, workdir, report


def _copy_run(tiny_run, tmp_path):
  """A private copy of the run and its data (config.json pointing at the copy)."""
  base, workdir, _ = tiny_run
  data, run = tmp_path / "data", str(tmp_path / "run")
  shutil.copytree(base / "data", data)
  shutil.copytree(workdir, run)
  config = evaluate.load_run_config(run)
  config.data.dir = str(data)
  return config, data, run


def _main(*args, prefix=()):
  cmd = [*prefix, sys.executable, "-m", "jaxquant.main", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_error_line(p, *words):
  assert p.returncode != 0, p.stdout[-1000:]
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
  for w in words:
    assert w in errors[0], errors[0]
  return errors[0]


def test_eval_refuses_data_changed_since_training(tiny_run, tmp_path):
  config, data, run = _copy_run(tiny_run, tmp_path)
  before = open(os.path.join(run, "report.json")).read()
  synth.write_market(str(tmp_path / "new"), instruments=2, days=7, seed=5, progress=False)
  for f in os.listdir(tmp_path / "new"):  # New shards under the old names and manifest...
    if f.endswith(".parquet"):
      shutil.copy(tmp_path / "new" / f, data / f)
  manifest = json.loads((data / "manifest.json").read_text())  # ...which records them.
  manifest["shard_files"] = json.loads((tmp_path / "new" / "manifest.json").read_text())[
      "shard_files"]
  (data / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match=r"not what run .* was trained on \(shards\..*parquet"):
    evaluate.evaluate(run, config)
  assert open(os.path.join(run, "report.json")).read() == before  # Not overwritten.


def test_eval_on_other_data_writes_its_own_named_report(tiny_run, tmp_path):
  config, _, run = _copy_run(tiny_run, tmp_path)
  before = open(os.path.join(run, "report.json")).read()
  other = tmp_path / "rb_2025"
  synth.write_market(str(other), instruments=2, days=6, seed=3, progress=False)
  config.eval.data_dir = str(other)
  summary = evaluate.evaluate(run, config)
  assert open(os.path.join(run, "report.json")).read() == before
  saved = json.load(open(os.path.join(run, "report-rb_2025.json")))
  assert saved["eval_data_dir"] == str(other) == summary["eval_data_dir"]
  md = open(os.path.join(run, "report-rb_2025.md")).read()
  assert f"test = every window of `{other}`" in md
  assert os.path.exists(os.path.join(run, "rb_2025-threshold_sweep.png"))
  assert "](rb_2025-threshold_sweep.png)" in md and "](training_curves.png)" in md
  assert "# jaxquant report" in open(os.path.join(run, "report.md")).read()


def test_reevaluation_keeps_the_training_facts(tiny_run, tmp_path):
  _, _, report = tiny_run
  config, _, run = _copy_run(tiny_run, tmp_path)
  assert report["stop_reason"] and report["train_seconds"] > 0
  summary = evaluate.evaluate(run, config)
  assert summary["stop_reason"] == report["stop_reason"]
  assert summary["train_seconds"] == report["train_seconds"]
  md = open(os.path.join(run, "report.md")).read()
  assert f"training stopped: {report['stop_reason']}" in md
  assert f"Computed on: `{config.data.dir}`" in md
  # The quick GRU trains with the focal loss and class weights: not probabilities.
  assert summary["uncalibrated_scores"] and "not calibrated probabilities" in md


def test_eval_of_a_read_only_workdir_is_one_line_and_out_dir_writes_elsewhere(tiny_run, tmp_path):
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
    pytest.skip("needs unshare -rm (user and mount namespaces) for a read-only mount")
  config, _, run = _copy_run(tiny_run, tmp_path)
  flags = ["--mode=eval", f"--workdir={run}", f"--config.data.dir={config.data.dir}"]
  ro = ["unshare", "-rm", "sh", "-c", f'mount --bind -o ro "{run}" "{run}" && exec "$@"', "sh"]
  _one_error_line(_main(*flags, prefix=ro), "cannot write to", "--out_dir")
  out = tmp_path / "elsewhere"
  p = _main(*flags, f"--out_dir={out}", prefix=ro)
  assert p.returncode == 0, p.stderr[-3000:]
  assert os.path.exists(out / "report.json") and os.path.exists(out / "report.md")


def test_predict_out_a_directory_is_one_line(tiny_run, tmp_path):
  config, _, run = _copy_run(tiny_run, tmp_path)
  p = _main("--mode=predict", f"--workdir={run}", f"--config.data.dir={config.data.dir}",
            f"--out={tmp_path}")
  _one_error_line(p, "is a directory", "--out=")


def test_broken_config_json_names_the_file(tmp_path):
  for text in ('{"train": {"epochs": 3,}}', '[1, 2]', '{"train": 5}'):
    (tmp_path / "config.json").write_text(text)
    _one_error_line(_main("--mode=eval", f"--workdir={tmp_path}"),
                    str(tmp_path / "config.json"))


def test_temperature_fitted_on_val_undoes_overconfidence():
  rng = np.random.default_rng(0)
  p = rng.uniform(0.02, 0.98, 20000)
  y = (rng.random(20000) < p).astype(int)
  logit = np.log(p) - np.log1p(-p)
  over = 1 / (1 + np.exp(-3 * logit))  # Three times too confident.
  arrays = {"val": (y, over), "test": (y[::-1], over[::-1])}
  tempered, cal = evaluate._temperature_scaled(arrays, 0.5)
  assert abs(cal["temperature"] - 3) < 0.2 and cal["threshold"] == pytest.approx(0.5)
  assert cal["ece_after"]["test"] < cal["ece_before"]["test"] / 3
  assert np.array_equal(np.argsort(tempered["test"][1]), np.argsort(over[::-1]))
  config = tiny_config("unused", {"eval.calibration": "platt"})
  with pytest.raises(config_check.ConfigError, match="eval.calibration"):
    config_check.validate(config)


def test_eval_with_temperature_calibration_keeps_the_decisions(tiny_run, tmp_path):
  _, _, report = tiny_run
  config, _, run = _copy_run(tiny_run, tmp_path)
  config.eval.calibration = "temperature"
  summary = evaluate.evaluate(run, config)
  assert summary["calibration"]["temperature"] > 0
  for split in ("val", "test"):
    assert summary[split]["confusion"] == report[split]["confusion"]
    assert summary[split]["roc_auc"] == pytest.approx(report[split]["roc_auc"])
  assert "tempered by T = " in open(os.path.join(run, "report.md")).read()
