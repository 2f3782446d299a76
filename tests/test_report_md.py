"""Tests for jaxquant.report_md (report.md from the report.json dict)."""

import os


from conftest import signal_data
from jaxquant import bootstrap
from jaxquant import metrics as M
from jaxquant import report_md
from jaxquant import trading

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_summary(y, s, r):
  test = M.summarize(y, s, 0.3)
  test.update(collapsed=False, collapse_reason="", sweep=trading.trading_sweep(y, s, r),
              bootstrap=bootstrap.bootstrap_metrics(y, s, 0.3, block=20, n_boot=20))
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
  y, s, r = signal_data(12, n=1500)
  summary = fake_summary(y, s, r)
  (tmp_path / "test_roc_pr.png").write_bytes(PNG_MAGIC)  # only its existence matters here
  path = report_md.write_report_md(summary, str(tmp_path))
  assert path == os.path.join(str(tmp_path), "report.md")
  md = open(path, encoding="utf-8").read()
  assert md.startswith("# jaxquant report: gru_test")
  assert "| train | 1,000 | 70 | 7.00% | 2024-01-01T09:00:00 | 2024-02-01T15:00:00 |" in md
  assert "**0.3000**, chosen on val" in md
  assert "collapsed — predicts class 0 for all 10 windows" in md
  ci = summary["test"]["bootstrap"]["roc_auc"]
  assert f"[{ci['lo']:.3f}, {ci['hi']:.3f}]" in md
  rows = [l for l in md.split("## Test threshold sweep")[1].split("\n\n")[1].splitlines()
          if l.startswith("| 0.")]
  assert len(rows) == len(summary["test"]["sweep"]) >= 5
  row = next(x for x in summary["test"]["sweep"] if x["threshold"] == 0.3)
  assert any(l.startswith("| 0.3000 | " + f"{row['signals']:,}") and
             f"{100 * row['precision']:.1f}%" in l for l in rows)
  assert f"fewer than {report_md.FEW_SIGNALS} signals" in md
  assert "![ROC and PR](test_roc_pr.png)" in md
  assert "calibration.png" not in md and "training_curves.png" not in md


def test_write_report_md_minimal(tmp_path):
  summary = {"config_name": "bare", "all_checkpoints_collapsed": True}
  path = report_md.write_report_md(summary, tmp_path)
  md = open(path, encoding="utf-8").read()
  assert "every epoch's model collapsed" in md and "![" not in md


def test_report_md_says_no_skill_uncalibrated_and_which_data(tmp_path):
  y, s, r = signal_data(12, n=1500)
  summary = fake_summary(y, s, r)
  summary["test"]["bootstrap"]["roc_auc"].update(lo=0.47, hi=0.56)
  summary.update(uncalibrated_scores="trained with the focal loss",
                 eval_data_dir="/data/other_2025")
  (tmp_path / "other_2025-test_roc_pr.png").write_bytes(PNG_MAGIC)
  (tmp_path / "test_roc_pr.png").write_bytes(PNG_MAGIC)  # The run's own: not this report's.
  (tmp_path / "training_curves.png").write_bytes(PNG_MAGIC)  # The run's: in every report.
  path = report_md.write_report_md(summary, str(tmp_path), name="report-other_2025.md",
                                   figure_prefix="other_2025-")
  assert path.endswith("report-other_2025.md") and not os.path.exists(tmp_path / "report.md")
  md = open(path, encoding="utf-8").read()
  assert "No evidence of skill: the test ROC-AUC 95% interval [0.470, 0.560] contains 0.5" in md
  assert "not calibrated probabilities (trained with the focal loss)" in md
  assert "test = every window of `/data/other_2025`" in md
  assert "](other_2025-test_roc_pr.png)" in md and "](test_roc_pr.png)" not in md
  assert "](training_curves.png)" in md
  summary["test"]["bootstrap"]["roc_auc"].update(lo=0.51, hi=0.6)
  del summary["uncalibrated_scores"]
  md = open(report_md.write_report_md(summary, str(tmp_path)), encoding="utf-8").read()
  assert "No evidence of skill" not in md and "not calibrated" not in md
