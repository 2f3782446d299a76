"""Shared test setup."""

import os
import sys

from absl import flags

# Tests import modules that define absl flags; grain workers and absl code read
# FLAGS, which must count as parsed under pytest.
flags.FLAGS.mark_as_parsed()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
