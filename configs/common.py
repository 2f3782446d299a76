"""What every config file shares: how its variant string is read, and the quick settings.

A config file's variant is the text after ':' in --config=configs/<file>.py:<variant>;
several combine with ',' (configs/resnet.py:34,quick, configs/transformer.py:quick,peft).
"""

import os

QUICK = "quick"
QUICK_SUFFIX = "-quick"  # Appended to the run name (and so to the default workdir).

_CONFIGS_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_arg(arg, file, *known):
  """Returns the set of variants named in `arg` ("quick", "34,quick", None or "").

  Args:
    arg: the variant string config_flags passes to get_config (None without ':').
    file: the calling config file's __file__, for the error message.
    *known: the variants that file has.

  Raises:
    ValueError: for a variant not in `known`, naming it and the file.
  """
  named = [v for v in (arg or "").split(",") if v]
  unknown = [v for v in named if v not in known]
  if unknown:
    path = os.path.relpath(os.path.abspath(file), _CONFIGS_DIR).replace(os.sep, "/")
    path = file if path.startswith("../") else "configs/" + path  # A config kept elsewhere.
    listed = ", ".join(known) if known else "none"
    combine = "; combine with ','" if len(known) > 1 else ""
    raise ValueError(f"unknown variant {unknown[0]!r} of {path} (known: {listed}{combine})")
  return frozenset(named)


def apply_quick(c):
  """The quick variant's settings every model shares: minutes on a 2-core CPU.

  Model sizes stay in each config file (they are model-specific).
  """
  c.name += QUICK_SUFFIX
  c.data.window = 64
  c.train.epochs = 8
  c.train.batch_size = 128
  c.train.lr = 2e-3
  c.train.patience = 4
  return c
