"""instruments.csv: defaults with their sources, round trip, user edits kept, a malformed
edit named by file and line; tick-unit barriers per instrument against a plain loop;
per-instrument normalisation against numpy on each instrument's training rows."""

import csv
import os

import numpy as np
import pytest

from jaxquant import config_defaults
from jaxquant.data import bar_checks
from jaxquant.data import dataset
from jaxquant.data import features as features_lib
from jaxquant.data import instruments
from jaxquant.data import shards

_MIN = 60_000_000_000


def test_defaults_name_their_source_and_leave_the_unknown_empty():
  rb = instruments.default_row("SHFE.rb2105")
  assert (rb["tick_size"], rb["multiplier"], rb["currency"]) == (1.0, 10.0, "CNY")
  assert "shfe.com.cn" in rb["source"]
  assert instruments.default_row("rb")["tick_size"] == 1.0  # Bare code, contract month or not.
  assert instruments.default_row("CZCE.TA105")["tick_size"] == 2.0
  assert instruments.default_row("ES")["multiplier"] == 50.0
  assert instruments.default_row("KQ.m@CFFEX.IH")["multiplier"] == 300.0
  # Commissions are never invented; an unknown name or exchange gets an empty row.
  for key in instruments.DEFAULTS:
    row = instruments.default_row(f"{key[0]}.{key[1]}")
    assert row["commission_per_contract"] is None and row["commission_rate"] is None
    assert row["source"] and (row["tick_size"] is not None or "not found" in row["source"])
  for name in ("DCE.rb", "XYZ123", "SYN.rb"):
    assert set(instruments.default_row(name).values()) == {name, None}
  syn = instruments.default_row("SYN.cu", synthetic=True)
  assert syn["tick_size"] == 10.0 and syn["source"].startswith("synthetic market")


def test_table_round_trip_and_edits_kept(tmp_path):
  d = str(tmp_path)
  path = instruments.write_table(d, ["SHFE.cu", "CFFEX.IF", "MYSTERY"])
  rows = instruments.read_instruments(path)
  # The file as any CSV reader sees it: the same cells.
  with open(path, newline="") as f:
    plain = {r["instrument"]: r for r in csv.DictReader(f)}
  assert list(plain) == sorted(plain) == ["CFFEX.IF", "MYSTERY", "SHFE.cu"]
  for name, row in rows.items():
    for key, v in row.items():
      assert plain[name][key] == ("" if v is None else v if isinstance(v, str) else f"{v:g}")
  assert rows["CFFEX.IF"]["tick_size"] == 0.2 and rows["CFFEX.IF"]["multiplier"] == 300.0
  assert set(rows["MYSTERY"].values()) == {"MYSTERY", None}
  # The user fills the unknown row and a commission; a rewrite keeps both, adds what's new.
  text = open(path).read().replace("MYSTERY,,,,,,", "MYSTERY,0.5,20,1.5,,USD,my broker")
  text = text.replace("CFFEX.IF,0.2,300,,", "CFFEX.IF,0.2,300,,0.000023")
  open(path, "w").write(text)
  instruments.write_table(d, ["MYSTERY", "SHFE.rb"])
  again = instruments.load_table(d)
  assert again["MYSTERY"] == {"instrument": "MYSTERY", "tick_size": 0.5, "multiplier": 20.0,
                              "commission_per_contract": 1.5, "commission_rate": None,
                              "currency": "USD", "source": "my broker"}
  assert again["CFFEX.IF"]["commission_rate"] == 0.000023
  assert sorted(again) == ["CFFEX.IF", "MYSTERY", "SHFE.cu", "SHFE.rb"]
  before = open(path, "rb").read()
  instruments.write_table(d, [])
  assert open(path, "rb").read() == before  # Same rows, same bytes.


@pytest.mark.parametrize("edit, line, what", [
    (lambda t: t.replace("SHFE.cu,10,", "SHFE.cu,ten,"), 4, "tick_size 'ten' is not a number"),
    (lambda t: t.replace("SHFE.cu,10,5", "SHFE.cu,10,-5"), 4, "multiplier '-5' must be > 0"),
    (lambda t: t.replace(",CNY,", ",RMB yuan,", 1), 2, "currency 'RMB yuan'"),
    (lambda t: t + "SHFE.cu,10,5,,,CNY,again\n", 5, "instrument 'SHFE.cu' again (first on line 4)"),
    (lambda t: t.replace("SHFE.cu,10,5,", "SHFE.cu,10,5"), 4, "6 fields, expected 7"),
    (lambda t: t.replace("tick_size", "tick"), 1, "header must be"),
])
def test_a_malformed_edit_names_file_and_line(tmp_path, edit, line, what):
  path = instruments.write_table(str(tmp_path), ["CFFEX.IF", "SHFE.cu"])
  header, _, cu = open(path).read().splitlines()
  # A quoted source spanning two lines: line numbers count file lines, not rows.
  text = "\n".join([header, 'CFFEX.IF,0.2,300,,,CNY,"see\nnext line"', cu]) + "\n"
  open(path, "w").write(edit(text))
  with pytest.raises(bar_checks.IngestError) as e:
    instruments.read_instruments(path)
  assert str(e.value).startswith(f"{path}:{line}: ") and what in str(e.value)
  assert "\n" not in str(e.value)


def _write(directory, markets, table=None):
  os.makedirs(directory)
  for name, (ts, bars) in markets.items():
    shards.write_shard(os.path.join(directory, name + shards.SHARD_SUFFIX), name, ts, bars)
  if table is not None:
    open(os.path.join(directory, instruments.TABLE_FILE), "w").write(table)
  return str(directory)


def _grid_bars(n, tick, seed):
  """Bars on a tick grid: closes move by -3..3 ticks, wicks by 0..2 ticks."""
  rng = np.random.default_rng(seed)
  k = 4000 + np.cumsum(rng.integers(-3, 4, n))
  hi, lo = k + rng.integers(0, 3, n), k - rng.integers(0, 3, n)
  c, h, low = k * tick, np.maximum(hi, k) * tick, np.minimum(lo, k) * tick
  return np.stack([c, h, low, c, rng.integers(1, 100, n).astype(float), np.full(n, 50.0)], 1)


def _ticks_reference(bars, horizon, tp, sl, tick):
  """A plain loop: walk t+1..t+h, stop-loss first on a bar touching both."""
  c, h, low = bars[:, 3], bars[:, 1], bars[:, 2]
  out = np.full(len(c), -1)
  for t in range(len(c) - horizon):
    out[t] = 0
    for k in range(1, horizon + 1):
      if low[t + k] <= c[t] - sl * tick + 1e-9:
        break
      if h[t + k] >= c[t] + tp * tick - 1e-9:
        out[t] = 1
        break
  return out


def _config(**changes):
  c = config_defaults.get_config().data
  c.source, c.window, c.horizon = "shards", 8, 6
  c.val_fraction, c.test_fraction = 0.2, 0.2
  for k, v in changes.items():
    c[k] = v
  return c


def test_tick_barriers_use_each_instruments_tick(tmp_path):
  n = 400
  ts = np.arange(n, dtype=np.int64) * _MIN
  # Same moves in ticks, two tick sizes; C has no table figure: data.tick_size (0.25).
  markets = {"A": (ts, _grid_bars(n, 0.5, 0)), "B": (ts, _grid_bars(n, 10.0, 0)),
             "C": (ts, _grid_bars(n, 0.25, 1))}
  table = (",".join(instruments.COLUMNS) + "\nA,0.5,10,,,CNY,test\nB,10,5,,,CNY,test\n"
           "C,,,,,,\n")
  cfg = _config(label_kind="triple_barrier", barrier_units="ticks", take_profit=4.0,
                stop_loss=3.0, tick_size=0.25)
  ds = dataset.build_dataset(cfg, _write(tmp_path / "d", markets, table), check_labels=False)
  ticks = {"A": 0.5, "B": 10.0, "C": 0.25}
  for split in ds.splits.values():
    for i, name in enumerate(ds.instruments):
      rows = split.ends[split.instrument == i] - ds.instruments.index(name) * n
      want = _ticks_reference(markets[name][1], 6, 4.0, 3.0, ticks[name])
      np.testing.assert_array_equal(split.labels[split.instrument == i], want[rows])
  got = ds.summary()["tick_sizes"]
  assert got == {"A": {"tick_size": 0.5, "from": "instruments.csv"},
                 "B": {"tick_size": 10.0, "from": "instruments.csv"},
                 "C": {"tick_size": 0.25, "from": "data.tick_size"}}
  assert "tick size 0.25 (data.tick_size, no instruments.csv figure) for C" in \
      dataset.describe_data(ds, str(tmp_path / "d"))
  counts = np.bincount(ds.splits["train"].labels)
  assert counts.min() > 20  # Both classes, so a wrong tick would show.


def _bars(n, seed, scale):
  rng = np.random.default_rng(seed)
  close = scale * np.exp(np.cumsum(rng.normal(0.0, 2e-3 * (1 + seed), n)))
  open_ = np.concatenate([[close[0]], close[:-1]])
  high, low = np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999
  vol = rng.integers(1, 1000 * (1 + seed), n).astype(float)
  return np.stack([open_, high, low, close, vol, 50.0 + np.arange(n) * seed], axis=1)


def test_per_instrument_normalisation_matches_numpy_on_each_training_part(tmp_path):
  # A covers minutes 0..599, B minutes 300..899: the cut falls at different rows of each.
  markets = {"A": (np.arange(0, 600, dtype=np.int64) * _MIN, _bars(600, 0, 100.0)),
             "B": (np.arange(300, 900, dtype=np.int64) * _MIN, _bars(600, 1, 5000.0))}
  d = _write(tmp_path / "d", markets)
  cfg = _config(normalization="per_instrument", label_threshold=0.0)
  ds = dataset.build_dataset(cfg, d, check_labels=False)
  cut = np.datetime64(ds.summary()["cuts"]["val_start"]).astype("datetime64[ns]").astype(np.int64)
  offset = 0
  for name in ds.instruments:
    ts, bars = markets[name]
    f = features_lib.bar_features(bars)
    train = f[ts < cut]  # The instrument's own bars before the common cut.
    std = train.std(axis=0)
    std[std <= 1e-12] = 1.0
    want = ((f - train.mean(axis=0)) / std).astype(np.float32)
    np.testing.assert_allclose(ds.features[offset:offset + len(f)], want, rtol=2e-6, atol=2e-6)
    offset += len(f)
  assert ds.normalizer["kind"] == "per_instrument" and sorted(ds.normalizer["instruments"]) \
      == ["A", "B"]
  assert ds.summary()["normalization"] == "per_instrument"
  # Pooled (the default) is what it was: one set of statistics.
  pooled = dataset.build_dataset(_config(label_threshold=0.0), d, check_labels=False)
  assert "kind" not in pooled.normalizer and pooled.summary()["normalization"] == "pooled"
  # Evaluation applies the saved statistics by name; a stranger gets one line.
  again = dataset.build_inference_set(cfg, d, ds.normalizer)
  np.testing.assert_array_equal(again.features, ds.features)
  other = _write(tmp_path / "o", {"A": markets["A"], "Z": markets["B"]})
  with pytest.raises(ValueError, match=r"^instrument 'Z' of .* was not in the training data "
                                       r"of this run: .* cover A, B only$"):
    dataset.build_inference_set(cfg, other, ds.normalizer)
