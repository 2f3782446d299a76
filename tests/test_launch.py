"""launch.sh: relative paths are the caller's, --nproc output lines name their process,
--help prints the usage and nothing else.

The 2-process run is made once per session (`two_process_run`): tests/test_slurm.py
compares its SLURM run against the same run.
"""

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile

from conftest import ROOT, tiny_flags

LAUNCH = os.path.join(ROOT, "launch.sh")
EPOCHS = {"train.epochs": 3}


def launch_env(**extra):
  """One CPU device per process, as a 2-process run on a laptop."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


@functools.lru_cache(maxsize=None)
def two_process_run():
  """`./launch.sh --nproc=2 configs/gru.py:quick --workdir=run` on the tiny run (3 epochs,
  for tests/test_slurm.py to interrupt after the first), called from a fresh directory (not
  the repository). Returns (that directory, the process)."""
  caller = tempfile.mkdtemp(prefix="jaxquant-launch-")
  atexit.register(shutil.rmtree, caller, True)
  proc = subprocess.run(
      [LAUNCH, "--nproc=2", "configs/gru.py:quick", "--workdir=run",
       *tiny_flags(os.path.join(caller, "data"), EPOCHS)],
      cwd=caller, env=launch_env(), capture_output=True, text=True, timeout=600)
  return caller, proc


def test_relative_workdir_is_the_callers_and_lines_name_their_process():
  caller, proc = two_process_run()
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = os.path.join(caller, "run", "report.json")
  assert os.path.exists(report), "the relative --workdir did not land in the caller's directory"
  assert not os.path.exists(os.path.join(ROOT, "run", "report.json"))
  assert json.load(open(report))["workdir"] in ("run", os.path.join(caller, "run"))
  for stream in (proc.stdout, proc.stderr):
    lines = [l for l in stream.splitlines() if l.strip()]  # (and progress bar redraws)
    assert lines and all(l.startswith(("[0] ", "[1] ")) for l in lines), lines[:5]
  out = proc.stdout.splitlines()
  assert "[0] Workdir: " + os.path.join(caller, "run") in out
  assert "[1] Workdir: " + os.path.join(caller, "run") in out
  assert any(l.startswith("[0] 2 cpu device(s) in 2 process(es)") for l in out)


def test_help_is_the_usage_and_nothing_else():
  proc = subprocess.run([LAUNCH, "--help"], capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2 and proc.stdout == ""
  lines = proc.stderr.rstrip("\n").splitlines()
  assert lines[0].startswith("Runs jaxquant on this machine's devices")
  assert any("--nproc=N CONFIG" in l for l in lines)
  assert any("--slurm CONFIG" in l for l in lines)
  assert not any(l.startswith(("set ", "usage()", "#!")) for l in lines), lines[-3:]
  assert lines[-1].strip(), "usage ends on a blank line"
