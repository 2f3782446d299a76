"""python -m jaxquant.main --config=configs/gru.py:quick [--mode=train|eval|predict].

Flags → config → train.train_and_evaluate, evaluate.evaluate or evaluate.predict.
Bad flags or config values stop the run before any work, with one line naming the key.
"""

import datetime
import os

from absl import flags
from ml_collections import config_flags

from jaxquant import cli
from jaxquant import config_check

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
flags.DEFINE_string("out_dir", None, "--mode=eval: where report.json/.md and the pictures go "
                    "(default the workdir; e.g. when it is read-only).")
flags.DEFINE_bool("force", False, "Resume a workdir whose checkpoints come from a different "
                  "config or data (normally refused), under the new config.")
flags.DEFINE_integer("step", None, "--mode=eval: checkpoint step (default: best by val F1).")


def parse_flags_and_saved_overrides(argv):
  """With --mode=eval/predict and no --config=FILE, --config.key=value overrides the
  run's saved config.json: absl knows no such flags then, so they pass to main."""
  saved = (any(a in ("--mode=eval", "--mode=predict") for a in argv)
           and not any(a.startswith("--config=") for a in argv))
  overrides = [a for a in argv[1:] if saved and a.startswith("--config.")]
  return cli.parse_flags([a for a in argv if a not in overrides]) + overrides


def main(argv):
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  if len(argv) > 1 + len(overrides):
    cli.fail(f"unexpected arguments {[a for a in argv[1:] if a not in overrides]}")
  if FLAGS.mode == "train":
    config = config_check.loaded(FLAGS.config)
    stamp = os.environ.get("JAXQUANT_RUN_STAMP") or f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    workdir = FLAGS.workdir or os.path.join("runs", f"{config.name}-{stamp}")
    try:  # (The print inside: a signal right after it is still the start-up's.)
      print(f"Workdir: {workdir}", flush=True)
      from jaxquant import train  # JAX and Orbax load after the flags are checked.
    except cli.Interrupted as e:
      raise cli.Interrupted(e.signame, f"{e.signame} during start-up: stopped before "
                            "training; nothing was saved by this run") from None
    try:
      train.train_and_evaluate(config, workdir, force=FLAGS.force)
    except train.Preempted:
      return  # The checkpoint is saved and the message printed: exit 0.
    return
  if not FLAGS.workdir:
    cli.fail(f"--mode={FLAGS.mode} needs --workdir=<run directory>")
  from jaxquant import evaluate
  if FLAGS.config is not None:  # An explicit --config=FILE replaces the saved one.
    config = config_check.loaded(FLAGS.config)
  else:
    config = config_check.with_overrides(evaluate.load_run_config(FLAGS.workdir), overrides)
  if FLAGS.mode == "eval":
    evaluate.evaluate(FLAGS.workdir, config=config, step=FLAGS.step, out_dir=FLAGS.out_dir)
  else:
    evaluate.predict(FLAGS.workdir, config=config, step=FLAGS.step, data_dir=FLAGS.data_dir,
                     out=FLAGS.out)


if __name__ == "__main__":
  cli.run(main, positional=True, flags_parser=parse_flags_and_saved_overrides)
