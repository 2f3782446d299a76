"""Fault-injection soak: kill runs at random points and corrupt their input shards.

    python benchmarks/soak.py                      # 12 kill trials + 300 corrupt inputs
    python benchmarks/soak.py --kills=4 --corruptions=60 --out=   # quicker, no docs update
    python benchmarks/soak.py --only=corrupt       # part 2 alone (on a market of its own)
    python benchmarks/soak.py --kills=0 --corruptions=0 --bit_flips=3 --disk_full=1 \
        --concurrent=1 --term_startup=1 --term_eval=1 --out=   # each hostile trial once

Part 1, kills. A tiny GRU run (2 instruments x 6 days, T=16, 3 epochs of batch
32) is trained once uninterrupted as the reference. Each trial then runs the same
command and interrupts it 1-3 times — SIGTERM, SIGINT or SIGKILL at a random time
after training starts, or SIGKILL the moment a checkpoint directory is being
written ("KILL@save") — re-running the same command after each interruption, and
finally lets it finish. A trial counts as identical when every epoch's metrics
(train/val loss, val F1, AUC, threshold, step), the test report and the final
checkpoint's state (parameters, optimizer state, step: every array bitwise) match
the reference exactly; a run that does not end within its timeout counts as a hang.
Only trials that were really interrupted count: a signal that arrives after the
run has finished (exit 0 without "saved a checkpoint"), or a KILL@save that finds
no save to kill, interrupts nothing; a trial with no real interruption is listed
as "not interrupted" and left out of the identical count, and trials go on until
--kills of them were interrupted (signal times are drawn within the reference's
training time, so most are).

Part 2, corrupt inputs. Copies of the run's shard directory (Parquet shards and
the manifest.json recording their sha256) get one random corruption in one shard:
1-8 random bit flips, a truncation at a random length, a zeroed 64-byte span,
trailing garbage, an empty file, or a newer format version (the file rewritten
with the next version in its metadata and its manifest entry updated, as a newer
jaxquant would write it). Each copy is loaded through the training pipeline in-process
(`build_dataset` and every window of every split, under a 60 s alarm) and
classified: a clear error (a ValueError naming the corrupted file), an unclear
error (any other exception, or one that does not name the file), garbage (no
error, but data that differs from the clean copy), harmless (no error and data
identical: should never happen, every byte is checksummed) or a hang. A few copies
also go through the command line (`python -m jaxquant.main`), which must exit
non-zero with one `error:` line and no traceback.

Part 3, hostile conditions (one row each, every trial re-run or checked to the end):
- bit flips in a checkpoint: copies of the reference run's best checkpoint get one random
  bit flipped in one of its files; restoring that step (`CheckpointStore.restore`) must
  fail with a one-line message naming the step and the file ("detected"); every
  (--cli_every / 2)-th copy also goes through `--mode=eval --step=N`, which must exit
  non-zero with one `error:` line naming them, and no traceback.
- disk full with TensorBoard on: the run under a file-size limit (RLIMIT_FSIZE, a random
  size; writes then fail with EFBIG, as on a full disk) must end, non-zero, with one
  `error:` line saying so and no traceback, not hang; "limit not reached" when it finished.
- two runs on one workdir: a second run started while the first trains must be refused
  with one `error:` line; the first must finish identical to the reference.
- SIGTERM during start-up (before training starts) and during the final evaluation: the
  run must exit with one line naming SIGTERM and no traceback; the same command again
  must finish identical to the reference.

The table goes to stdout and, with --out (default docs/robustness.md), into that
file's "## Soak" section. Last line: `identical=<a>/<b> clear_errors=<c>/<d> hangs=<e> hostile=<f>/<g>`
(b: every trial but the "not interrupted" ones; f/g: hostile trials that behaved, of those
that tested something: "limit not reached" and "had finished" are left out).
"""

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

KEYS = ("train_loss", "val_loss", "val_f1", "val_roc_auc", "val_threshold", "step")
CORRUPTIONS = ("bit_flips", "truncate", "zero_span", "trailing_garbage", "empty", "newer_version")
TINY = ("--config.data.synth.days=6", "--config.data.synth.instruments=2",
        "--config.data.window=16", "--config.model.hidden=8", "--config.train.epochs=3",
        "--config.train.batch_size=32", "--config.eval.bootstrap=0",
        "--config.eval.tensorboard=false")


def run_command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "jaxquant.main", "--config=configs/gru.py:quick",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}", *TINY, *extra]


def final_state(workdir):
  """{leaf path: (dtype, shape, sha256 of its bytes)} of the state in the run's latest
  checkpoint (parameters, optimizer moments and count, step): equal dicts are equal
  arrays, bit for bit. Restored as saved (no target tree), so no model is built."""
  import jax
  from jaxquant import checkpoints as checkpoints_lib
  store = checkpoints_lib.CheckpointStore(os.path.join(workdir, "checkpoints"))
  try:
    state, _ = store.restore(store.latest_step(), None)
  finally:
    store.close()
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    out[jax.tree_util.keystr(path)] = (str(a.dtype), a.shape,
                                       hashlib.sha256(a.tobytes()).hexdigest())
  return out


def results(workdir):
  """(per-epoch metrics, test metrics, final state) of a finished run: what must match
  exactly (the state bitwise, see `final_state`)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, "report.json")) as f:
    test = json.load(f)["test"]
  return ([{k: r[k] for k in KEYS} for r in rows],
          {k: test[k] for k in ("roc_auc", "pr_auc", "f1", "confusion")},
          final_state(workdir))


def interrupted(code, out):
  """Whether a run that `_interrupt` returned (exit code, output) was interrupted: killed
  (a non-zero code) or saved and exited on SIGTERM/SIGINT. Exit 0 without a save means
  the run had finished before the signal (or KILL@save found no save to kill)."""
  return code != 0 or "saved a checkpoint" in out


def _finish(cmd, timeout):
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  if p.returncode != 0:
    raise RuntimeError(f"run failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
  return p.stdout


def _training_seconds(cmd, timeout):
  """Runs `cmd` to the end; the seconds from training's start (as _interrupt times it)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  t0 = time.time()
  for line in proc.stdout:
    if line.startswith("Model "):
      t0 = time.time()
  if proc.wait(timeout=timeout) != 0:
    raise RuntimeError(f"reference run failed (exit {proc.returncode})")
  return time.time() - t0


def _interrupt(cmd, mode, delay, timeout):
  """Starts `cmd` and interrupts it: `mode` is a signal name, or KILL@save."""
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  for line in proc.stdout:  # Wait for training to start (data and compile done).
    lines.append(line)
    if line.startswith(("Model ", "Already stopped")):
      break
  if mode == "KILL@save":
    ckpt = os.path.join(cmd[4].split("=", 1)[1], "checkpoints")

    def watch():
      deadline = time.time() + timeout
      while proc.poll() is None and time.time() < deadline:
        try:
          if any("tmp" in n for n in os.listdir(ckpt)):
            proc.kill()
            return
        except OSError:
          pass
        time.sleep(0.001)
    threading.Thread(target=watch, daemon=True).start()
  else:
    def send():
      time.sleep(delay)
      if proc.poll() is None:
        proc.send_signal(getattr(signal, mode))
    threading.Thread(target=send, daemon=True).start()
  try:
    out = proc.stdout.read()
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  return proc.returncode, "".join(lines) + out


def kill_trials(n, root, rng, timeout=300, log=print):
  """Part 1. Returns (rows, reference seconds)."""
  data = os.path.join(root, "data")
  ref_dir = os.path.join(root, "reference")
  t0 = time.time()
  train_seconds = _training_seconds(run_command(ref_dir, data), timeout)
  ref_seconds = time.time() - t0
  expected = results(ref_dir)
  rows = []
  # Until n trials were really interrupted (a signal can still land after the end).
  for trial in range(3 * n):
    if sum(r["outcome"] != "not interrupted" for r in rows) == n:
      break
    workdir = os.path.join(root, f"trial{trial}")
    cmd = run_command(workdir, data)
    plan = [rng.choice(["SIGTERM", "SIGINT", "SIGKILL", "KILL@save"])
            for _ in range(rng.randint(1, 3))]
    events, outcome, hits = [], None, 0
    try:
      for mode in plan:
        delay = rng.uniform(0.0, 0.8 * train_seconds)
        code, out = _interrupt(cmd, mode, delay, timeout)
        hit = interrupted(code, out)
        hits += hit
        events.append(f"{mode}" + ("" if mode == "KILL@save" else f"@{delay:.1f}s")
                      + f"→{code}" + ("" if hit else " (had finished)"))
      _finish(cmd, timeout)
      outcome = "identical" if results(workdir) == expected else "DIFFERENT"
      if outcome == "identical" and not hits:
        outcome = "not interrupted"
    except subprocess.TimeoutExpired:
      outcome = "HANG"
    except Exception as e:  # Reported in the table, not raised: a soak counts failures.
      outcome = f"FAILED: {str(e)[:200]}"
    rows.append({"trial": trial, "interruptions": ", ".join(events), "outcome": outcome,
                 "interrupted": hits})
    log(f"kill trial {trial}: {rows[-1]['interruptions']} → {outcome}")
    shutil.rmtree(workdir, ignore_errors=True)
  return rows, ref_seconds


def corrupt(path, kind, rng):
  """Applies one corruption of `kind` to the file at `path`; returns a description."""
  with open(path, "rb") as f:
    data = bytearray(f.read())
  if kind == "bit_flips":
    flips = [rng.randrange(len(data) * 8) for _ in range(rng.randint(1, 8))]
    for bit in flips:
      data[bit // 8] ^= 1 << (bit % 8)
    what = f"{len(flips)} bit flip(s) at byte(s) {sorted({b // 8 for b in flips})[:4]}"
  elif kind == "truncate":
    size = rng.randrange(len(data))
    what = f"truncated to {size} of {len(data)} bytes"
    data = data[:size]
  elif kind == "zero_span":
    at = rng.randrange(max(len(data) - 64, 1))
    data[at:at + 64] = bytes(len(data[at:at + 64]))
    what = f"64 bytes zeroed at {at}"
  elif kind == "trailing_garbage":
    extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    data += extra
    what = f"{len(extra)} garbage bytes appended"
  elif kind == "empty":
    data = bytearray()
    what = "emptied"
  elif kind == "newer_version":
    data, version = _newer_version(path)
    what = f"rewritten as format v{version}, manifest updated"
  else:
    raise ValueError(kind)
  if kind == "zero_span" and data == bytearray(open(path, "rb").read()):
    what += " (already zero)"
  with open(path, "wb") as f:
    f.write(bytes(data))
  if kind == "newer_version":  # A newer jaxquant writes a manifest that matches its files.
    manifest = os.path.join(os.path.dirname(path), "manifest.json")
    m = json.load(open(manifest))
    m["shard_files"][os.path.basename(path)] = {
        "bytes": len(data), "sha256": hashlib.sha256(bytes(data)).hexdigest()}
    with open(manifest, "w") as f:
      json.dump(m, f)
  return what


def _newer_version(path):
  """The bytes of the Parquet shard at `path` with its format version one higher (written
  with pyarrow alone, not with the code under test), and that version."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  with pq.ParquetFile(path) as pf:
    table, kv = pf.read(), dict(pf.metadata.metadata)
  version = int(kv[b"jaxquant.format_version"]) + 1
  kv[b"jaxquant.format_version"] = str(version).encode()
  sink = pa.BufferOutputStream()
  pq.write_table(table.replace_schema_metadata(kv), sink, compression="zstd",
                 write_page_checksum=True)
  return bytearray(sink.getvalue().to_pybytes()), version


def _load_everything(data_dir, data_config):
  """All that training reads from a shard directory: features, labels, every window."""
  from jaxquant.data import dataset as dataset_lib
  ds = dataset_lib.build_dataset(data_config, data_dir)
  out = {"features": ds.features}
  for name, split in ds.splits.items():
    out[f"{name}_labels"] = split.labels
    out[f"{name}_windows"] = ds.windows(name, np.arange(len(split)))
  return out


class _Alarm(Exception):
  pass


def corruption_trials(n, root, rng, cli_every=25, log=print):
  """Part 2. Returns rows, one per corrupted copy."""
  from configs import gru
  data_config = gru.get_config("quick").data
  data_config.source = "shards"
  data_config.window = 16
  clean_dir = os.path.join(root, "data")
  clean = _load_everything(clean_dir, data_config)
  from jaxquant.data import shards as shards_lib
  shards = sorted(f for f in os.listdir(clean_dir) if f.endswith(shards_lib.SHARD_SUFFIX))

  def on_alarm(*_):
    raise _Alarm()
  old = signal.signal(signal.SIGALRM, on_alarm)
  rows = []
  try:
    for i in range(n):
      kind = CORRUPTIONS[i % len(CORRUPTIONS)]
      copy = os.path.join(root, f"corrupt{i}")
      shutil.copytree(clean_dir, copy)
      name = rng.choice(shards)
      what = corrupt(os.path.join(copy, name), kind, rng)
      signal.alarm(60)
      try:
        got = _load_everything(copy, data_config)
        same = all(np.array_equal(got[k], clean[k]) for k in clean) and got.keys() == clean.keys()
        outcome = "HARMLESS (identical data)" if same else "GARBAGE (no error, wrong data)"
        message = ""
      except _Alarm:
        outcome, message = "HANG", ""
      except ValueError as e:
        message = str(e)
        outcome = "clear error" if name in message else "UNCLEAR (file not named)"
      except Exception as e:  # Anything but our ValueErrors is a defect: count it.
        message = f"{type(e).__name__}: {e}"
        outcome = "UNCLEAR (unexpected exception)"
      finally:
        signal.alarm(0)
      cli = ""
      if cli_every and i % cli_every == 0:
        cli = _cli_check(copy, root)
        if cli != "one line":
          outcome = f"UNCLEAR (command line: {cli})"
      rows.append({"i": i, "kind": kind, "file": name, "corruption": what, "outcome": outcome,
                   "message": message.splitlines()[0][:200] if message else "", "cli": cli})
      if not outcome.startswith("clear"):
        log(f"corruption {i}: {kind} {name} {what} → {outcome} {message[:200]}")
      shutil.rmtree(copy, ignore_errors=True)
  finally:
    signal.signal(signal.SIGALRM, old)
  return rows


def _cli_check(data_dir, root):
  """The command line on a corrupt directory: 'one line' when it fails cleanly."""
  cmd = run_command(os.path.join(root, "cli-run"), data_dir, "--config.data.source=shards")
  try:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  except subprocess.TimeoutExpired:
    return "hang"
  finally:
    shutil.rmtree(os.path.join(root, "cli-run"), ignore_errors=True)
  lines = p.stderr.strip().splitlines()
  if p.returncode == 0:
    return "exit 0"
  if "Traceback" in p.stderr or not lines or not lines[-1].startswith("error: "):
    return "traceback or no error line"
  return "one line"


def _verdict(code, stderr):
  """'one line' when a run failed with exactly one `error:` line and no traceback."""
  errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
  if code == 0:
    return "exit 0"
  if "Traceback" in stderr:
    return "traceback"
  return "one line" if len(errors) == 1 else f"{len(errors)} error lines"


def _error_line(stderr):
  return next((l for l in stderr.splitlines() if l.startswith("error: ")), "")


def _with_alarm(fn, seconds=60):
  """fn() under an alarm: raises _Alarm when it runs past `seconds`."""
  def on_alarm(*_):
    raise _Alarm()
  old = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(seconds)
  try:
    return fn()
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def bit_flip_trials(n, root, ref_dir, rng, cli_every=10, log=print):
  """Part 3: one bit flipped in one file of the best checkpoint, per copy of the run."""
  from jaxquant import checkpoints as checkpoints_lib
  step = json.load(open(os.path.join(ref_dir, "report.json")))["best_step"]
  rows = []
  for i in range(n):
    copy = os.path.join(root, f"flip{i}")
    shutil.copytree(ref_dir, copy)
    step_dir = os.path.join(copy, "checkpoints", str(step))
    files = sorted(os.path.relpath(os.path.join(d, f), step_dir)
                   for d, _, fs in os.walk(step_dir) for f in fs
                   if os.path.getsize(os.path.join(d, f)))
    rel = rng.choice(files)  # Each file as likely as any other: small metadata files too.
    path = os.path.join(step_dir, rel)
    data = bytearray(open(path, "rb").read())
    bit = rng.randrange(len(data) * 8)
    data[bit // 8] ^= 1 << (bit % 8)
    with open(path, "wb") as f:
      f.write(bytes(data))
    store = checkpoints_lib.CheckpointStore(os.path.join(copy, "checkpoints"))
    message = ""
    try:
      _with_alarm(lambda: store.restore(step, None))
      outcome = "UNDETECTED (restored)"
    except _Alarm:
      outcome = "HANG"
    except Exception as e:  # Whatever it raises must name the step and the file.
      message = f"{type(e).__name__}: {e}"
      one = "\n" not in str(e).strip()
      outcome = ("detected" if one and f"step {step}" in message and rel in message
                 else "UNCLEAR (step or file not named, or several lines)")
    finally:
      try:
        store.close()
      except Exception:  # Closing after a failed restore: not what is measured.
        pass
    cli = ""
    if cli_every and i % cli_every == 0:
      try:
        p = subprocess.run([sys.executable, "-m", "jaxquant.main", "--mode=eval",
                            f"--workdir={copy}", f"--step={step}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        cli, line = _verdict(p.returncode, p.stderr), _error_line(p.stderr)
        if cli == "one line" and not (f"step {step}" in line and rel in line):
          cli = f"error line names not the step and the file: {line[:160]}"
      except subprocess.TimeoutExpired:
        cli = "hang"
      if cli != "one line":
        outcome = f"UNCLEAR (command line: {cli})"
    rows.append({"kind": "bit_flip", "what": f"{rel} bit {bit}", "outcome": outcome,
                 "message": message.strip().splitlines()[0][:200] if message else ""})
    if outcome != "detected":
      log(f"bit flip {i}: {rel} bit {bit} → {outcome} {message[:200]}")
    shutil.rmtree(copy, ignore_errors=True)
  return rows


# Sets RLIMIT_FSIZE and execs the command (no preexec_fn: this process runs JAX threads).
_FSIZE_LIMITED = ("import os, resource, sys; n = int(sys.argv[1]); "
                  "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                  "os.execv(sys.argv[2], sys.argv[2:])")


# What a full-disk line says: the errno texts of ENOSPC, EDQUOT and EFBIG, or ours.
_FULL_WORDS = ("no space", "disk", "quota", "file too large", "size limit")


def disk_full_trials(n, root, data, rng, timeout=300, log=print):
  """Part 3: training with TensorBoard on under a file-size limit of a random size."""
  rows = []
  for i in range(n):
    workdir = os.path.join(root, f"full{i}")
    size = int(2 ** rng.uniform(10, 17))  # 1 .. 128 KiB per file (the run's largest: more).
    cmd = run_command(workdir, data, "--config.eval.tensorboard=true")
    message = ""
    try:
      p = subprocess.run([sys.executable, "-c", _FSIZE_LIMITED, str(size), *cmd], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
      verdict, message = _verdict(p.returncode, p.stderr), _error_line(p.stderr)
      if p.returncode == 0:
        outcome = "limit not reached"
      elif verdict == "one line" and any(w in message.lower() for w in _FULL_WORDS):
        outcome = "clear error"
      else:
        outcome = f"UNCLEAR ({verdict}, exit {p.returncode})"
        message = message or p.stderr.strip()[-200:]
    except subprocess.TimeoutExpired:
      outcome = "HANG"
    rows.append({"kind": "disk_full", "what": f"file size limit {size:,} bytes",
                 "outcome": outcome, "message": message[:200]})
    log(f"disk full {i}: limit {size:,} B → {outcome} {message[:200]}")
    shutil.rmtree(workdir, ignore_errors=True)
  return rows


def _until(proc, prefixes):
  """Lines of `proc` up to and including the first that starts with one of `prefixes`."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefixes):
      break
  return lines


def concurrent_trials(n, root, data, expected, timeout=300, log=print):
  """Part 3: a second run on the workdir of a run that is training."""
  rows = []
  for i in range(n):
    workdir = os.path.join(root, f"twice{i}")
    cmd = run_command(workdir, data)
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    message = ""
    try:
      _until(first, ("Model ",))
      second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
      verdict, message = _verdict(second.returncode, second.stderr), _error_line(second.stderr)
      first.stdout.read()
      first.wait(timeout=timeout)
      same = first.returncode == 0 and results(workdir) == expected
      if verdict != "one line":
        outcome = f"NOT REFUSED ({verdict})"
      else:
        outcome = "refused" + ("" if same else "; FIRST RUN DIFFERENT or failed")
    except subprocess.TimeoutExpired:
      outcome = "HANG"
    finally:
      if first.poll() is None:
        first.kill()
        first.wait()
    rows.append({"kind": "concurrent", "what": "second run while the first trains",
                 "outcome": outcome, "message": message[:200]})
    log(f"concurrent {i}: → {outcome} {message[:200]}")
    shutil.rmtree(workdir, ignore_errors=True)
  return rows


# Lines after which a signal lands in start-up (before the training loop) or in the final
# evaluation (the last epoch's line: its checkpoint is saved, the evaluation starts; the
# "== <run>" summary is printed only once the report is written).
TERM_AFTER = {"term_startup": ("Workdir: ", "Data ", "Model "), "term_eval": ("epoch   3 ",)}


def term_trials(kind, n, root, data, expected, rng, timeout=300, log=print):
  """Part 3: SIGTERM at a random point of start-up or of the final evaluation, then the
  same command to the end."""
  rows = []
  for i in range(n):
    workdir = os.path.join(root, f"{kind}{i}")
    cmd = run_command(workdir, data)
    after = rng.choice(TERM_AFTER[kind][:2] if kind == "term_startup" else TERM_AFTER[kind])
    delay = rng.uniform(0.0, 0.5)
    err_path = os.path.join(root, f"{kind}{i}.err")
    message, proc = "", None
    try:
      with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        out = "".join(_until(proc, (after,)))
        time.sleep(delay)
        if proc.poll() is None:
          proc.send_signal(signal.SIGTERM)
        out += proc.stdout.read()
        proc.wait(timeout=timeout)
      stderr = open(err_path).read()
      said = [l for l in (out + stderr).splitlines() if "SIGTERM" in l]
      message = said[0] if said else ""
      if "saved a checkpoint" in out or (proc.returncode == 0 and not said):
        outcome = "missed (training, or had finished)"
      elif "Traceback" in stderr or len(said) != 1:
        outcome = f"NOT ONE LINE (exit {proc.returncode}, {len(said)} SIGTERM lines" + (
            ", traceback)" if "Traceback" in stderr else ")")
        message = message or stderr.strip()[-200:]
      else:
        outcome = f"one line (exit {proc.returncode})"
      _finish(cmd, timeout)
      if results(workdir) != expected:
        outcome += "; re-run DIFFERENT"
      else:
        outcome += "; re-run identical"
    except subprocess.TimeoutExpired:
      outcome = "HANG"
    except Exception as e:  # Reported in the table, not raised: a soak counts failures.
      outcome = f"FAILED: {str(e)[:200]}"
    finally:
      if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    rows.append({"kind": kind, "what": f"after '{after.strip()}' +{delay:.2f}s",
                 "outcome": outcome, "message": message[:200]})
    log(f"{kind} {i}: after {after.strip()!r} +{delay:.2f}s → {outcome} {message[:200]}")
    shutil.rmtree(workdir, ignore_errors=True)
  return rows


HOSTILE_GOOD = {"bit_flip": "detected", "disk_full": "clear error", "concurrent": "refused",
                "term_startup": "one line", "term_eval": "one line"}
HOSTILE_UNTESTED = ("limit not reached", "missed")
HOSTILE_TITLES = {"bit_flip": "bit flip in the best checkpoint",
                  "disk_full": "disk full (file-size limit), TensorBoard on",
                  "concurrent": "second run on a training workdir",
                  "term_startup": "SIGTERM during start-up",
                  "term_eval": "SIGTERM during the final evaluation"}


def hostile_counts(rows):
  """(behaved, tested): rows whose outcome is the good one (and, for SIGTERM, whose re-run
  was identical), of those that tested something."""
  tested = [r for r in rows if not r["outcome"].startswith(HOSTILE_UNTESTED)]
  good = [r for r in tested if r["outcome"].startswith(HOSTILE_GOOD[r["kind"]])
          and "DIFFERENT" not in r["outcome"]]
  return len(good), len(tested)


def hostile_markdown(rows):
  lines = [f"### Hostile conditions ({len(rows)} trials)", "",
           "| condition | tried | behaved | not tested | outcomes |", "|---|---:|---:|---:|---|"]
  for kind, title in HOSTILE_TITLES.items():
    rs = [r for r in rows if r["kind"] == kind]
    if not rs:
      continue
    good, tested = hostile_counts(rs)
    outcomes = {}
    for r in rs:
      outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    lines.append(f"| {title} | {len(rs)} | {good} | {len(rs) - tested} | "
                 + "; ".join(f"{k} ×{v}" for k, v in outcomes.items()) + " |")
  examples = {}
  for r in rows:
    if r["message"] and r["kind"] not in examples:
      examples[r["kind"]] = r["message"]
  lines += ["", "A message of each kind:", ""]
  lines += [f"- {HOSTILE_TITLES[k]}: `{m}`" for k, m in examples.items()]
  return lines


def to_markdown(kills, ref_seconds, corruptions, command, seconds, load, hostile=()):
  lines = [f"Command: `{command}` ({seconds:.0f} s). Machine: {platform.machine()}, "
           f"{os.cpu_count()} cores, load average {load[0]:.1f} at the start, "
           f"{load[1]:.1f} at the end.", ""]
  if kills:
    hit = [r for r in kills if r["outcome"] != "not interrupted"]
    same = sum(r["outcome"] == "identical" for r in hit)
    hangs = sum(r["outcome"] == "HANG" for r in kills)
    lines += [f"### Kill and resume ({len(kills)} trials; the uninterrupted run takes "
              f"{ref_seconds:.0f} s)", "",
              f"**{same}/{len(hit)} interrupted trials finished identical to the "
              "uninterrupted run (every epoch's metrics, the test report, and the final "
              f"parameters and optimizer state bit for bit); {hangs} hung; "
              f"{len(kills) - len(hit)} not interrupted (every signal came after the run "
              "had finished), not counted.** Exit codes after the arrow: 0 = saved and "
              "exited cleanly (\"(had finished)\": the run was over, nothing interrupted), "
              "-9 = SIGKILL, -15 or -2 = SIGTERM or SIGINT outside the training loop.", "",
              "| trial | interruptions | outcome |", "|---:|---|---|"]
    lines += [f"| {r['trial']} | {r['interruptions']} | {r['outcome']} |" for r in kills]
    lines.append("")
  if corruptions:
    lines += [f"### Corrupt shards ({len(corruptions)} copies, one corruption each)", "",
              "| corruption | tried | clear error | unclear | garbage | harmless | hang |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for kind in CORRUPTIONS:
      rs = [r for r in corruptions if r["kind"] == kind]
      count = lambda p: sum(r["outcome"].startswith(p) for r in rs)
      lines.append(f"| {kind} | {len(rs)} | {count('clear')} | {count('UNCLEAR')} | "
                   f"{count('GARBAGE')} | {count('HARMLESS')} | {count('HANG')} |")
    clis = [r for r in corruptions if r["cli"]]
    examples = {}
    for r in corruptions:
      if r["message"] and r["kind"] not in examples:
        examples[r["kind"]] = r["message"]
    lines += ["", f"Command-line checks: {sum(r['cli'] == 'one line' for r in clis)}/"
              f"{len(clis)} exited non-zero with one `error:` line and no traceback.", "",
              "A message of each kind:", ""]
    lines += [f"- {k}: `{m}`" for k, m in examples.items()]
  if hostile:
    lines += ([""] if corruptions or kills else []) + hostile_markdown(hostile)
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=12,
                      help="kill/resume trials that interrupt a live run (at most 3x tried)")
  parser.add_argument("--corruptions", type=int, default=300, help="corrupted shard copies")
  parser.add_argument("--cli_every", type=int, default=25,
                      help="also run the command line on every n-th copy (0 = never)")
  parser.add_argument("--bit_flips", type=int, default=50,
                      help="copies of the run with one bit flipped in its best checkpoint")
  parser.add_argument("--disk_full", type=int, default=3,
                      help="runs with TensorBoard on under a random file-size limit")
  parser.add_argument("--concurrent", type=int, default=2,
                      help="second runs started on the workdir of a training run")
  parser.add_argument("--term_startup", type=int, default=3, help="SIGTERM during start-up")
  parser.add_argument("--term_eval", type=int, default=3,
                      help="SIGTERM during the final evaluation")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--only", choices=("corrupt",), default=None,
                      help="corrupt: part 2 alone, on a market it generates (2 instruments "
                      "x 6 days, as the runs'); the docs are left alone unless --out is given")
  parser.add_argument("--out", default=None,
                      help="markdown file whose '## Soak' section is replaced ('' = none; "
                      "default docs/robustness.md, none with --only)")
  args = parser.parse_args()
  if args.out is None:
    args.out = "" if args.only else os.path.join(ROOT, "docs", "robustness.md")
  if args.only == "corrupt":
    return corrupt_only(args)
  rng = random.Random(args.seed)
  t0, load0 = time.time(), os.getloadavg()[0]
  root = tempfile.mkdtemp(prefix="jaxquant-soak-")
  try:
    # (The reference run also generates the data the corruptions start from.)
    kills, ref_seconds = kill_trials(args.kills, root, rng)
    corruptions = corruption_trials(args.corruptions, root, rng, cli_every=args.cli_every)
    data, ref_dir = os.path.join(root, "data"), os.path.join(root, "reference")
    expected = results(ref_dir)
    hostile = bit_flip_trials(args.bit_flips, root, ref_dir, rng,
                              cli_every=max(args.cli_every // 2, 1) if args.cli_every else 0)
    hostile += disk_full_trials(args.disk_full, root, data, rng)
    hostile += concurrent_trials(args.concurrent, root, data, expected)
    for kind in ("term_startup", "term_eval"):
      hostile += term_trials(kind, getattr(args, kind), root, data, expected, rng)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  command = "python benchmarks/soak.py" + "".join(
      f" --{k}={getattr(args, k)}" for k in ("kills", "corruptions", "bit_flips", "disk_full",
                                             "concurrent", "term_startup", "term_eval", "seed")
      if getattr(args, k) != parser.get_default(k))
  md = to_markdown(kills, ref_seconds, corruptions, command, time.time() - t0,
                   (load0, os.getloadavg()[0]), hostile)
  print(md)
  if args.out:
    from jaxquant import io_utils
    io_utils.replace_markdown_section(args.out, "## Soak", md, title="Robustness")
  hit = [r for r in kills if r["outcome"] != "not interrupted"]
  same = sum(r["outcome"] == "identical" for r in hit)
  clear = sum(r["outcome"].startswith("clear") for r in corruptions)
  hangs = sum(r["outcome"] == "HANG" for r in kills + corruptions + hostile)
  good, tested = hostile_counts(hostile)
  print(f"identical={same}/{len(hit)} clear_errors={clear}/{len(corruptions)} hangs={hangs} "
        f"hostile={good}/{tested}")



def corrupt_only(args):
  """`--only=corrupt`: part 2 on a freshly generated market, its table and count line."""
  from jaxquant.data import synth
  rng = random.Random(args.seed)
  t0, load0 = time.time(), os.getloadavg()[0]
  root = tempfile.mkdtemp(prefix="jaxquant-soak-")
  try:
    synth.write_market(os.path.join(root, "data"), instruments=2, days=6, signal=1.0, seed=0,
                       progress=False)
    corruptions = corruption_trials(args.corruptions, root, rng, cli_every=args.cli_every)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  command = f"python benchmarks/soak.py --only=corrupt --corruptions={args.corruptions}" + (
      f" --seed={args.seed}" if args.seed else "")
  md = to_markdown([], 0.0, corruptions, command, time.time() - t0,
                   (load0, os.getloadavg()[0]))
  print(md)
  if args.out:
    from jaxquant import io_utils
    io_utils.replace_markdown_section(args.out, "## Soak", md, title="Robustness")
  clear = sum(r["outcome"].startswith("clear") for r in corruptions)
  hangs = sum(r["outcome"] == "HANG" for r in corruptions)
  print(f"clear_errors={clear}/{len(corruptions)} hangs={hangs}")

if __name__ == "__main__":
  main()
