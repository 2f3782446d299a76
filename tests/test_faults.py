"""Runs that survive: SIGTERM/SIGKILL mid-training and a resume end bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("train_loss", "val_loss", "val_f1", "val_roc_auc", "val_threshold", "step")


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}",
          "--config.data.synth.days=6", "--config.data.synth.instruments=2",
          "--config.data.window=16", "--config.model.hidden=8", "--config.train.epochs=2",
          "--config.train.batch_size=32", "--config.eval.bootstrap=0",
          "--config.eval.tensorboard=false", *extra]


def _run(cmd, timeout=300):
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  return p.stdout


def _start(cmd):
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _kill_after_start(proc, sig, delay):
  """Sends `sig` `delay` seconds after the training loop has started."""
  for line in proc.stdout:
    if line.startswith("Model "):
      break
  time.sleep(delay)
  proc.send_signal(sig)
  rest = proc.stdout.read()
  proc.wait(timeout=120)
  return rest


def _results(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  report = json.load(open(os.path.join(workdir, "report.json")))
  return [{k: r[k] for k in KEYS} for r in rows], {k: report["test"][k] for k in
                                                   ("roc_auc", "pr_auc", "f1", "confusion")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("ref")
  data = str(root / "data")
  _run(_cmd(str(root / "run"), data))
  return data, _results(str(root / "run"))


def test_sigterm_saves_and_resume_is_identical(reference, tmp_path, sig=signal.SIGTERM,
                                               delay=1.0):
  # (SIGINT / Ctrl-C goes through the same handler.)
  data, expected = reference
  workdir = str(tmp_path / "run")
  out = _kill_after_start(_start(_cmd(workdir, data)), sig, delay)
  assert "saved a checkpoint" in out, out[-2000:]
  assert "re-run the same command" in out
  # A different config must not resume this run...
  p = subprocess.run(_cmd(workdir, data, "--config.train.lr=0.01"), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode != 0
  assert "different config" in p.stderr and "Traceback" not in p.stderr
  # ...the same one continues exactly where it stopped.
  resumed = _run(_cmd(workdir, data))
  assert "Resuming at epoch" in resumed
  assert _results(workdir) == expected


def test_sigkill_then_resume_is_identical(reference, tmp_path):
  data, expected = reference
  workdir = str(tmp_path / "run")
  _kill_after_start(_start(_cmd(workdir, data)), signal.SIGKILL, 4.0)
  _run(_cmd(workdir, data))
  assert _results(workdir) == expected
  # No half-written checkpoint is left behind for anyone to read.
  leftovers = [d for d in os.listdir(os.path.join(workdir, "checkpoints"))
               if "tmp" in d.lower()]
  assert not leftovers, leftovers

