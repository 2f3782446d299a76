"""launch.sh --slurm under a real SLURM: a single-node cluster (munged, slurmctld, slurmd
from Debian's slurm-wlm) is brought up in a temporary directory for this module and torn
down after it. Skipped, saying why, where slurm-wlm is not installed or we are not root.

A 2-task run (`launch.sh --slurm --nproc=2` → `srun --ntasks=2`; jax.distributed reads the
SLURM allocation itself) whose tasks are all SIGKILLed (the pids from `scontrol listpids`)
after its first epoch's checkpoint and which is then re-run resumes at epoch 2 and ends with
the same report (val and test metrics) as tests/test_launch.py's `launch.sh --nproc=2` run
of the same config. (One test: an uninterrupted SLURM run adds nothing it does not show.)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import tiny_flags
from test_launch import EPOCHS, LAUNCH, launch_env, two_process_run

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "sinfo", "squeue", "scontrol")
_missing = [p for p in DAEMONS if not os.path.exists(f"/usr/sbin/{p}")] + [
    p for p in CLIENTS if not shutil.which(p)]
pytestmark = [
    pytest.mark.skipif(bool(_missing), reason=f"slurm-wlm not installed (no {', '.join(_missing)}); "
                       "`apt-get install slurm-wlm` (.ci/run does, as root on Debian)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster's daemons run as root"),
]


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _slurm_conf(d, ctld_port, slurmd_port):
  host = socket.gethostname().split(".")[0]
  return f"""ClusterName=jaxquanttest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _stop(pid_file):
  try:
    pid = int(open(pid_file).read().strip())
    os.kill(pid, signal.SIGTERM)
  except (OSError, ValueError):
    return
  for _ in range(20):  # Nothing of theirs outlives the test directory: do not wait long.
    try:
      os.kill(pid, 0)
    except OSError:
      return
    time.sleep(0.05)
  try:
    os.kill(pid, signal.SIGKILL)
  except OSError:
    pass


@pytest.fixture(scope="module")
def cluster():
  """SLURM_CONF of a running single-node cluster (node `localhost`, 2 CPUs)."""
  d = tempfile.mkdtemp(prefix="jaxquant-slurm-")
  os.chmod(d, 0o755)
  for sub in ("state", "spool"):
    os.makedirs(os.path.join(d, sub))
  with open(os.path.join(d, "munge.key"), "wb") as f:
    f.write(os.urandom(128))
  os.chmod(os.path.join(d, "munge.key"), 0o600)
  conf = os.path.join(d, "slurm.conf")
  with open(conf, "w") as f:
    f.write(_slurm_conf(d, *_free_ports(2)))
  env = dict(os.environ, SLURM_CONF=conf)
  pids = [os.path.join(d, f"{p}.pid") for p in DAEMONS]
  try:
    subprocess.run(["/usr/sbin/munged", "--force", f"--key-file={d}/munge.key",
                    f"--socket={d}/munge.sock", f"--pid-file={d}/munged.pid",
                    f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed"],
                   check=True, timeout=30)
    subprocess.run(["/usr/sbin/slurmctld", "-i"], env=env, check=True, timeout=30)
    subprocess.run(["/usr/sbin/slurmd", "-N", "localhost"], env=env, check=True, timeout=30)
    deadline, state = time.time() + 30, ""
    while time.time() < deadline:
      state = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], env=env,
                             capture_output=True, text=True).stdout.strip()
      if state == "idle":
        break
      time.sleep(0.5)
    else:
      logs = "".join(open(os.path.join(d, f)).read()[-1500:] for f in ("slurmctld.log", "slurmd.log")
                     if os.path.exists(os.path.join(d, f)))
      raise RuntimeError(f"the test node is {state or 'absent'}, not idle, after 30 s:\n{logs}")
    yield conf
  finally:
    for pid_file in reversed(pids):
      _stop(pid_file)
    shutil.rmtree(d, ignore_errors=True)


def _slurm_command(caller, workdir):
  return [LAUNCH, "--slurm", "--nproc=2", "configs/gru.py:quick", f"--workdir={workdir}",
          *tiny_flags(os.path.join(caller, "data"), EPOCHS)]


def _same_report(caller, workdir):
  got = json.load(open(os.path.join(workdir, "report.json")))
  want = json.load(open(os.path.join(caller, "run", "report.json")))
  assert got["best_step"] == want["best_step"]
  for split in ("val", "test"):
    assert got[split] == want[split], split


def test_slurm_run_killed_resumes_like_any_other(cluster):
  caller, reference = two_process_run()
  assert reference.returncode == 0, reference.stderr[-2000:]
  env = launch_env(SLURM_CONF=cluster)
  workdir = os.path.join(caller, "slurm-killed")
  cmd = _slurm_command(caller, workdir)
  # Killed: SIGKILL to every task of the step (as a node going down) once epoch 1's
  # checkpoint is saved. (Not scancel's SIGTERM: see the note at the end.)
  proc = subprocess.Popen(cmd, cwd=caller, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    lines, killed = [], []
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("0: epoch   1 "):
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True,
                              text=True, check=True).stdout.split()
        assert len(jobs) == 1, jobs
        listed = subprocess.run(["scontrol", "listpids", jobs[0]], env=env, capture_output=True,
                                text=True, check=True).stdout.splitlines()[1:]
        for row in listed:  # PID JOBID STEPID LOCALID GLOBALID
          try:
            os.kill(int(row.split()[0]), signal.SIGKILL)
            killed.append(row.split()[4])
          except (OSError, IndexError, ValueError):
            pass
        break
    out = "".join(lines) + proc.stdout.read()
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert "0: 2 cpu device(s) in 2 process(es), mesh {'data': 2, 'expert': 1}" in out, out[-3000:]
  assert f"1: Workdir: {workdir}" in out  # Task 1 ran too (srun --label).
  assert {"0", "1"} <= set(killed), (killed, out[-3000:])
  assert proc.returncode != 0 and "0: epoch   2 " not in out, out[-3000:]
  assert not os.path.exists(os.path.join(workdir, "report.json"))

  # The same command again resumes and finishes.
  again = subprocess.run(cmd, cwd=caller, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
  assert "0: epoch   1 " not in again.stdout and "0: epoch   2 " in again.stdout, again.stdout
  _same_report(caller, workdir)
  # `scancel` (SIGTERMs landing apart on the tasks): the processes agree on the batch to
  # stop at (resume.Preemption.agreed), tests/test_parallel.py.
