"""A population trained in one compiled step (jaxquant.compare --grid) gives each member the
run it would have had alone, and a kill resumes every member at the same batch."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Timing fields differ between any two runs; the rest must agree.
TIMING = {"seconds", "samples_per_s", "samples_per_s_per_device", "population_members"}
SETTINGS = {**TINY, "train.epochs": 3, "train.batch_size": 32, "train.patience": 1,
            "model.hidden": 8}


def _cmd(workdir, data, *extra):
  sets = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}"
          for k, v in {"data.dir": data, **SETTINGS}.items()]
  return [sys.executable, "-m", "jaxquant.compare", "--config=configs/gru.py:quick",
          '--grid=loss.alpha=["1,4","1,12"]', "--grid=loss.gamma=[2]", "--seeds=1",
          f"--workdir={workdir}", *sets, *extra]


def _run(cmd):
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  return p.stdout


def _history(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _close(a, b, path="", tol=2e-5):
  """Equal up to float rounding (a member's arithmetic runs inside lax.map)."""
  if isinstance(a, dict):
    assert set(a) == set(b), path
    for k in a:
      _close(a[k], b[k], f"{path}.{k}", tol)
  elif isinstance(a, list):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _close(x, y, f"{path}[{i}]", tol)
  elif isinstance(a, float) and isinstance(b, float):
    assert a == pytest.approx(b, rel=tol, abs=tol, nan_ok=True), path
  else:
    assert a == b, path


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
  root = tmp_path_factory.mktemp("pop")
  data = str(root / "data")
  _run(_cmd(str(root / "alone"), data, "--nopopulation"))
  with open(root / "alone" / "compare.json") as f:
    return data, str(root / "alone"), json.load(f)


def test_killed_population_resumes_and_every_member_equals_its_run_alone(alone, tmp_path):
  data, alone_dir, expected = alone
  workdir = str(tmp_path / "pop")
  proc = subprocess.Popen(_cmd(workdir, data), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:  # The first member's first epoch is logged: stop in the second.
    if " epoch   1 " in line:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.stdout.read()
  assert proc.wait(timeout=120) == 0, rest[-2000:]
  assert "saved every member" in rest or "were not evaluated" in rest, rest[-2000:]
  assert not os.path.exists(os.path.join(workdir, "compare.json"))
  again = _run(_cmd(workdir, data))
  assert "Population of 2 gru members in one compiled step" in again
  assert "Resuming at epoch" in again
  with open(os.path.join(workdir, "compare.json")) as f:
    got = json.load(f)
  assert got["populations"] == 1 and expected["populations"] == 2
  assert [m["name"] for m in got["members"]] == [m["name"] for m in expected["members"]]
  for g, e in zip(got["members"], expected["members"]):
    _close({k: g[k] for k in ("val", "test", "threshold", "collapsed", "settings")},
           {k: e[k] for k in ("val", "test", "threshold", "collapsed", "settings")}, g["name"])
    # Every epoch's record, early stopping included (patience 1: members may stop apart).
    _close(_history(g["workdir"]), _history(e["workdir"]), g["name"])
    with open(os.path.join(g["workdir"], "report.json")) as f:
      report = json.load(f)
    with open(os.path.join(e["workdir"], "report.json")) as f:
      report_alone = json.load(f)
    assert report["stop_reason"] == report_alone["stop_reason"]
    assert report["test"]["backtest"]["dsr_trials"] == 2  # Every member is a trial.
    _close(report["test"]["confusion"], report_alone["test"]["confusion"])
  # Selection on validation only: the same member either way.
  assert got["selected"]["index"] == expected["selected"]["index"]
  assert 0 <= got["pbo"]["pbo"] <= 1
  md = open(os.path.join(workdir, "compare.md")).read()
  assert "Selected on validation F1 alone" in md and "sweep_loss.alpha.png" in md
