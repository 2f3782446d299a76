"""Walk-forward results: pooled out-of-sample figures, CPCV paths, walkforward.md and the
stability plot (each fold's test AUC and precision with intervals, against time).

Pooled figures rank every fold's test probabilities together (each fold's model has its
own scale, so a pooled AUC can be below the folds' mean); threshold figures (F1, precision,
MCC) count each window at its own fold's threshold, chosen on that fold's validation.
"""

import math
import os

from matplotlib import dates as mdates
import numpy as np

from jaxquant import bootstrap
from jaxquant import io_utils
from jaxquant import metrics as metrics_lib
from jaxquant import plots

OOS_COLUMNS = ("instrument", "timestamp", "fold", "probability", "label", "forward_return")
PATH_METRICS = ("roc_auc", "pr_auc", "f1", "precision", "mcc")


def oos_figures(labels, scores, decisions, block, n_boot, seed):
  """Figures of pooled out-of-sample predictions.

  Args:
    labels: {0, 1} [n], in time order within each fold, folds in order.
    scores: signal-class probabilities [n].
    decisions: {0, 1} [n], each at its fold's threshold.
    block: bootstrap block length (window + horizon).
    n_boot: resamples for the ROC-AUC interval (0: none).

  Returns:
    {"windows", "roc_auc", "roc_auc_ci" ([lo, hi] or None), "pr_auc", "prior", "f1",
     "precision", "recall", "mcc", "signals"}.
  """
  y, s = metrics_lib.validate_binary(labels, scores)
  d = np.asarray(decisions, np.int64)
  m = metrics_lib.binary_metrics(y, d.astype(np.float64), 0.5)
  out = {"windows": int(y.size), "roc_auc": metrics_lib.roc_auc(y, s),
         "roc_auc_ci": None, "pr_auc": metrics_lib.pr_auc(y, s), "prior": m["prior"],
         "f1": m["f1"], "precision": m["precision"], "recall": m["recall"],
         "mcc": metrics_lib.mcc(m["confusion"]), "signals": int(d.sum())}
  if n_boot > 0 and 0 < y.sum() < y.size:
    ci = bootstrap.bootstrap_metrics(y, s, 0.5, block=block, n_boot=n_boot, seed=seed)
    out["roc_auc_ci"] = [ci["roc_auc"]["lo"], ci["roc_auc"]["hi"]]
  return out


def path_distribution(per_path):
  """{metric: {"mean", "std", "min", "max", "values"}} over CPCV paths' figures."""
  out = {}
  for k in PATH_METRICS:
    v = np.asarray([p[k] for p in per_path], np.float64)
    out[k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)) if len(v) > 1
              else None, "min": float(np.nanmin(v)), "max": float(np.nanmax(v)),
              "values": [float(x) for x in v]}
  return out


def write_oos_csv(path, cols):
  """oos_predictions.csv (columns OOS_COLUMNS), atomically."""
  lines = [",".join(OOS_COLUMNS)]
  for inst, ts, fold, p, y, r in zip(*(cols[c] for c in OOS_COLUMNS)):
    stamp = np.datetime64(int(ts), "ns").astype("datetime64[s]")
    lines.append(f"{inst},{stamp},{fold},{p:.6f},{y},{r:.6g}")
  io_utils.atomic_write_text(path, "\n".join(lines) + "\n")


def _fmt(x, digits=3):
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(ci):
  return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "—"


def _span(ranges):
  return "; ".join(f"{a} .. {b}" for a, b in ranges) or "—"


def fold_line(record, folds):
  """One fold's test figures, for the console as each fold ends."""
  return (f"fold {record['fold'] + 1}/{folds}: test {_span(record['test'])}  ROC-AUC "
          f"{record['roc_auc']:.3f} {_ci(record['roc_auc_ci'])}  precision "
          f"{record['precision']:.3f} (prior {record['positive_rate']['test']:.3f})")


def walkforward_markdown(result, figure=None):
  """walkforward.md: the folds, the pooled out-of-sample figures and what they mean."""
  oos, folds = result["oos"], result["folds"]
  scheme = result["scheme"]
  title = {"expanding": "expanding walk-forward", "rolling": "rolling walk-forward",
           "cpcv": f"combinatorial purged CV (N={result['groups']}, K={result['test_groups']})"}
  lines = [f"# Walk-forward: {result['config_name']}, {title[scheme]}", "",
           f"{len(folds)} folds, {result['seconds']:.0f} s in all. Each fold's normaliser is "
           "fitted on its own training windows, its checkpoint kept by its own validation F1 "
           "and its threshold chosen on its own validation windows; no training or validation "
           f"window reads a bar inside any test window's span (purge), and "
           f"data.embargo={result['embargo']} more bars are dropped after each test period "
           "that later data trains on. Warm start: "
           f"{result['warm_start']}.", "",
           "| fold | train | val | test | test windows | test prior | threshold | test ROC-AUC "
           "| 95% CI | PR-AUC | F1 | precision | net Sharpe | s |", "|" + "---|" * 14]
  for f in folds:
    bt = f.get("backtest") or {}
    lines.append(
        f"| {f['fold']} | {_span(f['train'])} | {_span(f['val'])} | {_span(f['test'])} | "
        f"{f['windows']['test']:,} | {_fmt(f['positive_rate']['test'])} | "
        f"{_fmt(f['threshold'], 4)} | {_fmt(f['roc_auc'])} | {_ci(f['roc_auc_ci'])} | "
        f"{_fmt(f['pr_auc'])} | {_fmt(f['f1'])} | {_fmt(f['precision'])} | "
        f"{_fmt(bt.get('sharpe'), 2)} | {f['seconds']:.0f} |")
  above = result["folds_above_chance"]
  copies = math.comb(result["groups"] - 1, result["test_groups"] - 1) if scheme == "cpcv" else 1
  counted = (f"{oos['windows']:,} test predictions ({oos['windows'] // copies:,} windows, each "
             f"tested in {copies} folds)" if copies > 1 else f"{oos['windows']:,} test windows")
  lines += ["", "## Out of sample, pooled", "",
            f"{counted} (prior {_fmt(oos['prior'])}): ROC-AUC "
            f"{_fmt(oos['roc_auc'])} {_ci(oos['roc_auc_ci'])}, PR-AUC {_fmt(oos['pr_auc'])} "
            f"(a random model: the prior), F1 {_fmt(oos['f1'])}, precision "
            f"{_fmt(oos['precision'])}, MCC {_fmt(oos['mcc'])}, {oos['signals']:,} signals.",
            "", "Folds whose test ROC-AUC interval lies above 0.5: "
            + ("n/a (eval.bootstrap=0)" if above is None else f"{above}/{len(folds)}") + "."]
  ci = oos["roc_auc_ci"]
  if ci:
    verdict = ("the pooled interval lies above 0.5: the signal holds out of sample"
               if ci[0] > 0.5 else "the pooled interval contains 0.5 (or lies below it): "
               "no evidence of skill out of sample")
    lines += ["", f"Verdict: {verdict}."]
  if scheme == "cpcv":
    dist = result["paths"]
    lines += ["", f"## {len(dist['roc_auc']['values'])} backtest paths", "",
              "Each path strings together one out-of-sample prediction per group "
              "(López de Prado's φ paths):", "", "| metric | mean | std | min | max |",
              "|---|---|---|---|---|"]
    for k in PATH_METRICS:
      d = dist[k]
      lines.append(f"| {k} | {_fmt(d['mean'])} | {_fmt(d['std'])} | {_fmt(d['min'])} | "
                   f"{_fmt(d['max'])} |")
  if figure:
    lines += ["", f"![stability]({figure})"]
  lines += ["", "Files: walkforward.json (every figure), oos_predictions.csv (instrument, "
            "timestamp, fold, probability, label, forward_return), fold_NN/ (each fold's "
            "run: report.md, checkpoints)."]
  return "\n".join(lines) + "\n"


def plot_stability(result, path):
  """Each fold's test ROC-AUC and precision (95 % intervals) at its test period's middle,
  with chance (0.5) and each fold's prior marked."""
  folds = result["folds"]
  fig, axes = plots.new_figure(ncols=1, nrows=2, figsize=(7, 5), sharex=True)
  mid = lambda f: np.datetime64(f["test"][0][0]) + (np.datetime64(f["test"][-1][1])
                                                   - np.datetime64(f["test"][0][0])) / 2
  x = np.asarray([mid(f) for f in folds], "datetime64[s]").astype("datetime64[ms]").astype(
      object)
  for ax, key, ci_key, base in ((axes[0][0], "roc_auc", "roc_auc_ci", None),
                                (axes[1][0], "precision", "precision_ci", "prior")):
    y = np.asarray([f[key] for f in folds], np.float64)
    lo = np.asarray([(f.get(ci_key) or [v, v])[0] for f, v in zip(folds, y)], np.float64)
    hi = np.asarray([(f.get(ci_key) or [v, v])[1] for f, v in zip(folds, y)], np.float64)
    ax.errorbar(x, y, yerr=[np.nan_to_num(y - lo), np.nan_to_num(hi - y)], fmt="o-",
                capsize=3, label=f"test {'ROC-AUC' if key == 'roc_auc' else key} (95% CI)")
    if base:
      ax.plot(x, [f["positive_rate"]["test"] for f in folds], "k--", lw=1,
              label="prior (a random model)")
    else:
      ax.axhline(0.5, color="k", ls="--", lw=1, label="chance")
    ax.set_ylabel({"roc_auc": "ROC-AUC"}.get(key, key))
    ax.legend(fontsize=8)
  axes[0][0].set_title(f"{result['config_name']}: {len(folds)} folds ({result['scheme']})")
  axes[1][0].set_xlabel("test period (middle)")
  axes[1][0].xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
  axes[1][0].tick_params(axis="x", labelrotation=30)
  return plots.save_png(fig, path)


def write(out_dir, result):
  """walkforward.json, walkforward.png and walkforward.md (atomically, in that order)."""
  io_utils.atomic_write_json(os.path.join(out_dir, "walkforward.json"), result)
  figure = os.path.basename(plot_stability(result, os.path.join(out_dir, "walkforward.png")))
  md = walkforward_markdown(result, figure)
  io_utils.atomic_write_text(os.path.join(out_dir, "walkforward.md"), md)
  return md
