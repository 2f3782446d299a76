"""From a shard directory to normalised features and chronologically split samples.

Features of all instruments live in one [N, F] float32 array; a sample is just the
row index of its window's last bar, so overlapping windows are never copied.
"""

import dataclasses
import json
import os

import numpy as np

from jaxquant.data import features as features_lib
from jaxquant.data import labels as labels_lib
from jaxquant.data import shards
from jaxquant.data import splits as splits_lib
from jaxquant.data import synth


@dataclasses.dataclass
class Split:
  """Samples of one split. All arrays are [n] and aligned."""
  name: str
  ends: np.ndarray          # Row of the window's last bar in Dataset.features.
  labels: np.ndarray        # int32 class.
  fwd_returns: np.ndarray   # float64 forward return over the horizon.
  instrument: np.ndarray    # int32 index into Dataset.instruments.
  timestamps: np.ndarray    # int64 ns of the window's last bar.

  def __len__(self):
    return len(self.ends)

  @property
  def positive_rate(self):
    return float(self.labels.mean()) if len(self) else float("nan")

  def summary(self):
    return {"windows": len(self), "positives": int(self.labels.sum()),
            "positive_rate": self.positive_rate,
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

  @property
  def num_features(self):
    return self.features.shape[1]

  def windows(self, split, idx):
    """[len(idx), T, F] windows of the samples `idx` of `split` (a gather, no copy on disk)."""
    ends = self.splits[split].ends[idx]
    rows = ends[:, None] + np.arange(-self.window + 1, 1)[None, :]
    return self.features[rows]

  def summary(self):
    return {"instruments": list(self.instruments), "window": self.window,
            "horizon": self.horizon, "num_features": self.num_features,
            "feature_names": list(features_lib.FEATURE_NAMES),
            "bars": int(self.features.shape[0]),
            "splits": {n: s.summary() for n, s in self.splits.items()}}


def _iso(ns):
  return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


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
  elif data_config.source != "shards":
    raise ValueError(f"config.data.source={data_config.source!r}: use 'synthetic' or 'shards'")
  elif not os.path.isdir(data_dir):
    raise ValueError(f"config.data.dir={data_dir!r} does not exist")
  return data_dir


def build_dataset(data_config, data_dir, normalizer=None):
  """Loads shards, computes features and labels and splits them in time.

  Args:
    data_config: config.data.
    data_dir: shard directory.
    normalizer: statistics to apply (from a checkpoint); None fits them on the
      training split of this data.

  Returns:
    A Dataset.
  """
  T, h = data_config.window, data_config.horizon
  series = shards.load_dir(data_dir)
  feats, parts, names = [], {n: [] for n in splits_lib.SPLITS}, []
  train_rows, offset = [], 0
  for inst_id, (name, ts, bars) in enumerate(series):
    names.append(name)
    f = features_lib.bar_features(bars)
    fwd = labels_lib.forward_return(bars[:, 3], h)
    segs = splits_lib.segments(len(bars), data_config.val_fraction,
                               data_config.test_fraction, data_config.embargo)
    for split in splits_lib.SPLITS:
      t = splits_lib.window_ends(segs[split], T, h)
      parts[split].append((offset + t, labels_lib.binary_labels(fwd[t], data_config.label_threshold),
                           fwd[t], np.full(len(t), inst_id, np.int32), ts[t]))
    train_rows.append(offset + np.arange(*segs["train"]))
    feats.append(f)
    offset += len(bars)
  features = np.concatenate(feats)
  if normalizer is None:
    normalizer = features_lib.fit_normalizer(features, np.concatenate(train_rows))
  split_objs = {}
  for split, p in parts.items():
    cols = [np.concatenate(c) for c in zip(*p)]
    split_objs[split] = Split(split, *cols)
  if len(split_objs["train"]) == 0:
    raise ValueError(f"no training windows: {data_dir} has too few bars per instrument for "
                     f"window={T} + horizon={h} (train share of "
                     f"{1 - data_config.val_fraction - data_config.test_fraction:.0%})")
  return Dataset(features=features_lib.normalize(features, normalizer), splits=split_objs,
                 instruments=names, normalizer=normalizer, window=T, horizon=h)
