"""Tests for jaxquant.plots (PNG figures, calibration table)."""

import os

import numpy as np

from conftest import signal_data
from jaxquant import plots
from jaxquant import report_md
from jaxquant import trading

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
  y, s, r = signal_data(10, n=1500)
  sweep = trading.trading_sweep(y, s, r)
  paths = [
      plots.plot_roc_pr(y, s, tmp_path / "roc.png"),
      plots.plot_roc_pr(np.zeros(50, int), s[:50], tmp_path / "one_class.png"),
      plots.plot_calibration(y, s, tmp_path / "cal.png"),
      plots.plot_confusion([[50, 10, 0], [20, 70, 10], [0, 0, 0]], tmp_path / "cm.png",
                           ["down", "flat", "up"]),
      plots.plot_threshold_sweep(sweep, sweep, tmp_path / "sweep.png", chosen_threshold=0.3),
      plots.plot_history(history(), tmp_path / "hist.png"),
  ]
  for p in paths:
    assert_png(p)


def test_threshold_sweep_legend_off_the_curves_val_told_from_test_few_signals_marked(
    tmp_path, monkeypatch):
  y, s, r = signal_data(10, n=600)
  sweep = trading.trading_sweep(y, s, r)
  assert any(0 < row["signals"] < report_md.FEW_SIGNALS for row in sweep)
  figures = []
  monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig) or str(path))
  plots.plot_threshold_sweep(sweep, sweep, tmp_path / "sweep.png", chosen_threshold=0.3)
  (fig,) = figures
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  legends = fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()]
  assert len(legends) == 1
  box = legends[0].get_window_extent(renderer)
  assert not any(box.overlaps(a.get_window_extent(renderer)) for a in fig.axes)
  labels = [t.get_text() for t in legends[0].get_texts()]
  assert any("val" in l and "precision" in l for l in labels)
  assert any("test" in l and "precision" in l for l in labels)
  assert sum(f"< {report_md.FEW_SIGNALS} signals" in l for l in labels) == 1


def test_calibration_table():
  rng = np.random.default_rng(11)
  s = rng.random(20000)
  y = (rng.random(20000) < s).astype(int)  # calibrated by construction
  t = plots.calibration_table(y, s, bins=10)
  assert sum(t["count"]) == 20000 and len(t["edges"]) == 11
  assert t["ece"] < 0.03
  assert plots.calibration_table(y, s ** 4, bins=10)["ece"] > 0.1  # mis-calibrated
  q = plots.calibration_table(y, s ** 4, bins=5, strategy="quantile")
  assert sum(q["count"]) == 20000 and max(q["count"]) - min(q["count"]) <= 1


# --------------------------------------------------------------------------
# TBWriter
# --------------------------------------------------------------------------
