"""Chronological splits: no window or label of one split touches a bar of another."""

import numpy as np
from hypothesis import given, settings, strategies as st

from jaxquant.data import splits


def _footprints(ends, window, horizon):
  return [(t - window, t + horizon) for t in ends]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 3000), window=st.integers(1, 200), horizon=st.integers(1, 100),
       val=st.floats(0.01, 0.45), test=st.floats(0.01, 0.45), embargo=st.integers(0, 50))
def test_no_overlap_between_splits(n, window, horizon, val, test, embargo):
  segs = splits.segments(n, val, test, embargo)
  spans = {}
  for name in splits.SPLITS:
    ends = splits.window_ends(segs[name], window, horizon)
    fp = _footprints(ends, window, horizon)
    # Every bar a sample reads (features from t-window, label up to t+horizon) is in [0, n).
    assert all(0 <= a and b < n for a, b in fp)
    if len(fp):
      spans[name] = (min(a for a, _ in fp), max(b for _, b in fp))
  names = [s for s in splits.SPLITS if s in spans]
  for earlier, later in zip(names, names[1:]):
    # Chronological, and the footprints never meet; the embargo adds a gap on top.
    assert spans[earlier][1] < spans[later][0]
    assert spans[later][0] - spans[earlier][1] >= embargo + 1
    # Window ends are at least T + h apart across a boundary.
    last_end = spans[earlier][1] - horizon
    first_end = spans[later][0] + window
    assert first_end - last_end >= window + horizon


def test_window_ends_cover_the_segment_exactly():
  ends = splits.window_ends((100, 200), window=3, horizon=2)
  assert ends[0] == 103 and ends[-1] == 197
  assert np.all(np.diff(ends) == 1)
  assert len(splits.window_ends((0, 5), window=3, horizon=2)) == 0
