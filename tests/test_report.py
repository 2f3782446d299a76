"""Tests for jaxquant.report (sweeps, bootstrap, plots, report.md) and jaxquant.tb."""

import glob
import logging
import math
import os
import struct
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxquant import metrics as M
from jaxquant import report as R
from jaxquant import tb as tb_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_data(seed=0, n=3000, prior=0.07, ties=False):
  """Imbalanced labels, weakly informative scores in (0, 1), returns tied to the labels."""
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < prior).astype(int)
  y[:2] = [0, 1]
  s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.0 * y - 2)))
  if ties:
    s = np.round(s, 2)
  r = rng.normal(0, 0.004, n) + 0.008 * y
  r[rng.random(n) < 0.05] = 0.0  # flat windows: neither win nor loss
  return y, s, r


def assert_close(a, b, tol=1e-12):
  if isinstance(b, float) and math.isnan(b):
    assert math.isnan(a)
  else:
    assert a == pytest.approx(b, rel=tol, abs=tol)


# --------------------------------------------------------------------------
# trading_sweep
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_trading_sweep_matches_a_loop(seed, ties):
  y, s, r = make_data(seed, ties=ties)
  rows = R.trading_sweep(y, s, r)
  thresholds = [row["threshold"] for row in rows]
  assert thresholds == sorted(set(thresholds))
  assert len(rows) >= 19
  for row in rows:
    t = row["threshold"]
    sig = s >= t
    pred = sig.astype(int)
    assert row["signals"] == sig.sum()
    assert_close(row["signal_share"], sig.mean())
    p, rc, f1, _ = skm.precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    assert_close(row["precision"], p)
    assert_close(row["recall"], rc)
    assert_close(row["f1"], f1)
    sub = r[sig]
    if sub.size == 0:
      for k in ("mean_return", "median_return", "profit_loss_ratio", "hit_rate_positive_return"):
        assert math.isnan(row[k])
      continue
    assert_close(row["mean_return"], sub.mean(), 1e-9)
    assert_close(row["expected_return"], sub.mean(), 1e-9)
    assert_close(row["median_return"], float(np.median(sub)))
    assert_close(row["hit_rate_positive_return"], np.mean(sub > 0))
    wins, losses = sub[sub > 0], sub[sub < 0]
    want = wins.mean() / np.abs(losses).mean() if wins.size and losses.size else math.nan
    assert_close(row["profit_loss_ratio"], want, 1e-9)
    assert_close(row["precision_lift"], row["precision"] / y.mean())


def test_trading_sweep_default_includes_signal_share_quantiles():
  y, s, r = make_data(2, n=5000)
  s = s * 0.3  # A model far below 0.5: the fixed grid alone would signal almost nothing.
  rows = R.trading_sweep(y, s, r)
  shares = {round(row["signal_share"], 4) for row in rows}
  for want in R.SIGNAL_SHARES:
    assert want in shares


def test_trading_sweep_given_thresholds_keep_order_and_empty_signals():
  y, s, r = make_data(3)
  rows = R.trading_sweep(y, s, r, thresholds=[0.9, 2.0, 0.1])
  assert [row["threshold"] for row in rows] == [0.9, 2.0, 0.1]
  empty = rows[1]
  assert empty["signals"] == 0 and empty["precision"] == 0.0
  assert math.isnan(empty["mean_return"]) and math.isnan(empty["median_return"])


def test_trading_sweep_validates_returns():
  y, s, r = make_data(4, n=100)
  with pytest.raises(ValueError, match="shape"):
    R.trading_sweep(y, s, r[:-1])
  r[3] = np.nan
  with pytest.raises(ValueError, match="nan"):
    R.trading_sweep(y, s, r)


# --------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------


def test_block_bootstrap_deterministic_and_contains_estimate():
  y, s, _ = make_data(5, n=2000)
  a = R.block_bootstrap_ci(y, s, M.roc_auc, block=20, n_boot=100, seed=7)
  b = R.block_bootstrap_ci(y, s, M.roc_auc, block=20, n_boot=100, seed=7)
  c = R.block_bootstrap_ci(y, s, M.roc_auc, block=20, n_boot=100, seed=8)
  assert tuple(a) == tuple(b) and tuple(a) != tuple(c)
  est, lo, hi = a
  assert est == M.roc_auc(y, s)
  assert lo < est < hi
  assert a.valid + a.skipped == 100


def test_block_bootstrap_random_model_covers_chance():
  rng = np.random.default_rng(6)
  y = (rng.random(3000) < 0.07).astype(int)
  s = rng.random(3000)
  _, lo, hi = R.block_bootstrap_ci(y, s, M.roc_auc, n_boot=200, seed=0)
  assert lo < 0.5 < hi


def test_block_bootstrap_skips_and_counts_nan_resamples():
  y = np.zeros(200, int)
  y[100] = 1  # One positive: many resamples draw none, and ROC-AUC is then nan.
  s = np.linspace(0, 1, 200)
  ci = R.block_bootstrap_ci(y, s, M.roc_auc, block=1, n_boot=100, seed=0)
  assert 0 < ci.skipped < 100 and ci.valid == 100 - ci.skipped
  def raising_auc(yb, sb):  # older sklearn raises where ours returns nan
    if yb.min() == yb.max():
      raise ValueError("Only one class present in y_true.")
    return M.roc_auc(yb, sb)

  raising = R.block_bootstrap_ci(y, s, raising_auc, block=1, n_boot=100, seed=0)
  assert raising.skipped == ci.skipped and tuple(raising) == pytest.approx(tuple(ci))
  none = R.block_bootstrap_ci(np.zeros(50, int), s[:50], M.roc_auc, n_boot=10)
  assert math.isnan(none.estimate) and math.isnan(none.lo) and none.skipped == 10


def ar1(rng, n, phi):
  x = np.empty(n)
  x[0] = rng.normal()
  e = rng.normal(size=n) * math.sqrt(1 - phi**2)
  for i in range(1, n):
    x[i] = phi * x[i - 1] + e[i]
  return x


def test_block_bootstrap_widens_with_autocorrelation():
  """On slowly varying labels and scores, i.i.d. resampling understates the uncertainty."""
  rng = np.random.default_rng(0)
  n = 3000
  latent = ar1(rng, n, 0.98)
  y = (latent + 0.5 * rng.normal(size=n) > 1.5).astype(int)
  s = ar1(rng, n, 0.98) + latent
  widths = {}
  for block in (1, 50):
    _, lo, hi = R.block_bootstrap_ci(y, s, M.roc_auc, block=block, n_boot=200, seed=1)
    widths[block] = hi - lo
  assert widths[50] > 2 * widths[1]


def test_bootstrap_metrics_keys_and_estimates():
  y, s, _ = make_data(9, n=2000)
  out = R.bootstrap_metrics(y, s, 0.3, block=25, n_boot=60, seed=0)
  assert set(out) == {"roc_auc", "pr_auc", "precision", "recall", "f1"}
  ref = M.summarize(y, s, 0.3)
  for name, ci in out.items():
    assert ci["estimate"] == pytest.approx(ref[name], abs=1e-12)
    assert ci["lo"] <= ci["estimate"] <= ci["hi"]
    assert ci["block"] == 25 and ci["n_boot"] == 60
  # Same seed and indices: block_bootstrap_ci on one metric gives the same interval.
  single = R.block_bootstrap_ci(y, s, M.pr_auc, block=25, n_boot=60, seed=0)
  assert (single.lo, single.hi) == pytest.approx((out["pr_auc"]["lo"], out["pr_auc"]["hi"]))
  assert R.bootstrap_metrics(y, s, 0.3, block=25, n_boot=60, seed=0) == out


def test_bootstrap_default_block():
  assert R.default_block(1) == 1
  assert R.default_block(1000) == 10
  assert R.default_block(64_000) == 40


# --------------------------------------------------------------------------
# multiclass
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_report_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 4
  y = rng.choice(k, size=500, p=[0.45, 0.45, 0.1, 0.0])  # class 3 never occurs
  p = np.where(rng.random(500) < 0.6, y, rng.choice(3, size=500))  # class 3 never predicted
  out = R.multiclass_report(y, p, k)
  pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
  np.testing.assert_allclose(out["precision"], pr)
  np.testing.assert_allclose(out["recall"], rc)
  np.testing.assert_allclose(out["f1"], f1)
  assert out["support"] == sup.tolist()
  assert out["confusion"] == skm.confusion_matrix(y, p, labels=range(k)).tolist()
  assert out["macro_f1"] == pytest.approx(
      skm.f1_score(y, p, labels=range(k), average="macro", zero_division=0))
  assert out["weighted_f1"] == pytest.approx(
      skm.f1_score(y, p, labels=range(k), average="weighted", zero_division=0))
  assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
  rep = skm.classification_report(y, p, labels=range(k), output_dict=True, zero_division=0)
  assert out["f1"][2] == pytest.approx(rep["2"]["f1-score"])
  with pytest.raises(ValueError):
    R.multiclass_report(y, p, 2)


# --------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------


def assert_png(path):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == PNG_MAGIC
  assert len(data) > 5000
  leftovers = [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]
  assert not leftovers


def history(n=6, collapsed=(2, 3)):
  return [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_f1": 0.1 + 0.02 * e,
           "val_f1_baseline": 0.13, "val_roc_auc": 0.5 + 0.03 * e, "val_collapsed": e in collapsed}
          for e in range(1, n + 1)]


def test_plots_write_pngs(tmp_path):
  y, s, r = make_data(10, n=1500)
  sweep = R.trading_sweep(y, s, r)
  paths = [
      R.plot_roc_pr(y, s, tmp_path / "roc.png"),
      R.plot_roc_pr(np.zeros(50, int), s[:50], tmp_path / "one_class.png"),
      R.plot_calibration(y, s, tmp_path / "cal.png"),
      R.plot_confusion([[50, 10, 0], [20, 70, 10], [0, 0, 0]], tmp_path / "cm.png",
                       ["down", "flat", "up"]),
      R.plot_threshold_sweep(sweep, sweep, tmp_path / "sweep.png", chosen_threshold=0.3),
      R.plot_history(history(), tmp_path / "hist.png"),
  ]
  for p in paths:
    assert_png(p)


def test_calibration_table():
  rng = np.random.default_rng(11)
  s = rng.random(20000)
  y = (rng.random(20000) < s).astype(int)  # calibrated by construction
  t = R.calibration_table(y, s, bins=10)
  assert sum(t["count"]) == 20000 and len(t["edges"]) == 11
  assert t["ece"] < 0.03
  assert R.calibration_table(y, s ** 4, bins=10)["ece"] > 0.1  # mis-calibrated
  q = R.calibration_table(y, s ** 4, bins=5, strategy="quantile")
  assert sum(q["count"]) == 20000 and max(q["count"]) - min(q["count"]) <= 1


# --------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------


def fake_report(y, s, r):
  test = M.summarize(y, s, 0.3)
  test.update(collapsed=False, collapse_reason="", sweep=R.trading_sweep(y, s, r),
              bootstrap=R.bootstrap_metrics(y, s, 0.3, block=20, n_boot=20))
  val = M.summarize(y, s, 0.3)
  val.update(collapsed=True, collapse_reason="predicts class 0 for all 10 windows")
  return {
      "config_name": "gru_test", "workdir": "/runs/x",
      "data": {"dir": "data/synthetic", "instruments": ["RB", "CU"], "window": 64, "horizon": 10,
               "num_features": 10, "bars": 12345,
               "splits": {"train": {"windows": 1000, "positives": 70, "positive_rate": 0.07,
                                    "start": "2024-01-01T09:00:00", "end": "2024-02-01T15:00:00"},
                          "test": {"windows": 300, "positives": 20, "positive_rate": 20 / 300,
                                   "start": None, "end": None}}},
      "best_step": 400, "best_epoch": 4, "threshold": 0.3, "threshold_chosen_on": "val",
      "all_checkpoints_collapsed": False, "stop_reason": "completed all epochs",
      "train_seconds": 93.0, "val": val, "test": test,
  }


def test_write_report_md(tmp_path):
  y, s, r = make_data(12, n=1500)
  report = fake_report(y, s, r)
  (tmp_path / "test_roc_pr.png").write_bytes(PNG_MAGIC)  # only its existence matters here
  path = R.write_report_md(report, str(tmp_path))
  assert path == os.path.join(str(tmp_path), "report.md")
  md = open(path, encoding="utf-8").read()
  assert md.startswith("# jaxquant report: gru_test")
  assert "| train | 1,000 | 70 | 7.00% | 2024-01-01T09:00:00 | 2024-02-01T15:00:00 |" in md
  assert "**0.3000**, chosen on val" in md
  assert "collapsed — predicts class 0 for all 10 windows" in md
  ci = report["test"]["bootstrap"]["roc_auc"]
  assert f"[{ci['lo']:.3f}, {ci['hi']:.3f}]" in md
  rows = [l for l in md.split("## Test threshold sweep")[1].split("\n\n")[1].splitlines()
          if l.startswith("| 0.")]
  assert len(rows) == len(report["test"]["sweep"]) >= 5
  row = next(x for x in report["test"]["sweep"] if x["threshold"] == 0.3)
  assert any(l.startswith("| 0.3000 | " + f"{row['signals']:,}") and
             f"{100 * row['precision']:.1f}%" in l for l in rows)
  assert "![ROC and PR](test_roc_pr.png)" in md
  assert "calibration.png" not in md and "training_curves.png" not in md


def test_write_report_md_minimal(tmp_path):
  path = R.write_report_md({"config_name": "bare", "all_checkpoints_collapsed": True}, tmp_path)
  md = open(path, encoding="utf-8").read()
  assert "every epoch's model collapsed" in md and "![" not in md


# --------------------------------------------------------------------------
# TBWriter
# --------------------------------------------------------------------------


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
