"""From a shard directory to normalised features and chronologically split samples.

Features of all instruments live in one [N, F] float32 array; a sample is just the
row index of its window's last bar, so overlapping windows are never copied.
"""

import dataclasses
import json
import os

import numpy as np

from jaxquant.data import feature_pass
from jaxquant.data import features as features_lib
from jaxquant.data import instruments as instruments_lib
from jaxquant.data import labels as labels_lib
from jaxquant.data import rolls as rolls_lib
from jaxquant.data import sample_set
from jaxquant.data import shards
from jaxquant.data import split_columns
from jaxquant.data import split_plan
from jaxquant.data import splits as splits_lib
from jaxquant.data import synth


@dataclasses.dataclass
class Split:
  """Samples of one split. All arrays are [n] and aligned; integer columns are as narrow
  as their values allow (split_columns.column_dtypes), their values the same."""
  name: str
  ends: np.ndarray          # Row of the window's last bar in Dataset.features.
  labels: np.ndarray        # Class (int8; batches carry it as int32).
  # float64 return of the trade the label describes: close_t → close_{t+h} for
  # binary / three_class, close_t → the barrier exit for triple_barrier (what the
  # trading sweep books, the regression head fits and profit_loss weighs).
  fwd_returns: np.ndarray
  instrument: np.ndarray    # Index into Dataset.instruments (int8, int16 past 127).
  timestamps: np.ndarray    # int64 ns of the window's last bar.
  signal_class: int = 1     # labels.signal_class of the run's classes.
  # Bars from t to the trade's exit: the barrier's exit_offset for triple_barrier,
  # the horizon for the other kinds; -1 where the label is unknown.
  exit_offsets: np.ndarray = None

  def __len__(self):
    return len(self.ends)

  @property
  def positive_rate(self):
    """Share of the signal class."""
    return float((self.labels == self.signal_class).mean()) if len(self) else float("nan")

  def summary(self):
    # Counted per class: np.bincount would cast every label to int64 first.
    top = int(self.labels.max()) if len(self) else -1
    counts = [int(np.count_nonzero(self.labels == c)) for c in range(top + 1)]
    return {"windows": len(self),
            "positives": counts[self.signal_class] if self.signal_class < len(counts) else 0,
            "positive_rate": self.positive_rate,
            "class_counts": counts,
            "start": _iso(self.timestamps.min()) if len(self) else None,
            "end": _iso(self.timestamps.max()) if len(self) else None}


@dataclasses.dataclass
class Dataset:
  features: np.ndarray      # [N, F] float32, normalised.
  splits: dict              # name → Split.
  instruments: list
  normalizer: dict
  window: int
  horizon: int
  num_classes: int = 2
  cuts: dict = None         # {"val_start", "test_start"}: int64 ns shared by all instruments.
  # How the series were made: "rolls" (per product: rule, adjustment, each roll, windows
  # dropped at rolls), "tick_sizes" (per instrument, and where from), "normalization".
  facts: dict = None

  @property
  def num_features(self):
    return self.features.shape[1]

  def windows(self, split, idx):
    """[len(idx), T, F] windows of the samples `idx` of `split` (a gather, no copy on disk)."""
    ends = self.splits[split].ends[idx]
    rows = ends[:, None] + np.arange(-self.window + 1, 1)[None, :]
    return self.features[rows]

  def summary(self):
    out = {"instruments": list(self.instruments), "window": self.window,
           "horizon": self.horizon, "num_features": self.num_features,
           "feature_names": list(self.normalizer.get("feature_names")
                                 or features_lib.FEATURE_NAMES),
           "bars": int(self.features.shape[0]),
           "splits": {n: s.summary() for n, s in self.splits.items()}}
    if self.cuts is not None:
      out["cuts"] = {k: _iso(v) for k, v in self.cuts.items()}
    out.update(self.facts or {})
    return out


def _iso(ns):
  return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def ingest_flags(data_dir):
  """What ingest flagged in data_dir (its manifest.json): ({reason: count}, first message);
  ({}, None) for synthetic data or an older ingest."""
  try:
    with open(os.path.join(data_dir, "manifest.json")) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return {}, None
  flagged = manifest.get("flagged") or {}
  first = next((m for e in manifest.get("shards") or [] for m in e.get("flag_messages") or []),
               None)
  return flagged, first


def describe_data(ds, data_dir):
  """One line: where the data is, how much, each split's size and positive rate, and what
  ingest flagged as suspicious (long gaps, absurd bars)."""
  if isinstance(ds, sample_set.SampleDataset):
    return sample_set.describe_samples(ds, data_dir)
  parts = [f"{name} {s['windows']:,} windows ({s['positive_rate']:.1%} positive)"
           for name, s in ds.summary()["splits"].items()]
  line = (f"Data {data_dir}: {len(ds.instruments)} instruments, {ds.features.shape[0]:,} "
          "bars; " + "; ".join(parts))
  flagged, first = ingest_flags(data_dir)
  if flagged:
    line += ("; ingest flagged " + ", ".join(f"{n} {k}" for k, n in flagged.items())
             + (f" (first: {first}; all in manifest.json)" if first else ""))
  return line + _facts_text(ds.facts or {})


def _facts_text(facts):
  """The rolls, fallback tick sizes and per-instrument normalisation, for describe_data."""
  out = ""
  for prod, r in (facts.get("rolls") or {}).items():
    out += (f"; {prod}: {len(r['contracts'])} contracts, {len(r['rolls'])} rolls by "
            f"{r['by']}, adjust {r['adjust']}")
    if r.get("windows_dropped") is not None:
      out += (f" ({sum(r['windows_dropped'].values()):,} windows crossing a roll dropped: "
              + ", ".join(f"{k} {v:,}" for k, v in r["windows_dropped"].items()) + ")")
  ticks = facts.get("tick_sizes") or {}
  fallback = sorted(n for n, t in ticks.items() if t["from"] != instruments_lib.TABLE_FILE)
  if fallback:
    out += (f"; tick size {ticks[fallback[0]]['tick_size']:g} (data.tick_size, no "
            f"{instruments_lib.TABLE_FILE} figure) for " + ", ".join(fallback))
  if facts.get("normalization") == "per_instrument":
    out += "; normalised per instrument"
  return out


def resolve_data_dir(data_config):
  """The shard directory a config reads (synthetic data gets a name from its parameters)."""
  if data_config.dir:
    return data_config.dir
  if data_config.source != "synthetic":
    raise ValueError("config.data.dir must be set when config.data.source is "
                     f"{data_config.source!r}")
  s = data_config.synth
  return os.path.join("data", f"synthetic-i{s.instruments}-d{s.days}-s{s.signal:g}-seed{s.seed}")


def ensure_data(data_config, log=print):
  """Makes sure the shards exist: generates synthetic data on first use, checks it after.

  Returns:
    The shard directory.
  """
  data_dir = resolve_data_dir(data_config)
  if data_config.source == "synthetic":
    s = data_config.synth
    wanted = {"instruments": s.instruments, "days": s.days, "signal": float(s.signal),
              "seed": s.seed}
    manifest_path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(manifest_path):
      log(f"Generating the synthetic market in {data_dir} ({s.instruments} instruments, "
          f"{s.days} days, signal={s.signal:g}, seed={s.seed}) ...")
      synth.write_market(data_dir, **wanted, progress=True)
    else:
      with open(manifest_path) as f:
        manifest = json.load(f)
      have = {k: manifest.get(k) for k in wanted}
      if have != wanted:
        raise ValueError(f"data.dir {data_dir} holds synthetic data made with {have}, but "
                         f"the config asks for {wanted}; point config.data.dir elsewhere")
      if shards.MANIFEST_KEY not in manifest:  # The same market as .jqs shards: made anew.
        log(f"Writing the synthetic market in {data_dir} again as Parquet shards ...")
        synth.write_market(data_dir, **wanted, progress=True)
  elif data_config.source not in ("shards", "samples"):
    raise ValueError(f"config.data.source={data_config.source!r}: use 'synthetic', 'shards' "
                     "or 'samples'")
  elif not os.path.isdir(data_dir):
    raise ValueError(f"config.data.dir={data_dir!r} does not exist")
  return data_dir


def label_config(data_config):
  """The label settings of config.data, under the names labels.make_labels reads."""
  return {"kind": data_config.label_kind, "horizon": data_config.horizon,
          "threshold": data_config.label_threshold, "take_profit": data_config.take_profit,
          "stop_loss": data_config.stop_loss, "barrier_units": data_config.barrier_units,
          "tick_size": data_config.tick_size, "barrier_binary": data_config.barrier_binary}


def _label_series(data_config, data_dir, loaded, facts):
  """Per series of `loaded`, one at a time: (name, timestamps, bars, labels [n], trade
  returns [n], exit offsets [n], number of classes); tick-unit barriers use each
  instrument's tick size (recorded in facts["tick_sizes"])."""
  table = None
  if data_config.label_kind == "triple_barrier" and data_config.barrier_units == "ticks":
    table, facts["tick_sizes"] = instruments_lib.load_table(data_dir), {}
  for name, ts, bars in loaded:
    lab_config = label_config(data_config)
    if table is not None:  # Each instrument's own tick (instruments.csv), else data.tick_size.
      facts["tick_sizes"][name] = instruments_lib.tick_size(table, name, data_config.tick_size)
      lab_config["tick_size"] = facts["tick_sizes"][name]["tick_size"]
    try:
      lab = labels_lib.make_labels(lab_config, bars)
    except ValueError as e:
      raise ValueError(str(e).replace("config.data.kind", "config.data.label_kind")) from None
    if "exit_return" in lab:
      # Triple barrier: the trade exits at the barrier (or the time limit), so the
      # split's return is the exit return, not the plain horizon return.
      ret, off = lab["exit_return"], lab["exit_offset"]
    else:
      ret = lab["fwd_return"]
      off = np.where(lab["labels"] >= 0, np.int32(data_config.horizon), np.int32(-1))
    labels, num_classes = lab["labels"], lab["num_classes"]
    del lab
    yield name, ts, bars, labels, ret, off, num_classes
    # Gone before the next series is read: one series in memory at a time.
    ts = bars = labels = ret = off = None


def _load_series(data_config, data_dir):
  """Per instrument: (name, timestamps, labels [n], trade returns [n], exit offsets [n])
  (features come later: feature_pass.SeriesFeatures), the number of classes, and the facts
  (Dataset.facts, plus each product's "roll_rows"): the contracts of a product
  (manifest "products") become one series (rolls.join_products)."""
  out, num_classes = [], 2
  facts = {"normalization": data_config.get("normalization", "pooled"), "rolls": {}}
  loaded = feature_pass.series_bars(data_config, data_dir, facts["rolls"])
  for name, ts, bars, labels, ret, off, num_classes in _label_series(data_config, data_dir,
                                                                     loaded, facts):
    out.append((name, ts, labels, ret, off))
    del bars  # Before the next series is read.
  return out, num_classes, facts


def _label_hint(data_config, more):
  """What to change in config.data for more (or fewer) signal-class windows."""
  if data_config.label_kind == "triple_barrier":
    return (f"{'lower' if more else 'raise'} config.data.take_profit "
            f"(now {data_config.take_profit:g}) or {'raise' if more else 'lower'} "
            f"config.data.stop_loss (now {data_config.stop_loss:g}), or use more data")
  return (f"{'lower' if more else 'raise'} config.data.label_threshold "
          f"(now {data_config.label_threshold:g}), a longer horizon or more data" if more
          else f"raise config.data.label_threshold (now {data_config.label_threshold:g})")


def check_positives(split, data_config, data_dir):
  """Refuses a split with no signal-class window (nothing to learn, a threshold chosen on
  nothing, an F1 of nothing) or only signal-class windows (any model scores a perfect F1
  by always signalling): one line naming the split, its counts and what to change.

  Raises:
    ValueError: the split is degenerate.
  """
  known = split.labels[split.labels >= 0]
  pos = int((known == split.signal_class).sum())
  if 0 < pos < len(known):
    return
  what = {"train": "nothing to learn", "val": "no threshold can be chosen on it",
          "test": "no score can be measured on it", "all": "no score can be measured on it"}
  counts = (f"{split.name} split of {data_dir} has {pos:,} positive (signal class "
            f"{split.signal_class}) windows of {len(known):,}, class counts "
            f"{np.bincount(known, minlength=split.signal_class + 1).tolist()}")
  if pos == 0:
    raise ValueError(f"{counts}: {what.get(split.name, what['all'])}; "
                     f"{_label_hint(data_config, more=True)}")
  raise ValueError(f"{counts}: every window is positive, so always signalling scores a "
                   f"perfect F1; {_label_hint(data_config, more=False)}")


def build_dataset(data_config, data_dir, normalizer=None, check_labels=True):
  """Loads shards, computes features and labels and splits them in time.

  All instruments are cut at the same two timestamps (splits.calendar_segments);
  each keeps the windows whose footprint lies inside its own share of a period.

  Args:
    data_config: config.data.
    data_dir: shard directory.
    normalizer: statistics to apply (from a checkpoint); None fits them on the
      training split of this data.
    check_labels: refuse a split with no or only signal-class windows (check_positives);
      False only for tests of the split geometry on arbitrary tiny markets.

  Returns:
    A Dataset with splits train / val / test and the cut timestamps.

  Raises:
    ValueError: a split has no window in any instrument, or no or only signal-class
      windows (check_positives).
  """
  if data_config.source == "samples":
    return _sample_dataset(data_config, data_dir, normalizer, None, check_labels)
  T, h = data_config.window, data_config.horizon
  if normalizer is not None:
    features_lib.check_normalizer(normalizer, data_config.get("features", "default"))
  # Three reads, one series in memory at a time (feature_pass): the timestamps, then
  # the labels and the training rows' moments, then the normalised features.
  facts = {"normalization": data_config.get("normalization", "pooled"), "rolls": {}}
  names, stamps = [], []
  for name, ts, bars in feature_pass.series_bars(data_config, data_dir, facts["rolls"]):
    names.append(name)
    stamps.append(ts)
    ts = bars = None
  crossing, facts = rolls_lib.crossing_rows(facts)
  ends, train_rows, cuts = split_plan.split_ends(data_config, data_dir, names, stamps,
                                                 crossing, facts)
  lengths = [len(ts) for ts in stamps]
  del stamps
  # Each split's columns filled in place, a series at a time (no second copy).
  dtypes = split_columns.column_dtypes(sum(lengths), len(names), h)
  cols = {split: split_columns.empty_columns(sum(map(len, ends[split])), dtypes)
          for split in splits_lib.SPLITS}
  starts, filled, moments = np.cumsum([0] + lengths), dict.fromkeys(splits_lib.SPLITS, 0), []
  # The pooled matrix, too, before the passes' temporaries: where the process keeps freed
  # memory (host_memory), they then reuse one region above the long-lived arrays.
  out = feature_pass.empty_matrix(data_config, int(starts[-1]), normalizer, facts)
  i = -1  # (No enumerate: its cached tuple would keep the previous series alive.)
  for name, ts, bars, labels, ret, off, num_classes in _label_series(
      data_config, data_dir, feature_pass.reread(data_config, data_dir, names, lengths), facts):
    i += 1
    for split in splits_lib.SPLITS:
      filled[split] = split_columns.fill_series(cols[split], filled[split], starts[i],
                                                ends[split][i], labels, ret, off, ts, i)
    if normalizer is None:  # Bars before the first cut.
      moments.append(feature_pass.series_moments(data_config, name, ts, bars, train_rows[i]))
    ts = bars = labels = ret = off = None  # Before the next series is read.
  ends = None
  split_objs = {split: Split(split, **cols.pop(split), signal_class=labels_lib.signal_class(
      num_classes)) for split in splits_lib.SPLITS}
  for split, s in split_objs.items():
    if check_labels:  # Before any model is built: training on it would report nonsense.
      check_positives(s, data_config, data_dir)
  feats = feature_pass.SeriesFeatures(data_config, data_dir, names, lengths)
  if normalizer is None:
    fnames = features_lib.feature_names(data_config.get("features", "default"))
    normalizer = features_lib.pooled_normalizer(moments, names=fnames)
    if facts["normalization"] == "per_instrument":  # Each on its own training bars.
      normalizer = instruments_lib.fit_per_instrument(
          feats, names, [np.concatenate([np.arange(a, b) for a, b in r] + [np.arange(0)])
                         for r in train_rows], normalizer, fnames)
  return Dataset(features=_normalize(feats, names, normalizer, data_dir, int(starts[-1]), out),
                 splits=split_objs, instruments=names, normalizer=normalizer, window=T,
                 horizon=h, num_classes=num_classes, cuts=cuts,
                 facts=_normalization_fact(facts, normalizer))


def _normalize(feats, names, normalizer, data_dir, rows, out=None):
  """Normalised features by the normaliser's kind (a checkpoint's decides, not the config)."""
  if normalizer.get("kind") == "per_instrument":
    return instruments_lib.normalize_per_instrument(feats, names, normalizer, data_dir, rows)
  return feats.normalized(normalizer, rows, out)  # No float64 copy of all (feature_pass).


def _normalization_fact(facts, normalizer):
  return {**facts, "normalization": normalizer.get("kind", "pooled")}


def build_inference_set(data_config, data_dir, normalizer, labelled_only=False):
  """Every window of other data as one split "all", through a saved normaliser.

  Args:
    labelled_only: keep only windows whose forward return is known (evaluation);
      otherwise the most recent windows are kept too, with label -1 (prediction).
  """
  if data_config.source == "samples":
    return _sample_dataset(data_config, data_dir, normalizer,
                           "labelled" if labelled_only else "all", labelled_only)
  T, h = data_config.window, data_config.horizon
  parts, names, offset = [], [], 0  # parts: each series' window ends.
  series, num_classes, facts = _load_series(data_config, data_dir)
  feats = feature_pass.SeriesFeatures(data_config, data_dir, [s[0] for s in series],
                                      [len(s[1]) for s in series])
  crossing, facts = rolls_lib.crossing_rows(facts)
  for name, ts, labels, ret, off in series:
    names.append(name)
    last = len(ts) - 1 - (h if labelled_only else 0)
    parts.append(rolls_lib.keep_clear(np.arange(T, last + 1, dtype=np.int64), name, crossing,
                                      facts, "all", T, h))
  cols = split_columns.empty_columns(sum(map(len, parts)), split_columns.column_dtypes(
      sum(len(s[1]) for s in series), len(series), h))
  row = 0
  for inst_id, ((name, ts, labels, ret, off), t) in enumerate(zip(series, parts)):
    row = split_columns.fill_series(cols, row, offset, t, labels, ret, off, ts, inst_id)
    offset += len(ts)
  del series, parts
  split = Split("all", **cols, signal_class=labels_lib.signal_class(num_classes))
  if len(split) == 0:
    raise ValueError(f"{data_dir} has no complete window of {T} bars"
                     + (f" with a {h}-bar forward return" if labelled_only else ""))
  if labelled_only:  # Evaluation data scored by F1: as degenerate as a test split would be.
    check_positives(split, data_config, data_dir)
  features_lib.check_normalizer(normalizer, data_config.get("features", "default"))
  return Dataset(features=_normalize(feats, names, normalizer, data_dir, offset),
                 splits={"all": split}, instruments=names, normalizer=normalizer,
                 window=T, horizon=h, num_classes=num_classes,
                 facts=_normalization_fact(facts, normalizer))


def _sample_dataset(data_config, data_dir, normalizer, whole, check_labels):
  """data.source="samples": the packed samples (sample_set), with Split objects as here."""
  k = labels_lib.class_count(label_config(data_config))
  ds = sample_set.load_sample_set(data_config, data_dir, k, normalizer, whole)
  ds.splits = {n: Split(n, **cols, signal_class=labels_lib.signal_class(k))
               for n, cols in ds.splits.items()}
  for s in ds.splits.values():
    if check_labels:
      check_positives(s, data_config, data_dir)
  return ds
