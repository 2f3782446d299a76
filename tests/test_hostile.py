"""A hostile machine: full disk with TensorBoard on, SIGTERM in every phase, workdirs that
cannot be one, a broken metrics.jsonl — each ends in one line, within a bounded time."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_config
from conftest import tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No compile cache: its files would be written under the size limit too.
ENV = {**os.environ, "JAXQUANT_COMPILATION_CACHE": "off"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Shards generated once (the runs below start from them)."""
  from jaxquant.data import dataset
  path = tmp_path_factory.mktemp("data")
  dataset.ensure_data(tiny_config(path).data, log=lambda *a: None)
  return path


def _cmd(workdir, data_dir, changes=None):
  return [sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
          f"--workdir={workdir}", *tiny_flags(data_dir, changes)]


def _one_error(p_out, p_err=""):
  text = p_out + p_err
  errors = [l for l in text.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, text[-3000:]
  assert "Traceback" not in text, text[-3000:]
  return errors[0]


def _limit(size):
  return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_tbwriter_raises_on_a_full_disk_instead_of_blocking(tmp_path):
  # tensorboardX's writer thread died here and the next put blocked forever.
  code = ("import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          "sys.modules.setdefault('torch', None); from jaxquant import tb; "
          f"w = tb.TBWriter({str(tmp_path)!r})\n"
          "try:\n  [w.scalars(i, {'a': {'b': 0.5, 'c': 1.5}}) for i in range(5000)]; w.flush()\n"
          "except OSError as e:\n  print(e.errno, e.strerror)")
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, preexec_fn=_limit(4096),
                     capture_output=True, text=True, timeout=60)
  assert p.stdout.startswith("27 File too large: cannot write TensorBoard events to "), p
  assert "Traceback" not in p.stderr, p.stderr


def test_full_disk_with_tensorboard_on_ends_in_one_line(tmp_path, data):
  # 92 steps of per-step scalars outgrow a 20 KB file limit that the checkpoint fits.
  cmd = _cmd(tmp_path / "run", data, {"eval.tensorboard": True, "train.batch_size": 32})
  t0 = time.time()
  p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, preexec_fn=_limit(20_000),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    out, err = p.communicate(timeout=150)
  except subprocess.TimeoutExpired:
    p.kill()
    out, err = p.communicate()
    pytest.fail(f"hung (SIGKILLed after {time.time() - t0:.0f}s): {(out + err)[-2000:]}")
  assert p.returncode == 1, (out + err)[-3000:]
  assert "File too large" in _one_error(out, err)


def _signal_on(line_start, cmd, sig=signal.SIGTERM):
  p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in p.stdout:
    seen.append(line)
    if line.startswith(line_start):
      p.send_signal(sig)
      break
  try:
    seen.append(p.communicate(timeout=120)[0])
  finally:
    p.kill()
  return p.returncode, "".join(seen)


def test_sigterm_during_start_up_is_one_line(tmp_path):
  # Fresh data: the signal comes while JAX loads and the market is generated.
  rc, out = _signal_on("Workdir:", _cmd(tmp_path / "run", tmp_path / "data"))
  assert rc == 128 + signal.SIGTERM, out[-3000:]
  line = _one_error(out)
  assert "SIGTERM" in line and "nothing was saved" in line, line


def test_sigterm_during_the_final_evaluation_exits_0_with_the_run_saved(tmp_path, data):
  workdir = tmp_path / "run"
  rc, out = _signal_on("epoch   1", _cmd(workdir, data))
  assert rc == 0, out[-3000:]
  assert "SIGTERM after training: its checkpoints are saved" in out, out[-3000:]
  assert "re-run the same command to evaluate it" in out
  assert "Traceback" not in out and not (workdir / "report.json").exists()
  assert os.listdir(workdir / "checkpoints")


@pytest.mark.parametrize("kind", ["file", "under_a_file", "immutable"])
def test_a_workdir_that_cannot_be_one_is_one_line(tmp_path, kind):
  workdir = tmp_path / "run"
  if kind == "file":
    workdir.write_text("x")
  elif kind == "under_a_file":
    (tmp_path / "f").write_text("x")
    workdir = tmp_path / "f" / "run"
  elif os.geteuid() == 0:
    workdir.mkdir()
    if subprocess.run(["chattr", "+i", str(workdir)], capture_output=True).returncode:
      pytest.skip("chattr +i is not supported here")
  else:
    workdir.mkdir()
    workdir.chmod(0o555)
  try:
    p = subprocess.run(_cmd(workdir, tmp_path / "data"), cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
  finally:
    if kind == "immutable":
      subprocess.run(["chattr", "-i", str(workdir)], capture_output=True)
      workdir.chmod(0o755)
  assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
  line = _one_error(p.stdout, p.stderr)
  assert str(workdir) in line and {"file": "is not a directory", "immutable": "not writable",
                                   "under_a_file": f"{tmp_path / 'f'} is a file"}[kind] in line


def test_bad_json_in_metrics_jsonl_names_the_file_and_line(tmp_path, data):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, \n')
  p = subprocess.run(_cmd(workdir, data), cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
  line = _one_error(p.stdout, p.stderr)
  assert f"{workdir / 'metrics.jsonl'}: line 2 is not valid JSON" in line, line
