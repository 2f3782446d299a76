"""Entry point: python -m jaxquant.main --config=configs/gru.py:quick [--mode=train|eval].

Flags → config → train.train_and_evaluate or evaluate.evaluate. Bad flags or
config values stop the run before any work, with one line naming the key.
"""

import datetime
import logging as std_logging
import os
import signal
import sys

from absl import app
from absl import logging
from absl import flags
import ml_collections
from ml_collections import config_flags

from jaxquant import compile_cache
from jaxquant import config_check
from jaxquant import host_memory
from jaxquant import parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/gru.py or configs/gru.py:quick; override "
    "fields with --config.train.epochs=3.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>-<timestamp>).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                  "train (then evaluate the best checkpoint), eval (restore and evaluate) or "
                  "predict (per-window probabilities for --data_dir).")
flags.DEFINE_string("data_dir", None, "--mode=predict: shards to predict on (default: the "
                    "run's eval.data_dir, else its own data).")
flags.DEFINE_string("out", None, "--mode=predict: output .npz (a .csv twin is written too).")
flags.DEFINE_bool("force", False, "Resume a workdir whose checkpoints come from a different "
                  "config or data (normally refused), under the new config.")
flags.DEFINE_integer("step", None, "--mode=eval: checkpoint step (default: best by val F1).")


# --config.x=y given with --mode=eval/predict and no --config=FILE: overrides of the
# run's saved config.json, applied in main() (absl knows no such flags then).
_SAVED_CONFIG_OVERRIDES = []


def parse_flags(argv):
  """absl flag parsing that turns config-override errors into one clear line."""
  if (any(a in ("--mode=eval", "--mode=predict") for a in argv)
      and not any(a.startswith("--config=") for a in argv)):
    _SAVED_CONFIG_OVERRIDES.extend(a for a in argv[1:] if a.startswith("--config."))
    argv = [a for a in argv if not a.startswith("--config.")]
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e)
    if "Traceback" in msg:  # An exception inside get_config(): keep its last line.
      msg = msg.strip().splitlines()[-1]
    msg = msg.replace("\\'", "'").replace("\\n", " ").replace("\n", " ").strip()
    if msg[:1] == msg[-1:] and msg[:1] in "'\"":
      msg = msg[1:-1]
    if isinstance(e, (AttributeError, KeyError)):
      key = msg.split("'")[1] if msg.count("'") >= 2 else msg
      given = [a for a in argv[1:] if a.startswith("--config.") and key in a.split("=")[0]]
      where = given[0].split("=")[0] if given else "--config.*"
      msg = f"unknown config key {key!r} in {where}. {msg.split(chr(39) + ' ', 1)[-1]}"
    sys.exit(f"error: bad flag: {msg}")


def _fail(message):
  """Exits with one line on stderr. Orbax/TensorStore threads still winding down can
  print tracebacks during interpreter shutdown after a failed restore or save; they
  are silenced (JAXQUANT_DEBUG=1 shows them)."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  if not os.environ.get("JAXQUANT_DEBUG"):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
  sys.exit(1)


def _quiet_library_shutdown_noise():
  """After a failed Orbax save/restore, TensorStore callbacks race the closed asyncio
  loop ("Event loop is closed", unraisable) and asyncio logs the failed tasks ("Task
  exception was never retrieved"): tracebacks of an error we already report in one
  line. Drop those two; everything else goes through as before."""
  default_hook = sys.unraisablehook

  def unraisable(u):
    if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
      default_hook(u)
  sys.unraisablehook = unraisable
  std_logging.getLogger("asyncio").addFilter(
      lambda r: not r.getMessage().startswith("Task exception was never retrieved"))


def _config_or_exit():
  config = FLAGS.config
  if not isinstance(config, ml_collections.ConfigDict):
    # config_flags yields a placeholder object for a missing/unloadable file.
    given = [a for a in sys.argv if a.startswith("--config=")]
    sys.exit(f"error: could not load {given[0] if given else '--config'} "
             "(expected a Python file with get_config(), e.g. --config=configs/gru.py:quick)")
  return config


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  # A file-size limit (ulimit -f) then fails the write with EFBIG, reported like a
  # full disk, instead of killing the process mid-save.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  compile_cache.enable()
  host_memory.keep_freed_memory()
  if not os.environ.get("JAXQUANT_DEBUG"):
    _quiet_library_shutdown_noise()
  parallel.initialize_distributed()
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    if FLAGS.mode in ("eval", "predict"):
      if not FLAGS.workdir:
        sys.exit(f"error: --mode={FLAGS.mode} needs --workdir=<run directory>")
      from jaxquant import evaluate
      if FLAGS.config is not None:  # An explicit --config=FILE replaces the saved one.
        config = _config_or_exit()
      else:
        config = evaluate.load_config(FLAGS.workdir)
        for arg in _SAVED_CONFIG_OVERRIDES:
          if "=" not in arg:
            sys.exit(f"error: {arg}: expected --config.key=value")
          key, value = arg[len("--config."):].split("=", 1)
          config_check.set_value(config, key, value)
      config_check.validate(config)
      if FLAGS.mode == "eval":
        evaluate.evaluate(FLAGS.workdir, config=config, step=FLAGS.step)
      else:
        evaluate.predict(FLAGS.workdir, config=config, step=FLAGS.step,
                         data_dir=FLAGS.data_dir, out=FLAGS.out)
      return
    config = _config_or_exit()
    config_check.validate(config)
    stamp = os.environ.get("JAXQUANT_RUN_STAMP") or f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    workdir = FLAGS.workdir or os.path.join("runs", f"{config.name}-{stamp}")
    print(f"Workdir: {workdir}", flush=True)
    from jaxquant import train
    try:
      train.train_and_evaluate(config, workdir, force=FLAGS.force)
    except train.Preempted:
      return  # The checkpoint is saved and the message printed: exit 0.
  except (config_check.ConfigError, ValueError) as e:
    _fail(e)
  except OSError as e:
    from jaxquant import checkpoints
    if not checkpoints.is_disk_full(e):
      raise
    where = f" (writing {e.filename}; the file it replaces is intact)" if e.filename else ""
    _fail(f"{e.strerror}{where}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
