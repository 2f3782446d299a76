"""report.md: what a trader reads, rendered from the report.json dict."""

import math
import os

import numpy as np

from jaxquant import backtest_report
from jaxquant import io_utils
from jaxquant import plots

FEW_SIGNALS = plots.FEW_SIGNALS  # Sweep rows with fewer signals are flagged (tables and plot).


def _isnum(x):
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
      and math.isfinite(float(x))


def _f(x, spec=".3f"):
  return format(float(x), spec) if _isnum(x) else "—"


def _pct(x, digits=1):
  return f"{100 * float(x):.{digits}f}%" if _isnum(x) else "—"


def _ret(x):
  return f"{100 * float(x):+.3f}%" if _isnum(x) else "—"


def _int(x):
  return f"{int(x):,}" if _isnum(x) else "—"


def _cell(x):
  return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return lines


def _md_data(summary):
  data = summary.get("data") or {}
  lines = ["## Data", ""]
  facts = [("data", data.get("dir")), ("instruments", ", ".join(data.get("instruments") or [])),
           ("bars", _int(data["bars"]) if _isnum(data.get("bars")) else None),
           ("window", data.get("window")), ("horizon", data.get("horizon")),
           ("features", data.get("num_features"))]
  facts = [f"{k}: {v}" for k, v in facts if v not in (None, "")]
  if facts:
    lines += ["; ".join(facts), ""]
  splits = data.get("splits") or {}
  if splits:
    rows = [[name, _int(s.get("windows")), _int(s.get("positives")),
             _pct(s.get("positive_rate"), 2), s.get("start") or "—", s.get("end") or "—"]
            for name, s in splits.items()]
    lines += _table(["split", "windows", "positives", "positive rate", "from", "to"], rows)
    lines += ["", "Splits are chronological; the threshold is chosen on val and only applied "
              "to test.", ""]
  return lines


def _md_run(summary):
  lines = ["## Model", ""]
  if "best_epoch" in summary or "best_step" in summary:
    lines.append(f"- checkpoint: epoch {summary.get('best_epoch', '—')} "
                 f"(step {summary.get('best_step', '—')}), kept by validation F1")
  if "threshold" in summary:
    lines.append(f"- decision threshold: **{_f(summary['threshold'], '.4f')}**, chosen on "
                 f"{summary.get('threshold_chosen_on', 'val')} (signal when score >= threshold)")
  if summary.get("stop_reason"):
    lines.append(f"- training stopped: {summary['stop_reason']}")
  if _isnum(summary.get("train_seconds")):
    lines.append(f"- training time: {summary['train_seconds'] / 60:.1f} min")
  return lines + [""]


def _md_warnings(summary):
  lines = []
  if summary.get("all_checkpoints_collapsed"):
    lines.append("> **Warning: every epoch's model collapsed to a single class. There is no "
                 "usable model; the numbers below are the least-bad checkpoint's.**")
  for split in ("val", "test"):
    r = summary.get(split) or {}
    if r.get("collapsed"):
      reason = r.get("collapse_reason") or "one class"
      lines.append(f"> **Warning ({split}): collapsed — {reason}.**")
  ci = ((summary.get("test") or {}).get("bootstrap") or {}).get("roc_auc") or {}
  if _isnum(ci.get("lo")) and _isnum(ci.get("hi")) and ci["lo"] <= 0.5 <= ci["hi"]:
    lines.append(f"> **No evidence of skill: the test ROC-AUC 95% interval "
                 f"[{_f(ci['lo'])}, {_f(ci['hi'])}] contains 0.5 (chance).**")
  if summary.get("uncalibrated_scores"):
    lines.append(f"> Scores are not calibrated probabilities ({summary['uncalibrated_scores']}): "
                 "read them as a ranking; the calibration plot shows how far off they are.")
  cal = summary.get("calibration") or {}
  if cal.get("method") == "temperature":
    before, after = cal.get("ece_before") or {}, cal.get("ece_after") or {}
    lines.append(f"> Calibration figures: scores tempered by T = {_f(cal.get('temperature'))} "
                 f"fitted on val (test ECE {_f(before.get('test'))} → {_f(after.get('test'))}; "
                 f"the threshold is {_f(cal.get('threshold'), '.4f')} in tempered units; "
                 "rankings and decisions unchanged).")
  return lines + [""] if lines else []


def _md_computed_on(summary):
  """Which data the numbers below come from (an evaluation may use other data)."""
  own = (summary.get("data") or {}).get("dir")
  other = summary.get("eval_data_dir")
  if other:
    return [f"Computed on: val = the validation split of `{own}`; test = every window of "
            f"`{other}` (other data, the run's normalisation).", ""]
  return [f"Computed on: `{own}` (its val and test splits).", ""] if own else []


# (key, label, baseline key or constant, what the baseline is)
_METRIC_ROWS = (
    ("roc_auc", "ROC-AUC", 0.5, "chance"),
    ("pr_auc", "PR-AUC", "prior", "random ranking"),
    ("precision", "precision (win rate)", "prior", "random signals"),
    ("recall", "recall", None, ""),
    ("f1", "F1", "f1_baseline", "always positive"),
    ("mcc", "MCC", 0.0, "any trivial or random model"),
    ("precision_lift", "precision / prior", 1.0, "random signals"),
    ("accuracy", "accuracy", "accuracy_baseline", "majority class"),
    ("predicted_positive_rate", "signalled share", None, ""),
)


def _ci(r, key):
  b = (r.get("bootstrap") or {}).get(key) or {}
  return f"[{_f(b.get('lo'))}, {_f(b.get('hi'))}]" if b else "—"


def _baseline(r, base):
  return _f(base) if _isnum(base) else _f(r.get(base)) if base else "—"


def _md_metrics(summary):
  val, test = summary.get("val") or {}, summary.get("test") or {}
  if not val and not test:
    return []
  rows = []
  for key, label, base, what in _METRIC_ROWS:
    if key not in val and key not in test:
      continue
    rows.append([label, _f(val.get(key)), _ci(val, key), _f(test.get(key)), _ci(test, key),
                 f"{_baseline(val, base)} / {_baseline(test, base)}" if base is not None else "—",
                 what])
  lines = ["## Metrics at the chosen threshold", ""]
  lines += _table(["metric", "val", "val 95% CI", "test", "test 95% CI",
                   "baseline (val / test)", "baseline is"], rows)
  boot = next(iter((test.get("bootstrap") or val.get("bootstrap") or {}).values()), None)
  if boot:
    lines += ["", f"Intervals: circular block bootstrap over time order (block of "
              f"{boot.get('block', '?')} windows, {boot.get('n_boot', '?')} resamples, "
              f"{_pct(boot.get('level', 0.95), 0)} percentile interval); neighbouring windows "
              "overlap, so i.i.d. intervals would be too narrow."]
  if np.shape(test.get("confusion")) == (2, 2):
    (tn, fp), (fn, tp) = np.asarray(test["confusion"], dtype=np.int64).tolist()
    lines += ["", f"Test confusion: TN {tn:,}, FP {fp:,}, FN {fn:,}, TP {tp:,}."]
  return lines + [""]


def _md_return_head(summary):
  head = (summary.get("test") or {}).get("return_head")
  if not head:
    return []
  rows = [[label, _f(head.get(key, {}).get("estimate")), _ci({"bootstrap": head}, key), "0"]
          for key, label in (("ic", "IC (Pearson)"), ("rank_ic", "rank IC (Spearman)"))]
  lines = ["## Return head (test)", ""]
  lines += _table(["metric", "test", "95% CI", "no skill"], rows)
  lines += ["", f"Correlation of the predicted with the realised forward return over "
            f"{_int(head.get('n'))} test windows (loss.return_weight > 0); intervals from the "
            "same block bootstrap as above.", ""]
  return lines


def _md_sweep(rows, title, threshold=None):
  lines = [title, ""]
  body = []
  for r in sorted(rows, key=lambda r: r.get("threshold", math.nan)):
    none = not r.get("signals")
    few = "*" if 0 < (r.get("signals") or 0) < FEW_SIGNALS else ""
    body.append([_f(r.get("threshold"), ".4f"), _int(r.get("signals")) + few,
                 _pct(r.get("signal_share"), 2),
                 "—" if none else _pct(r.get("precision")), _pct(r.get("recall")),
                 _f(r.get("f1")), "—" if none else _f(r.get("precision_lift"), ".2f"),
                 _ret(r.get("mean_return")), _ret(r.get("median_return")),
                 _f(r.get("profit_loss_ratio"), ".2f"),
                 _pct(r.get("hit_rate_positive_return"))]
                + ([_int(r["trades"]), _pct(r.get("net_win_rate")), _ret(r.get("net_expectancy"))]
                   if "trades" in r else []))
  net = ["trades", "net win rate", "net expectancy"] if rows and "trades" in rows[0] else []
  lines += _table(["threshold", "signals", "signalled", "win rate (precision)", "recall", "F1",
                   "lift", "mean return", "median return", "P/L ratio", "return > 0"] + net,
                  body)
  note = ("Win rate = share of signals whose label is 1; lift = win rate / prior; returns are "
          "the forward returns of the signalled windows (before costs and stop-losses); "
          f"P/L ratio = average win / average loss. * fewer than {FEW_SIGNALS} signals: too few "
          "to trust.")
  if net:
    note += (" Trades / net win rate / net expectancy: the backtest's (one position per "
             "instrument, after costs; section Backtest after costs).")
  if _isnum(threshold):
    note += f" The threshold chosen on val is {float(threshold):.4f}."
  return lines + ["", note, ""]


def _md_figures(workdir, prefix=""):
  names = [(f if f in plots.RUN_FIGURES else prefix + f, cap) for f, cap in plots.FIGURES]
  present = [(f, cap) for f, cap in names if os.path.exists(os.path.join(workdir, f))]
  if not present:
    return []
  lines = ["## Figures", ""]
  for f, cap in present:
    lines += [f"![{cap}]({f})", ""]
  return lines


def write_report_md(summary, workdir, name="report.md", figure_prefix=""):
  """Writes ``workdir/<name>`` (atomically) from the report.json dict.

  Every section tolerates missing keys, so partial reports still render.

  Args:
    summary: the dict evaluate.py writes to report.json, optionally with
      ``summary[split]["sweep"]`` (:func:`jaxquant.trading.trading_sweep` rows),
      ``summary[split]["bootstrap"]`` (:func:`jaxquant.bootstrap.bootstrap_metrics`)
      and ``summary["test"]["return_head"]`` (:func:`jaxquant.bootstrap.bootstrap_ic`).
    workdir: run directory; only pictures of :data:`jaxquant.plots.FIGURES`
      present there are embedded.
    name: the file name (an evaluation on other data has its own).
    figure_prefix: the pictures' prefix (that evaluation's); the run's own
      (:data:`jaxquant.plots.RUN_FIGURES`) have none.

  Returns:
    The path of report.md.
  """
  title = summary.get("config_name") or "run"
  lines = [f"# jaxquant report: {title}", ""]
  if summary.get("workdir"):
    lines += [f"Run directory: `{summary['workdir']}`", ""]
  lines += _md_computed_on(summary)
  lines += _md_warnings(summary)
  lines += _md_data(summary)
  lines += _md_run(summary)
  lines += _md_metrics(summary)
  lines += _md_return_head(summary)
  lines += backtest_report.markdown(summary, figure_prefix)
  test_sweep = (summary.get("test") or {}).get("sweep")
  if test_sweep:
    lines += _md_sweep(test_sweep, "## Test threshold sweep", summary.get("threshold"))
  val_sweep = (summary.get("val") or {}).get("sweep")
  if val_sweep:
    lines += ["<details><summary>Validation threshold sweep</summary>", ""]
    lines += _md_sweep(val_sweep, "### Validation threshold sweep")
    lines += ["</details>", ""]
  lines += _md_figures(workdir, figure_prefix)
  if summary.get("pictures") is False:
    lines += ["Pictures were not drawn for this sweep member (its curves are in "
              "metrics.jsonl): `python -m jaxquant.main --mode=eval "
              f"--workdir={summary['workdir']}` draws the evaluation's.", ""]
  path = os.path.join(workdir, name)
  io_utils.atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
  return path


def console_summary(summary, report_path=None):
  """A readable summary of report.json (report_path: its report.md)."""
  lines = [f"== {summary['config_name']}: checkpoint of epoch {summary['best_epoch']} "
           f"(step {summary['best_step']}), threshold {summary['threshold']:.4f} chosen on val"]
  if summary["all_checkpoints_collapsed"]:
    lines.append("!! Every epoch's model collapsed to one class: there is no usable model. "
                 "The numbers below are the least-bad checkpoint's.")
  if summary.get("stop_reason"):
    lines.append(f"   stopped: {summary['stop_reason']}")
  for name, s in summary["data"]["splits"].items():
    lines.append(f"   {name:5s} {s['windows']:7,d} windows, {s['positive_rate']:.2%} positive, "
                 f"{s['start']} .. {s['end']}")
  if summary.get("eval_data_dir"):
    lines.append(f"   test = every window of {summary['eval_data_dir']}")
  lines.append(f"   {'split':5s} {'ROC-AUC':>8s} {'95% CI':>13s} {'PR-AUC':>7s} {'prior':>6s} "
               f"{'F1':>6s} {'F1 all+':>7s} {'prec':>6s} {'recall':>6s} {'acc':>6s} {'acc base':>8s}")
  for split in ("val", "test"):
    r = summary[split]
    ci = r.get("bootstrap", {}).get("roc_auc")
    ci = f"[{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else ""
    lines.append(f"   {split:5s} {r['roc_auc']:8.3f} {ci:>13s} {r['pr_auc']:7.3f} {r['prior']:6.3f} "
                 f"{r['f1']:6.3f} {r['f1_baseline']:7.3f} {r['precision']:6.3f} "
                 f"{r['recall']:6.3f} {r['accuracy']:6.3f} {r['accuracy_baseline']:8.3f}")
    if r["collapsed"]:
      lines.append(f"   !! {split}: collapsed — {r['collapse_reason']}")
  (tn, fp), (fn, tp) = summary["test"]["confusion"]
  lines.append(f"   test confusion: TN {tn}  FP {fp}  FN {fn}  TP {tp}")
  head = summary["test"].get("return_head")
  if head:
    lines.append("   test return head: " + ", ".join(
        f"{label} {head[k]['estimate']:+.3f} [{head[k]['lo']:+.3f}, {head[k]['hi']:+.3f}]"
        for k, label in (("ic", "IC"), ("rank_ic", "rank IC"))))
  a = summary["test"]["at_threshold"]
  if a["signals"]:
    lines.append(f"   test signals: {a['signals']:,} ({a['signal_share']:.1%} of windows), win rate "
                 f"{a['precision']:.1%}, mean forward return {a['mean_return']:+.4%}, "
                 f"profit/loss ratio {a['profit_loss_ratio']:.2f}")
  lines += [backtest_report.console_line(f"{s} backtest", summary[s]["backtest"])
            for s in ("val", "test") if "backtest" in summary[s]]
  lines.append(f"   report: {report_path or os.path.join(summary['workdir'], 'report.md')}")
  return "\n".join(lines)
