"""One run per workdir (jaxquant/workdir.py): training exclusive, eval/predict shared,
a dead holder never blocks, the refusal names the holder."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import tiny_flags
from jaxquant import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Another process holding the lock (no JAX: starts in a fraction of a second).
_HOLDER = ("import sys, time; from jaxquant import workdir; "
           "workdir.lock(sys.argv[1], shared=sys.argv[2] == 'shared', lead=True); "
           "print('held', flush=True); time.sleep(600)")


@pytest.fixture
def hold():
  procs = []

  def start(path, shared=False):
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path),
                          "shared" if shared else "exclusive"], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    procs.append(p)
    return p
  yield start
  for p in procs:
    p.kill()
    p.wait()


def test_second_training_run_is_refused_naming_the_holder(tmp_path, hold):
  holder = hold(tmp_path / "run")
  with pytest.raises(ValueError, match=rf"in use by another training run \(pid {holder.pid} "
                     r"on host \S+, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"):
    workdir_lib.lock(str(tmp_path / "run"), lead=True)
  with pytest.raises(ValueError, match="in use by another training run"):
    workdir_lib.lock(str(tmp_path / "run"), shared=True, lead=True)  # No eval meanwhile.
  # Off process 0 nothing is taken (the lead process holds it for the whole run).
  workdir_lib.lock(str(tmp_path / "run"), lead=False).release()


def test_a_sigkilled_holder_never_blocks_the_next_run(tmp_path, hold):
  holder = hold(tmp_path / "run")
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  lock = workdir_lib.lock(str(tmp_path / "run"), lead=True)
  assert f"pid {os.getpid()} " in workdir_lib.holder(str(tmp_path / "run"))
  lock.release()


def test_evaluations_share_and_keep_training_out(tmp_path, hold):
  (tmp_path / "run").mkdir()
  hold(tmp_path / "run", shared=True)
  second = workdir_lib.lock(str(tmp_path / "run"), shared=True, lead=True)  # Fine.
  second.release()
  with pytest.raises(ValueError, match="being evaluated by another process"):
    workdir_lib.lock(str(tmp_path / "run"), lead=True)


def test_a_run_evaluating_its_own_workdir_does_not_lock_itself_out(tmp_path):
  with workdir_lib.lock(str(tmp_path / "run"), lead=True):
    with workdir_lib.lock(str(tmp_path / "run"), shared=True, lead=True):
      pass
    probe = subprocess.run([sys.executable, "-c", _HOLDER.replace("time.sleep(600)", "0"),
                            str(tmp_path / "run"), "shared"], cwd=ROOT, capture_output=True,
                           text=True)
    assert "in use by another training run" in probe.stderr  # Still held after the nest.
  lock = workdir_lib.lock(str(tmp_path / "run"), lead=True)  # Released at the end.
  lock.release()


def test_main_refuses_a_second_run_and_an_eval_in_one_line(tmp_path, hold):
  workdir = tmp_path / "run"
  holder = hold(workdir)
  (workdir / "config.json").write_text(json.dumps({"name": "gru"}))
  for mode in ("train", "eval"):
    cmd = [sys.executable, "-m", "jaxquant.main", f"--workdir={workdir}", f"--mode={mode}"]
    if mode == "train":
      cmd += ["--config=configs/gru.py:quick", *tiny_flags(tmp_path / "data")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, (mode, p.stdout[-1000:], p.stderr[-2000:])
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"pid {holder.pid} " in errors[0], (mode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
  assert not (tmp_path / "data").exists()  # Refused before any work.
