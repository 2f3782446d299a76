"""Runs that survive: SIGTERM/SIGKILL mid-training and a resume end bit-identical."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import soak  # noqa: E402  (benchmarks/soak.py: the longer version of these tests)

# What a resumed run must reproduce exactly: every epoch's metrics, the test report and
# the final checkpoint's parameters and optimizer state, bit for bit (soak.final_state).
_results = soak.results


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
          f"--workdir={workdir}",
          *tiny_flags(data_dir, {"train.epochs": 2, "train.batch_size": 32}), *extra]


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("ref")
  data = str(root / "data")
  _run(_cmd(str(root / "run"), data))
  expected = _results(str(root / "run"))
  state = expected[2]
  assert any(k.startswith("['params']") for k in state)
  assert any(k.startswith("['opt_state']") and "['nu']" in k for k in state)
  return data, expected


def test_sigterm_saves_and_resume_is_identical(reference, tmp_path, sig=signal.SIGTERM,
                                               delay=1.0):
  # (SIGINT / Ctrl-C goes through the same handler.)
  data, expected = reference
  workdir = str(tmp_path / "run")
  out = _kill_after_start(_start(_cmd(workdir, data)), sig, delay)
  assert "saved a checkpoint" in out, out[-2000:]
  assert "re-run the same command" in out
  # It stopped mid-epoch: the checkpoint it left is a preemption one, part-way through
  # an epoch (0 < batch <= steps per epoch, the reference's step after epoch 1: a signal
  # on an epoch's last batch saves before that epoch's validation, batch = steps).
  from jaxquant.checkpoints import CheckpointStore
  store = CheckpointStore(os.path.join(workdir, "checkpoints"))
  meta = store.restore_meta(store.latest_step())
  store.close()
  steps_per_epoch = expected[0][0]["step"]
  progress = meta["progress"]
  assert meta["preempted"] == sig.name
  assert 0 < progress["batch"] <= steps_per_epoch, (progress, steps_per_epoch)
  # A different config must not resume this run...
  p = subprocess.run(_cmd(workdir, data, "--config.train.lr=0.01"), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and "Traceback" not in p.stderr
  err = p.stderr.strip().splitlines()[-1]
  assert "different config" in err and "(train.lr: 0.002 -> 0.01)" in err and "--force" in err
  # ...the same one continues exactly where it stopped.
  resumed = _run(_cmd(workdir, data))
  at = re.search(r"Resuming at epoch (\d+), batch (\d+) ", resumed)
  assert at and (int(at[1]), int(at[2])) == (progress["epoch"] + 1, progress["batch"]), resumed
  got = _results(workdir)
  assert got[2] == expected[2]  # Parameters and optimizer state, bitwise...
  assert got == expected  # ...and every epoch's metrics and the test report.
  # --force resumes under a changed config (here: one more epoch at another lr)...
  forced = _run(_cmd(workdir, data, "--config.train.epochs=3", "--config.train.lr=0.001",
                     "--force"))
  assert "--force: resuming" in forced and "Resuming at epoch 3" in forced
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  # ...but not into a model the checkpoint does not fit.
  p = subprocess.run(_cmd(workdir, data, "--config.model.hidden=12", "--config.train.epochs=4",
                          "--force"), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert "does not fit this model" in p.stderr.strip().splitlines()[-1]


def test_sigkill_during_a_checkpoint_write_then_resume_is_identical(reference, tmp_path):
  """SIGKILL while the first checkpoint is being written (epoch 1's metrics line is
  already in metrics.jsonl): the re-run finds no complete checkpoint, starts over
  without the orphaned line, never reads the half-written step, and ends identical.
  (Kills at random points, including later saves: benchmarks/soak.py.)"""
  data, expected = reference
  workdir = str(tmp_path / "run")
  ckpt = os.path.join(workdir, "checkpoints")
  proc = _start(_cmd(workdir, data))
  deadline = time.time() + 240
  while proc.poll() is None and time.time() < deadline:
    names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
    if any("tmp" in n for n in names):
      proc.kill()
      break
    time.sleep(0.001)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the run ended before it saved"
  assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == 1
  resumed = _run(_cmd(workdir, data))
  assert "Resuming" not in resumed
  assert _results(workdir) == expected
  # No half-written checkpoint is left behind for anyone to read.
  leftovers = [d for d in os.listdir(ckpt) if "tmp" in d.lower()]
  assert not leftovers, leftovers


def test_disk_full_while_saving_keeps_earlier_checkpoints(tmp_path):
  """A write limit (RLIMIT_FSIZE, set on the running process once the first
  checkpoint is saved) makes the next checkpoint's larger files fail with EFBIG, as
  a full disk fails them with ENOSPC: one clear line, the half-written step removed,
  the first one intact, and the same command resumes from it."""
  import resource
  workdir, data = str(tmp_path / "run"), str(tmp_path / "data")
  cmd = _cmd(workdir, data, "--config.model.hidden=64")  # ~50-150 KB checkpoint files.
  proc = _start(cmd)
  for line in proc.stdout:
    if line.startswith("epoch   1"):
      break
  resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))
  out = proc.stdout.read()
  assert proc.wait(timeout=120) == 1, out[-3000:]
  last = out.strip().splitlines()[-1]
  assert last.startswith("error: disk full while saving checkpoint step"), out[-3000:]
  assert "File too large" in last and "earlier checkpoints are intact" in last
  assert "Traceback" not in out
  steps = os.listdir(os.path.join(workdir, "checkpoints"))
  assert len(steps) == 1 and steps[0].isdigit(), steps  # Nothing half-written left.
  resumed = _run(cmd)
  assert f"Resuming at epoch 2, batch 0 (step {steps[0]})" in resumed
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows] == [1, 2]  # The epoch whose save failed is not doubled.


def test_grain_workers_do_not_outlive_a_killed_run(reference, tmp_path):
  data, _ = reference
  # (Host-gathered batches: windows gathered on the device need no grain worker.)
  proc = _start(_cmd(str(tmp_path / "run"), data, "--config.data.workers=2",
                     "--config.data.device_windows=off",
                     "--config.train.epochs=20"))
  for line in proc.stdout:
    if line.startswith("Model "):
      break

  def children(pid):
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{d}/stat") as f:
          if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
      except (OSError, IndexError):
        pass
    return out

  def workers(pids):
    out = []
    for k in pids:
      try:
        with open(f"/proc/{k}/cmdline") as f:
          if "multiprocessing.spawn" in f.read():
            out.append(k)
      except OSError:
        pass
    return out

  deadline = time.time() + 60
  kids = []
  while len(workers(kids)) < 2 and time.time() < deadline:  # The epoch's 2 workers are up.
    time.sleep(0.1)
    kids = children(proc.pid)
  assert len(workers(kids)) == 2, kids
  proc.kill()
  proc.wait(timeout=60)
  deadline = time.time() + 30
  while time.time() < deadline and any(os.path.exists(f"/proc/{k}") for k in kids):
    time.sleep(0.2)
  alive = [k for k in kids if os.path.exists(f"/proc/{k}")
           and open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
  for k in alive:
    os.kill(k, signal.SIGKILL)
  assert not alive, f"processes left running after the run was killed: {alive}"


def test_random_shard_corruptions_all_give_a_clear_error(tmp_path):
  """A short version of benchmarks/soak.py part 2: every corrupted copy of a directory of
  Parquet shards (and the manifest.json recording their sha256), loaded through the
  training pipeline, fails with an error naming the file — no hang, no garbage batch."""
  import random
  from jaxquant.data import synth
  synth.write_market(str(tmp_path / "data"), instruments=2, days=6, signal=1.0, seed=0,
                     progress=False)
  rows = soak.corruption_trials(18, str(tmp_path), random.Random(0), cli_every=0,
                                log=lambda *a: None)
  assert {r["kind"] for r in rows} == set(soak.CORRUPTIONS)
  assert all(r["outcome"] == "clear error" for r in rows), [r for r in rows
                                                           if r["outcome"] != "clear error"]
  # A shard of a newer format (its manifest entry matching) says so, not "corrupt".
  assert all("newer jaxquant" in r["message"] for r in rows if r["kind"] == "newer_version")


def test_soak_counts_only_trials_that_were_interrupted():
  # A signal after the run ended (exit 0, no save) or a KILL@save with no save to kill
  # interrupts nothing; a trial made only of those is not counted as identical.
  assert soak.interrupted(-9, "") and soak.interrupted(-15, "")
  assert soak.interrupted(0, "SIGTERM: saved a checkpoint at epoch 1, batch 5")
  assert not soak.interrupted(0, "epoch   3 ...\n   report: run/report.md\n")
  kills = [{"trial": 0, "interruptions": "SIGTERM@1.0s→0", "outcome": "identical",
            "interrupted": 1},
           {"trial": 1, "interruptions": "SIGKILL@9.0s→0 (had finished)",
            "outcome": "not interrupted", "interrupted": 0},
           {"trial": 2, "interruptions": "SIGKILL@2.0s→-9", "outcome": "DIFFERENT",
            "interrupted": 1}]
  md = soak.to_markdown(kills, 10.0, [], "soak", 1.0, (0.0, 0.0))
  assert "**1/2 interrupted trials finished identical" in md
  assert "1 not interrupted" in md
