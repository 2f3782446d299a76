"""The one end-to-end backtest: a tiny three-class run (so the book goes long and short)
with the net_return threshold objective, its report, files, predictions and the standalone
`python -m jaxquant.backtest` on them."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxquant import backtest
from jaxquant import evaluate
from jaxquant import train

from conftest import ROOT, tiny_config

KEYS = ("trades", "win_rate", "profit_loss_ratio", "profit_factor", "expectancy",
        "gross_return", "costs", "net_return", "sharpe", "sharpe_ci", "sortino",
        "max_drawdown", "max_drawdown_days", "calmar", "exposure", "turnover",
        "per_instrument", "dsr")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  base = tmp_path_factory.mktemp("bt")
  config = tiny_config(base / "data", {"data.label_kind": "three_class",
                                       "data.label_threshold": 0.002,
                                       "eval.threshold_objective": "net_return",
                                       "eval.min_signals": 5, "eval.bootstrap": 50})
  workdir = str(base / "run")
  summary = train.train_and_evaluate(config, workdir)
  return config, workdir, summary


def test_report_has_the_backtest_of_val_and_test(run):
  config, workdir, summary = run
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  obj = report["threshold_objective"]
  assert obj["objective"] == "net_return" and "checkpoint_threshold" in obj
  for split in ("val", "test"):
    b = report[split]["backtest"]
    assert all(k in b for k in KEYS), [k for k in KEYS if k not in b]
    assert b["threshold"] == report["threshold"]
    assert b["trades"] == b["long_trades"] + b["short_trades"]
    row = report[split]["sweep"][0]
    assert {"trades", "net_win_rate", "net_expectancy"} <= set(row)
  with open(os.path.join(workdir, "trades.csv")) as f:
    rows = list(csv.DictReader(f))
  test_rows = [r for r in rows if r["split"] == "test"]
  assert len(test_rows) == report["test"]["backtest"]["trades"]
  net = sum(float(r["net_return"]) for r in test_rows)
  assert net == pytest.approx(report["test"]["backtest"]["net_return"], rel=1e-6, abs=1e-9)
  assert os.path.getsize(os.path.join(workdir, "equity.png")) > 1000
  md = open(os.path.join(workdir, "report.md")).read()
  assert "## Backtest after costs" in md and "equity.png" in md and "net expectancy" in md


def test_standalone_backtest_of_the_predictions(run, tmp_path):
  config, workdir, summary = run
  out = str(tmp_path / "pred.npz")
  evaluate.predict(workdir, config=config, out=out)
  data_dir = config.data.dir
  result = backtest.run_cli(out, data_dir, threshold=summary["threshold"],
                            out=str(tmp_path / "bt"))
  assert all(k in result for k in KEYS)
  with open(tmp_path / "bt" / "backtest.json") as f:
    assert json.load(f)["trades"] == result["trades"]
  assert (tmp_path / "bt" / "equity.png").exists()
  with open(tmp_path / "bt" / "trades.csv") as f:
    assert sum(1 for _ in f) == result["trades"] + 1
  # Every window of the data, so at least the test split's trades (the book is one run).
  assert result["trades"] >= summary["test"]["backtest"]["trades"]
  # The command line: a predictions file without its run config is one error line.
  np.savez(tmp_path / "bare.npz", instrument=np.array(["x"]), timestamp=np.array([0]),
           probability=np.array([0.5]))
  p = subprocess.run([sys.executable, "-m", "jaxquant.backtest",
                      f"--predictions={tmp_path / 'bare.npz'}", f"--data_dir={data_dir}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 1 and p.stderr.strip().startswith("error:"), p.stderr
  assert len(p.stderr.strip().splitlines()) == 1 and "config" in p.stderr
