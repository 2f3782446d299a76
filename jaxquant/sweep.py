"""Sweeps for jaxquant.compare --grid: members, populations, selection, PBO, ensembles.

Every combination of the --grid values × seeds is a member with its own workdir. Members
that share model shapes and data (population.group) train together as one population in
one compiled step (population_train.py); the rest run alone. Then the member chosen on
validation F1 alone is the result, the Probability of Backtest Overfitting (CSCV) is
measured over the members' per-period returns, and --ensemble=K averages the top K.
"""

import itertools
import json
import os
import re
import time

import numpy as np

from jaxquant import config_check
from jaxquant import evaluate
from jaxquant import io_utils
from jaxquant import population
from jaxquant import selection
from jaxquant import verdict
from jaxquant.data import dataset as dataset_lib

MEMBER_METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "mcc", "prior")
PBO_BLOCKS = 64  # Time blocks of val + test whose returns CSCV recombines.


def parse_grid(specs):
  """["loss.gamma=[0,1,2]", ...] → [(key, [values])]; one clear line for a bad spec."""
  out = []
  for spec in specs:
    key, sep, text = spec.partition("=")
    try:
      values = json.loads(text) if sep else None
    except ValueError as e:
      raise ValueError(f"--grid={spec!r}: the values must be a JSON list, e.g. "
                       f"'{key}=[0,1,2]' or 'loss.alpha=[\"1,4\",\"1,8\"]' ({e})") from None
    if not sep or not isinstance(values, list) or not values:
      raise ValueError(f"--grid={spec!r}: expected KEY=JSON_LIST with at least one value")
    if key in (k for k, _ in out):
      raise ValueError(f"--grid: {key} is given twice")
    out.append((key, values))
  return out


def _short(value):
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value)).strip("_") or "x"


def member_configs(base, grid, seeds):
  """(name, config, settings) of every grid combination × seed, in sweep order.

  Raises:
    ValueError: an unknown key or a value that does not fit (config_check's line).
  """
  out = []
  combos = list(itertools.product(*[values for _, values in grid])) or [()]
  for combo in combos:
    for seed in range(seeds):
      c = base.copy_and_resolve_references()
      settings = {}
      for (key, _), value in zip(grid, combo):
        try:
          config_check.set_value(c, key, value if isinstance(value, str) else json.dumps(value))
        except config_check.ConfigError as e:
          raise ValueError(f"--grid {key}={value!r}: {e}") from None
        settings[key] = value
      c.train.seed = seed
      settings["train.seed"] = seed
      name = "-".join([base.name] + [f"{k.split('.')[-1]}={_short(v)}" for k, v in
                                     zip((k for k, _ in grid), combo)] + [f"seed{seed}"])
      c.name = name
      config_check.validate(c)
      out.append((name, c, settings))
  for _, c, _ in out:
    c.eval.trials = len(out)  # The Deflated Sharpe's N: every member of the sweep.
  return out


def train_members(configs, workdirs, use_populations=True, log=print):
  """Trains every member (populations where they share shapes, else alone).

  Returns:
    ([summary per member], [seconds per member], [population index per member]).
  """
  from jaxquant import population_train
  from jaxquant import train
  groups = population.group(configs) if use_populations else [[i] for i in range(len(configs))]
  summaries, seconds, where = [None] * len(configs), [0.0] * len(configs), [None] * len(configs)
  for g, idx in enumerate(groups):
    t0 = time.time()
    if len(idx) > 1:
      log(f"=== population {g + 1}/{len(groups)}: {len(idx)} members in one step")
      out = population_train.train_population([configs[i] for i in idx],
                                              [workdirs[i] for i in idx])
    else:
      log(f"=== run {g + 1}/{len(groups)}: {configs[idx[0]].name} → {workdirs[idx[0]]}")
      out = [train.train_and_evaluate(configs[idx[0]], workdirs[idx[0]])]
    for i, s in zip(idx, out):
      summaries[i], seconds[i], where[i] = s, (time.time() - t0) / len(idx), g
  return summaries, seconds, where


def member_record(name, settings, summary, workdir, seconds, group):
  """compare.json's entry of one member."""
  pick = lambda r: {m: r.get(m) for m in MEMBER_METRICS}
  bt = summary["test"].get("backtest") or {}
  return {"name": name, "workdir": workdir, "settings": settings, "population": group,
          "val": pick(summary["val"]), "test": {**pick(summary["test"]),
                                                "net_sharpe": bt.get("sharpe"),
                                                "dsr": bt.get("dsr")},
          "threshold": summary["threshold"],
          "collapsed": bool(summary["all_checkpoints_collapsed"]
                            or summary["val"]["collapsed"]),
          "seconds": round(seconds, 1)}


def perf_matrix(workdirs, thresholds, blocks=PBO_BLOCKS):
  """[T, M]: each member's mean trading return (long on its signals, the forward return
  of each signalled window, 0 for a window without signal) in T consecutive time blocks of
  the validation then the test windows (the same windows for every member)."""
  cols = []
  for wd, thr in zip(workdirs, thresholds):
    parts = []
    for split in ("val", "test"):
      p = evaluate.load_split_predictions(wd, split)
      order = np.argsort(p["timestamp"], kind="stable")
      parts.append(np.where(p["probability"][order] >= thr, p["forward_return"][order], 0.0))
    cols.append(np.concatenate(parts))
  r = np.stack(cols, axis=1)
  t = min(blocks, len(r))
  return np.stack([b.mean(axis=0) for b in np.array_split(r, t)])


def probability_of_overfitting(workdirs, thresholds, n_splits=16):
  """selection.pbo over perf_matrix (its per-combination logits left out), or the reason
  it cannot be measured."""
  if len(workdirs) < 2:
    return {"pbo": None, "reason": "one member: nothing was selected among several"}
  perf = perf_matrix(workdirs, thresholds)
  s = min(n_splits, len(perf) - len(perf) % 2)
  out = selection.pbo(perf, n_splits=s)
  out.pop("logits", None)
  out["performance"] = ("mean trading return per time block of val + test, the in-sample "
                        "winner by mean / std")
  return out


def build_ensemble(members, k, configs, out_dir, log=print):
  """The top-k members by validation F1 (collapsed ones never), their probabilities
  averaged and evaluated like one run in out_dir (report.json, report.md, pictures)."""
  eligible = sorted((i for i, m in enumerate(members) if not m["collapsed"]),
                    key=lambda i: -(members[i]["val"]["f1"] or -1))[:k]
  if len(eligible) < k:
    raise ValueError(f"--ensemble={k}: only {len(eligible)} members did not collapse")
  config = configs[eligible[0]].copy_and_resolve_references()
  config.name = f"ensemble-top{k}"
  config.loss.return_weight = 0.0  # The members' return heads are not averaged.
  data_dir = dataset_lib.ensure_data(config.data, log=log)
  ds = dataset_lib.build_dataset(config.data, data_dir)
  preds = {}
  for split in ("val", "test"):
    loaded = [evaluate.load_split_predictions(members[i]["workdir"], split) for i in eligible]
    ts = ds.splits[split].timestamps
    for p in loaded:
      if not np.array_equal(p["timestamp"], ts):
        raise ValueError(f"--ensemble: {split} windows differ between members")
    probs = np.mean([p["probabilities"] for p in loaded], axis=0)
    preds[split] = (probs, np.zeros(len(probs), np.float32))
  val = ds.splits["val"]
  min_rate = config.eval.min_positive_rate
  threshold = verdict.choose_threshold(val.labels, preds["val"][0], min_rate)
  val_verdict = verdict.split_verdict(val.labels, preds["val"][0], threshold, min_rate,
                                      config.eval.max_positive_rate)
  meta = {"threshold": threshold, "val": val_verdict, "epoch": -1, "normalizer": ds.normalizer,
          "return_scale": None, "parameters": None}
  os.makedirs(out_dir, exist_ok=True)
  io_utils.atomic_write_text(os.path.join(out_dir, "config.json"),
                             config.to_json_best_effort(indent=2))
  sets = {"val": (ds, "val"), "test": (ds, "test")}
  return evaluate.report_predictions(
      config, out_dir, out_dir, data_dir, ds, sets, preds, meta, None,
      bool(val_verdict["collapsed"]), f"ensemble of the top {k} members by validation F1",
      None, extra={"ensemble": {"k": k, "members": [members[i]["name"] for i in eligible],
                                "threshold_chosen_on": "val (the averaged probabilities)"}})
