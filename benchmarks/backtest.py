"""The backtest after costs of the README's default run, into docs/evaluation.md.

    python benchmarks/backtest.py                      # trains configs/moe.py:quick (minutes)
    python benchmarks/backtest.py --workdir=runs/X     # a finished run's report.json
    python benchmarks/backtest.py --out=               # print only

Trains (or re-reads) `python -m jaxquant.main --config=configs/moe.py:quick` and writes
its val and test backtest figures (trades, win rate, P/L ratio, net expectancy, net
Sharpe with its 95% interval, the Deflated Sharpe Ratio) to the section "## Backtest
figures of the README's default run" of docs/evaluation.md.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

HEADING = "## Backtest figures of the README's default run"


def _pct(x, spec="+.3f"):
  return "—" if x is None or x != x else f"{100 * x:{spec}}%"


def _num(x, spec=".2f"):
  return "—" if x is None or x != x else format(x, spec)


def section(reports, seconds, command):
  """The markdown body of HEADING from report.json dicts {objective: report}."""
  rows = []
  for objective, report in reports.items():
    for split in ("val", "test"):
      b = report[split].get("backtest") or {}
      if b.get("skipped") or not b:
        rows.append(f"| {objective} | {split} | — | no backtest ({b.get('skipped', 'absent')}) "
                    "||||||")
        continue
      ci = b.get("sharpe_ci") or [None, None]
      rows.append(f"| {objective} | {split} | {report['threshold']:.4f} | {b['trades']:,} "
                  f"({b['long_trades']} long) | {_pct(b['win_rate'], '.1f')} | "
                  f"{_num(b['profit_loss_ratio'])} | {_pct(b['expectancy'])} | "
                  f"{_pct(b['costs'], '.2f')} | {_num(b['sharpe'])} [{_num(ci[0])}, "
                  f"{_num(ci[1])}] ({b['days']} days) | {_num(b['dsr'], '.3f')} |")
  first = next(iter(reports.values()))
  facts = {json.dumps(f, sort_keys=True): f for f in
           ((first["test"].get("backtest") or {}).get("costs_from") or {}).values()}
  costs = "; ".join(", ".join(f"{k} from {v}" for k, v in f.items()) for f in facts.values())
  return "\n".join([
      f"`{command}` (training {seconds / 60:.1f} min here); the same checkpoint evaluated "
      "with each `eval.threshold_objective` (the threshold chosen on val); measured by "
      "`python benchmarks/backtest.py`.",
      "",
      "| objective | split | threshold | trades | win rate | P/L ratio | net expectancy | "
      "costs (sum) | net Sharpe [95% CI] | DSR |",
      "|---|---|---|---|---|---|---|---|---|---|",
      *rows, "",
      "Conventions (`jaxquant/backtest_report.py` CONVENTIONS): one contract per trade, one "
      "position per instrument, entry at the next bar's open, exit at the label's exit bar; "
      "costs per side = commission (config.backtest: 1 bp of turnover; instruments.csv has "
      "none for the synthetic market) + 1 tick of slippage (instruments.csv's tick size × "
      "multiplier); returns on notional summed over trades; Sharpe = mean / std of the daily "
      "net return × √252, interval by block bootstrap over days; DSR with eval.trials = 1. "
      f"Contract facts, every instrument: {costs or '—'}. With "
      f"{(first['test'].get('backtest') or {}).get('days', '?')} trading days per split and "
      "a handful of trades at the stricter thresholds, no Sharpe or DSR here is evidence of an "
      "edge (report.md flags splits under 30 trades or 20 days).", ""])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="", help="a finished run (default: train one)")
  parser.add_argument("--out", default=os.path.join(ROOT, "docs", "evaluation.md"))
  args = parser.parse_args()
  command = "python -m jaxquant.main --config=configs/moe.py:quick"
  t0 = time.time()
  workdir = args.workdir
  if not workdir:
    from configs import moe
    from jaxquant import cli
    from jaxquant import train
    cli.setup_process(distributed=False)
    workdir = os.path.join(ROOT, "runs", "benchmark-backtest-moe-quick")
    train.train_and_evaluate(moe.get_config("quick"), workdir)
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  seconds = report.get("train_seconds") or (time.time() - t0)
  reports = {}
  from jaxquant import evaluate
  for objective in ("f1", "precision", "net_return"):  # The same checkpoint, evaluated anew.
    config = evaluate.load_run_config(workdir)
    config.eval.threshold_objective = objective
    with tempfile.TemporaryDirectory() as out:
      reports[objective] = evaluate.evaluate(workdir, config=config, out_dir=out)
  body = section(reports, seconds, command)
  print(body)
  if args.out:
    from jaxquant import io_utils
    io_utils.replace_markdown_section(args.out, HEADING, body, title="Evaluation")


if __name__ == "__main__":
  main()
