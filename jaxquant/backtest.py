"""The cost-aware backtest of a run's signals on its val and test bars, and its CLI.

    python -m jaxquant.backtest --predictions=FILE --data_dir=DIR [--threshold=X] [--out=DIR]

runs the same backtest on a predictions file of `python -m jaxquant.main --mode=predict`
and writes backtest.json, trades.csv and equity.png. Trades and costs follow
jaxquant/trades.py, the figures jaxquant/trade_stats.py; the bars are the data folder's
own (the same continuous series as the dataset for a product of contract months), and
each evaluated window is matched to its bar by instrument and timestamp. Contract facts
come from the data folder's instruments.csv, else from config.backtest.
"""

import json
import math
import os

import numpy as np
from absl import flags

from jaxquant import backtest_report
from jaxquant import cli
from jaxquant import config_defaults
from jaxquant import io_utils
from jaxquant import trade_stats
from jaxquant import trades as trades_lib
from jaxquant import verdict
from jaxquant.data import dataset as dataset_lib
from jaxquant.data import instruments as instruments_lib
from jaxquant.data import labels as labels_lib
from jaxquant.data import rolls
from jaxquant.data import shards

SKIP_SAMPLES = ("data.source='samples': the samples carry no bars (open/high/low/close) "
                "to trade on, so there is no backtest")


def load_bars(data_dir, data_config):
  """{instrument: (timestamps [n], bars [n, 4] open/high/low/close)} of a data folder, a
  product of contract months joined as the dataset joins it (data.roll)."""
  roll = data_config.get("roll") or {}
  loaded = rolls.join_products(shards.load_dir(data_dir), rolls.read_products(data_dir),
                               roll.get("by", "open_interest"), roll.get("adjust", "ratio"),
                               {})
  return {name: (np.asarray(ts, np.int64), np.asarray(bars[:, :4], np.float64))
          for name, ts, bars in loaded}


def instrument_costs(table, name, bt):
  """An instrument's trades.Costs: its instruments.csv row where it has a figure, else
  config.backtest; and where each came from."""
  row = table.get(name) or {}

  def pick(key, fallback):
    if row.get(key) is not None:
      return row[key], instruments_lib.TABLE_FILE
    return fallback, "config.backtest"
  (tick, tick_from), (mult, mult_from) = pick("tick_size", bt.tick_size), pick(
      "multiplier", bt.multiplier)
  if row.get("commission_per_contract") is not None:
    fee, kind, fee_from = row["commission_per_contract"], "per_contract", instruments_lib.TABLE_FILE
  elif row.get("commission_rate") is not None:
    fee, kind, fee_from = row["commission_rate"], "per_turnover", instruments_lib.TABLE_FILE
  else:
    fee, kind, fee_from = bt.commission, bt.commission_kind, "config.backtest"
  costs = trades_lib.Costs(multiplier=float(mult), commission=float(fee), commission_kind=kind,
                           slippage_ticks=float(bt.slippage_ticks), tick_size=float(tick))
  return costs, {"tick_size": tick_from, "multiplier": mult_from, "commission": fee_from}


class Book:
  """One split's windows matched to their bars, with every window's exits precomputed."""

  def __init__(self, split, names, bars, config, table, data_dir=""):
    self.names, self.windows = list(names), len(split)
    self.fill = config.backtest.fill
    day = rolls.trading_day(split.timestamps)
    self.days = np.unique(day)
    # Windows (bars) per instrument and trading day: what one day of the daily series spans.
    per = np.unique(np.asarray(split.instrument, np.int64) * 10**7 + day, return_counts=True)[1]
    self.bars_per_day = float(np.median(per)) if per.size else math.nan
    self.parts, self.facts = [], {}
    both = labels_lib.class_count(dataset_lib.label_config(config.data)) == 3  # Shorts too.
    for i in np.unique(split.instrument):
      name = self.names[int(i)]
      if name not in bars:
        raise ValueError(f"instrument {name!r} has no bars in {data_dir}")
      ts, ohlc = bars[name]
      win = np.nonzero(split.instrument == i)[0]
      win = win[np.argsort(split.timestamps[win], kind="stable")]
      rows = np.searchsorted(ts, split.timestamps[win])
      bad = (rows >= ts.size) | (ts[np.minimum(rows, ts.size - 1)] != split.timestamps[win])
      if bad.any():
        at = np.datetime64(int(split.timestamps[win][bad][0]), "ns")
        raise ValueError(f"{data_dir}: instrument {name!r} has no bar at {at}, the end of an "
                         "evaluated window (other data than the predictions')")
      tick = instruments_lib.tick_size(table, name, config.data.tick_size)["tick_size"]
      rule = trades_lib.exit_rule(config.data, tick)
      ok = rows + rule.horizon < ts.size  # Windows whose exit lies inside the data.
      win, rows = win[ok], rows[ok]
      costs, self.facts[name] = instrument_costs(table, name, config.backtest)
      ex = {1: trades_lib.exits(ohlc, rows, np.ones(rows.size), rule)}
      ex[-1] = trades_lib.exits(ohlc, rows, -np.ones(rows.size), rule) if both else ex[1]
      self.parts.append((int(i), ts, ohlc, win, rows, rule, costs, ex))

  def trades(self, sides, cost_factor=1.0):
    """The trade table of per-window sides (+1 / -1 / 0, aligned with the split)."""
    tables = []
    for i, ts, ohlc, win, rows, rule, costs, ex in self.parts:
      s = np.asarray(sides)[win]
      k = np.nonzero(s)[0]
      if k.size == 0:
        continue
      pre = tuple(np.where(s[k] > 0, ex[1][j][k], ex[-1][j][k]) for j in range(3))
      tables.append(trades_lib.simulate(ohlc, ts, rows[k], s[k], rule,
                                        costs.scaled(cost_factor), self.fill, i, pre))
    return trades_lib.concat(tables)

  def figures(self, table, config):
    """trade_stats.figures of a trade table of this split."""
    return {**trade_stats.figures(table, self.days, self.windows, self.names,
                                  n_boot=config.eval.bootstrap, seed=config.train.seed,
                                  trials=config.eval.trials),
            "bars_per_day": self.bars_per_day}


def sweep_columns(book, probs, rows):
  """Adds the net-of-cost columns to threshold-sweep rows: trades, net_win_rate,
  net_expectancy (one position per instrument, after costs)."""
  for r in rows:
    t = book.trades(trades_lib.sides_from_probs(probs, r["threshold"]))
    n = len(t["net_return"])
    r["trades"] = n
    r["net_win_rate"] = float((t["net_return"] > 0).mean()) if n else math.nan
    r["net_expectancy"] = float(t["net_return"].mean()) if n else math.nan
  return rows


class Backtests:
  """The backtests of one evaluation: the books of its splits, the threshold objective,
  the figures under `<split>.backtest` and the files (trades.csv, equity.png)."""

  def __init__(self, config, sets, probs, data_dir):
    """sets: {name: (dataset, split name)}; probs: {name: [n, K] probabilities}."""
    self.config, self.probs, self.books, self.tables = config, probs, {}, {}
    self.skipped = SKIP_SAMPLES if config.data.source == "samples" else None
    self.sets = sets
    if self.skipped:
      return
    cache = {}
    for name, (d, split) in sets.items():
      where = config.eval.data_dir if (name == "test" and config.eval.data_dir) else data_dir
      if where not in cache:
        cache[where] = (load_bars(where, config.data), instruments_lib.load_table(where))
      bars, table = cache[where]
      self.books[name] = Book(d.splits[split], d.instruments, bars, config, table, where)

  def choose_threshold(self, saved):
    """The threshold of eval.threshold_objective, chosen on val (the checkpoint's F1
    threshold `saved` for "f1"); and the facts for report.json."""
    e = self.config.eval
    facts = {"objective": e.threshold_objective, "checkpoint_threshold": saved}
    if e.threshold_objective == "f1":
      return saved, facts
    d, split = self.sets["val"]
    book, probs = self.books.get("val"), self.probs["val"]
    net = None if book is None else (lambda ts: [book.trades(trades_lib.sides_from_probs(
        probs, t))["net_return"].sum() for t in ts])
    t = verdict.choose_threshold(d.splits[split].labels, probs, e.min_positive_rate,
                                 e.threshold_objective, e.min_signals, net)
    if not np.isfinite(t):  # No threshold had min_signals: keep the checkpoint's.
      facts["note"] = f"no threshold with eval.min_signals={e.min_signals} signals on val"
      return saved, facts
    return float(t), facts

  def add(self, result, name, threshold):
    """Puts `<split>.backtest` and the sweep's net columns into a split's result."""
    if self.skipped:
      result["backtest"] = {"skipped": self.skipped}
      return
    book, probs = self.books[name], self.probs[name]
    sweep_columns(book, probs, result["sweep"])
    sweep_columns(book, probs, [result["at_threshold"]])
    table = book.trades(trades_lib.sides_from_probs(probs, threshold))
    self.tables[name] = table
    result["backtest"] = {**book.figures(table, self.config), "threshold": threshold,
                          "fill": book.fill, "costs_from": book.facts,
                          "conventions": backtest_report.CONVENTIONS}

  def write(self, out_dir, prefix="", equity=True):
    """trades.csv (val and test) and equity.png (test; `equity`) into out_dir."""
    if self.skipped:
      return
    names = {k: b.names for k, b in self.books.items()}
    backtest_report.write_trades_csv(os.path.join(out_dir, prefix + "trades.csv"),
                                     self.tables, names)
    if equity and "test" in self.tables:
      backtest_report.plot_equity(self.tables["test"], self.books["test"].names,
                                  os.path.join(out_dir, prefix + "equity.png"))


# ---------------------------------------------------------------------------- CLI

_PRED = "--predictions"


def _on_defaults(saved, where):
  """A saved config's sections (data, backtest, eval, train) on today's defaults."""
  config = config_defaults.get_config()
  if not isinstance(saved, dict):
    raise ValueError(f"{where}: the saved config is not a JSON object")
  for section in ("data", "backtest", "eval", "train"):
    for key, value in (saved.get(section) or {}).items():
      if key in config[section] and not isinstance(value, dict):
        try:
          config[section][key] = value
        except TypeError:  # A saved int for a float field, or an old type: say which.
          raise ValueError(f"{where}: {section}.{key}={value!r} does not fit today's "
                           "config") from None
    if section == "data" and isinstance((saved.get("data") or {}).get("roll"), dict):
      config.data.roll.update(saved["data"]["roll"])
  return config


def _run_config(path, npz):
  """The run's config: saved in the predictions file, else config.json beside it."""
  if "config_json" in npz.files:
    return _on_defaults(json.loads(str(npz["config_json"])), path)
  beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
  if os.path.exists(beside):
    try:
      with open(beside) as f:
        saved = json.load(f)
    except ValueError as e:
      raise ValueError(f"{beside} is not valid JSON ({e})") from None
    return _on_defaults(saved, beside)
  raise ValueError(f"{path} records no run config and {beside} has no config.json: the "
                   "backtest needs the run's label settings (horizon, barriers)")


def load_predictions(path):
  """(arrays, config) of a predictions .npz (or the .npz twin of its .csv)."""
  if path.endswith(".csv"):
    path = path[:-4] + ".npz"
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{_PRED}={path}: not a predictions .npz ({e})") from None
  with npz:
    need = {"instrument", "timestamp", "probability"} - set(npz.files)
    if need:
      raise ValueError(f"{_PRED}={path}: no {sorted(need)} arrays (not a jaxquant "
                       "predictions file)")
    arrays = {k: npz[k] for k in npz.files if k != "config_json"}
    config = _run_config(path, npz)
  return arrays, config


def _split_of(arrays):
  """The predictions as a Split-like object and instrument names."""
  names = sorted(set(arrays["instrument"].tolist()))
  index = {n: i for i, n in enumerate(names)}

  class _Split:  # The fields Book reads.
    instrument = np.asarray([index[n] for n in arrays["instrument"].tolist()], np.int64)
    timestamps = np.asarray(arrays["timestamp"], np.int64)

    def __len__(self):
      return self.timestamps.size
  return _Split(), names


def run_cli(predictions, data_dir, threshold=None, out=None):
  """The standalone backtest: backtest.json, trades.csv, equity.png in `out`.

  Returns:
    The backtest.json dict.
  """
  arrays, config = load_predictions(predictions)
  if not os.path.isdir(data_dir):
    raise ValueError(f"--data_dir={data_dir} is not a folder")
  # Default <predictions>-backtest/ beside the file: never the run's own trades.csv.
  out = out or os.path.splitext(os.path.abspath(predictions))[0] + "-backtest"
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot make the output folder {out} ({e.strerror}): pass --out=DIR") \
        from None
  if threshold is None:
    threshold = float(arrays["threshold"]) if "threshold" in arrays else 0.5
  probs = arrays.get("probabilities")
  if probs is None:  # Only the signal class's score: long-only.
    p = np.asarray(arrays["probability"], np.float64)
    probs = np.stack([1 - p, p], axis=1)
  split, names = _split_of(arrays)
  book = Book(split, names, load_bars(data_dir, config.data),
              config, instruments_lib.load_table(data_dir), data_dir)
  table = book.trades(trades_lib.sides_from_probs(probs, threshold))
  result = {"predictions": os.path.abspath(predictions), "data_dir": os.path.abspath(data_dir),
            "threshold": threshold, "fill": book.fill, "costs_from": book.facts,
            "conventions": backtest_report.CONVENTIONS,
            **book.figures(table, config)}
  io_utils.atomic_write_json(os.path.join(out, "backtest.json"), result)
  backtest_report.write_trades_csv(os.path.join(out, "trades.csv"), {"all": table},
                                   {"all": names})
  backtest_report.plot_equity(table, names, os.path.join(out, "equity.png"))
  print(backtest_report.console_line("backtest", result)
        + f"\n   wrote {os.path.join(out, 'backtest.json')}, trades.csv, equity.png",
        flush=True)
  return result


def _define_flags():
  flags.DEFINE_string("predictions", None, "predictions .npz of python -m jaxquant.main "
                      "--mode=predict (or its .csv twin)")
  flags.DEFINE_string("data_dir", None, "the data folder holding the predictions' bars")
  flags.DEFINE_float("threshold", None, "decision threshold (default: the file's)")
  flags.DEFINE_string("out", None, "output folder (default: <predictions>-backtest/ beside "
                      "the predictions file)")


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.predictions or not f.data_dir:
    cli.fail("--predictions=FILE and --data_dir=DIR are required")
  run_cli(f.predictions, f.data_dir, f.threshold, f.out)


if __name__ == "__main__":
  _define_flags()
  cli.run(main, distributed=False)
