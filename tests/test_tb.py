"""TensorBoard scalars (jaxquant/tb.py): flattened names, readable event files, off switch."""

import glob
import logging
import os
import struct
import sys

import numpy as np
import pytest

from jaxquant import tb as tb_lib


def test_flatten_scalars():
  flat = tb_lib.flatten_scalars({"train": {"loss": 0.5, "nan": float("nan")}, "load": [0.1, 0.9],
                                 "arr": np.array([[1, 2]]), "flag": True, "name": "x",
                                 "none": None, "np": np.float32(2.5), "inf": np.inf})
  assert flat == {"train/loss": 0.5, "load/0": 0.1, "load/1": 0.9, "arr/0/0": 1.0,
                  "arr/0/1": 2.0, "flag": 1.0, "np": 2.5}


def read_events(path):
  """Scalars of a TFRecord events file, parsed with tensorboardX's own protobufs."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4  # length, its crc, payload, payload crc
    for v in event.summary.value:
      out.setdefault(v.tag, []).append((event.step, v.simple_value))
  assert pos == len(data)
  return out


@pytest.fixture
def fast_tensorboardx(monkeypatch):
  """Imports tensorboardX without torch (5 s on 2 cores) unless torch is already loaded.

  tensorboardX only uses torch to accept torch tensors, which jaxquant never passes.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    monkeypatch.setitem(sys.modules, "torch", None)
    import tensorboardX  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def write_some(logdir):
  w = tb_lib.TBWriter(str(logdir))
  assert w.active
  assert w.scalars(1, {"train": {"loss": 0.5}, "moe": {"load": [0.25, 0.75]}, "bad": np.nan}) == 3
  w.scalars(2, {"train": {"loss": 0.25}})
  w.flush()
  w.close()
  w.scalars(3, {"train": {"loss": 0.1}})  # after close: a no-op, not an error
  files = glob.glob(os.path.join(str(logdir), "events.out.tfevents.*"))
  assert len(files) == 1 and os.path.getsize(files[0]) > 0
  return files[0]


def test_tbwriter_events_readable(tmp_path, fast_tensorboardx):
  events = read_events(write_some(tmp_path))
  assert events["train/loss"] == [(1, 0.5), (2, 0.25)]
  assert events["moe/load/0"] == [(1, 0.25)] and events["moe/load/1"] == [(1, 0.75)]
  assert "bad" not in events


def test_tbwriter_event_accumulator(tmp_path, fast_tensorboardx):
  ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  write_some(tmp_path)
  acc = ea_mod.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [e.value for e in acc.Scalars("train/loss")] == [0.5, 0.25]


def test_tbwriter_disabled_and_missing(tmp_path, monkeypatch, caplog):
  off = tb_lib.TBWriter(str(tmp_path / "off"), enabled=False)
  assert not off.active and off.scalars(1, {"a": 1.0}) == 0
  off.flush()
  off.close()
  assert not (tmp_path / "off").exists()

  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import now raises ImportError
  monkeypatch.setattr(tb_lib, "_warned_missing", False)
  with caplog.at_level(logging.WARNING, logger="jaxquant.tb"):
    w1 = tb_lib.TBWriter(str(tmp_path / "missing"))
    w2 = tb_lib.TBWriter(str(tmp_path / "missing"))
  assert not w1.active and not w2.active and w1.scalars(0, {"a": 1.0}) == 0
  assert sum("tensorboardX" in rec.message for rec in caplog.records) == 1
