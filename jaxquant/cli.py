"""What every entry point shares: process setup, flag parsing and one-line errors.

Each `python -m jaxquant.<tool>` calls `run(main)`: bad flags, bad config values,
bad input (ValueError) and a full disk end the process with one `error:` line on
stderr and no traceback (JAXQUANT_DEBUG=1 keeps the libraries' own output), and so
does SIGTERM/SIGINT outside the phases that save and exit 0 themselves.
"""

import logging as std_logging
import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging

from jaxquant import io_utils


class Interrupted(BaseException):
  """SIGTERM/SIGINT where no handler of its own saves a resume point (start-up, an
  evaluation). A BaseException, as KeyboardInterrupt: `except Exception` in a
  library must not swallow it."""

  def __init__(self, signame, message=None):
    super().__init__(message or f"{signame}: stopped before finishing")
    self.signame = signame


_received = []  # Signals _interrupt raised for: a library callback may swallow the raise.


def _interrupt(signum, _):
  _received.append(signal.Signals(signum).name)
  raise Interrupted(_received[-1])


def raise_if_interrupted():
  """Raises Interrupted for a signal whose raise was swallowed (XLA's gc callback, for
  one, ignores exceptions): phases call this at their boundaries."""
  if _received:
    raise Interrupted(_received[-1])


def catch_interrupts():
  """SIGTERM/SIGINT raise Interrupted (the training loop swaps in its own handler)."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _interrupt)
  default_hook = sys.unraisablehook

  def unraisable(u):  # A raise a callback swallowed: raise_if_interrupted raises it again.
    if not isinstance(u.exc_value, Interrupted):
      default_hook(u)
  sys.unraisablehook = unraisable


def one_line(message):
  """The message on one line (the first of a multi-line exception text)."""
  text = str(message).strip()
  return text.splitlines()[0].strip() if text else text


def fail(message, code=1):
  """Exits with `error: <message>` on stderr.

  Orbax/TensorStore threads still winding down can print tracebacks during
  interpreter shutdown after a failed restore or save: they are silenced
  (JAXQUANT_DEBUG=1 shows them)."""
  sys.stderr.write(f"error: {one_line(message)}\n")
  sys.stderr.flush()
  if not os.environ.get("JAXQUANT_DEBUG"):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
  sys.exit(code)


def parse_flags(argv, code=1):
  """absl flag parsing that turns flag and config-override errors into one line (exit
  `code`). Dashed spellings of flag names are taken too (--time-format)."""
  cut = argv.index("--") if "--" in argv else len(argv)
  argv = [_underscored(a) for a in argv[:cut]] + argv[cut:]
  try:
    return flags.FLAGS(argv)
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
    fail(f"bad flag: {msg}", code)


def _underscored(arg):
  """--time-format=x → --time_format=x (config overrides and values are left alone)."""
  if not arg.startswith("--") or arg.startswith("--config"):
    return arg
  name, eq, value = arg[2:].partition("=")
  return "--" + name.replace("-", "_") + eq + value


def initialize_distributed(coordinator=None, num_processes=None, process_id=None):
  """Starts jax.distributed when this is a multi-process run; a no-op otherwise.

  Sources, in order: explicit arguments; JAXQUANT_COORDINATOR /
  JAXQUANT_NUM_PROCESSES / JAXQUANT_PROCESS_ID (set by launch.sh --nproc); SLURM
  (SLURM_NTASKS > 1: jax.distributed detects the cluster itself).
  """
  import jax
  env = os.environ
  coordinator = coordinator or env.get("JAXQUANT_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
        coordinator,
        num_processes=int(num_processes or env["JAXQUANT_NUM_PROCESSES"]),
        process_id=int(process_id if process_id is not None else env["JAXQUANT_PROCESS_ID"]))
  elif int(env.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()


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


def setup_process(distributed=True):
  """Once per process, before any JAX work: quiet logs, compile cache,
  file-size limits reported like a full disk, jax.distributed when launched so."""
  catch_interrupts()  # First: a signal during the imports below ends in one line too.
  from jaxquant import compile_cache  # JAX loads here, not for the tools that need none.
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  # A file-size limit (ulimit -f) then fails the write with EFBIG, reported like a
  # full disk, instead of killing the process mid-save.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  compile_cache.enable()
  if not os.environ.get("JAXQUANT_DEBUG"):
    _quiet_library_shutdown_noise()
  if distributed:
    initialize_distributed()


def _guarded(main, argv):
  try:
    return main(argv)
  except ValueError as e:  # ConfigError, IngestError, ShardError, bad runs and data.
    fail(e)
  except Interrupted as e:  # Nothing saved: exit as a shell reports a signal's kill.
    fail(e, 128 + getattr(signal, e.signame, signal.SIGTERM))
  except OSError as e:
    if not io_utils.is_disk_full(e):
      raise
    where = f" (writing {e.filename}; the file it replaces is intact)" if e.filename else ""
    fail(f"{e.strerror}{where}")


def run(main, distributed=True, positional=False, flags_parser=None, flag_error_code=1):
  """app.run(main) with process setup, one-line flag errors and one-line failures.

  Args:
    distributed: start jax.distributed when launched as several processes.
    positional: main takes positional arguments (else they are an error).
    flags_parser: argv → the arguments main gets (default parse_flags).
    flag_error_code: the exit code of a bad flag (the data tools use 2, bad input).
  """
  flags_parser = flags_parser or (lambda argv: parse_flags(argv, flag_error_code))
  def wrapped(argv):
    setup_process(distributed)
    if len(argv) > 1 and not positional:
      fail(f"unexpected arguments {argv[1:]}")
    result = _guarded(main, argv)
    # The work is done and written: a signal from here on (interpreter shutdown, where
    # Python drops its handlers) would only turn a finished run's exit 0 into a kill.
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, signal.SIG_IGN)
    return result
  app.run(wrapped, flags_parser=flags_parser)
