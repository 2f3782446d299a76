"""The packed samples of a folder (`samples.parquet`) as a dataset, for `data.source="samples"`.

The same interface as `dataset.Dataset` (`splits`, `windows(split, idx)`, `normalizer`,
`summary()`, ...), so the loader, the steps, evaluation and prediction take either.
A sample here is stored whole: `windows` returns the normalised stored samples.

Order and split: by the samples' times (from the file, else from the name:
`samples.name_time`) when every sample has one, else by file name, with a warning.
Train / val / test are the first, middle and last `data.val_fraction` /
`data.test_fraction` shares of the ordered samples; `data.embargo` samples are dropped
after each cut. A sample is a window of bars, so neighbouring samples overlap: with
embargo 0 the last training samples share bars with the first validation ones.
"""

import dataclasses
import json
import os

import numpy as np

from jaxquant.data import samples as samples_lib
from jaxquant.data import splits as splits_lib

NAT = np.iinfo(np.int64).min  # Timestamp of a sample ordered by name (prints as NaT).
_CHUNK = 1024  # Samples summed at a time: bounds the float64 scratch (40 MiB at [500, 10]).


@dataclasses.dataclass
class SampleDataset:
  """Packed samples, normalised and split: what `dataset.Dataset` is for bar shards."""
  samples: np.ndarray       # [N, T, F] float32, normalised, in time order.
  splits: dict              # name → dataset.Split; `ends` is a row of `samples`.
  instruments: list         # Sample names (predictions name each sample).
  normalizer: dict
  window: int
  horizon: int
  num_classes: int = 2
  cuts: dict = None         # {"val_start", "test_start"} int64 ns when ordered by time.
  order: str = "time"       # "time" or "name".
  has_returns: bool = True  # False: no sample carries a return (trading figures are 0).
  notes: list = dataclasses.field(default_factory=list)

  @property
  def num_features(self):
    return self.samples.shape[2]

  def windows(self, split, idx):
    """[len(idx), T, F] stored samples `idx` of `split` (normalised)."""
    return self.samples[self.splits[split].ends[idx]]

  def summary(self):
    out = {"source": "samples", "samples": int(self.samples.shape[0]), "order": self.order,
           "window": self.window, "horizon": self.horizon, "num_features": self.num_features,
           "feature_names": list(self.normalizer.get("feature_names") or []),
           "returns": self.has_returns, "notes": list(self.notes),
           "splits": {n: s.summary() for n, s in self.splits.items()}}
    if self.cuts is not None:
      out["cuts"] = {k: str(np.datetime64(int(v), "ns").astype("datetime64[s]"))
                     for k, v in self.cuts.items()}
    return out


def describe_samples(ds, data_dir):
  """What a run logs about its samples (dataset.describe_data for data.source="samples").

  Args:
    ds: a SampleDataset.
    data_dir: its folder.

  Returns:
    One line (where, how many, how ordered, each split's size and positive rate), then
    one `warning: ...` line per note (name order, embargo 0, no returns).
  """
  parts = [f"{name} {s['windows']:,} samples ({s['positive_rate']:.1%} positive)"
           for name, s in ds.summary()["splits"].items()]
  n, T, F = ds.samples.shape
  line = (f"Data {data_dir}: {n:,} samples [T={T}, F={F}] ordered by {ds.order}; "
          + "; ".join(parts))
  return "\n".join([line] + [f"warning: {w}" for w in ds.notes])


def _manifest_sha256(data_dir):
  try:
    with open(os.path.join(data_dir, "manifest.json")) as f:
      return (json.load(f).get("samples") or {}).get("sha256")
  except (OSError, ValueError):
    return None


def _order(packed, path):
  """(row order, timestamps in that order, "time" | "name", warnings)."""
  ts, names = packed["timestamps"], packed["names"]
  missing = ts == NAT
  if len(ts) and not missing.any():
    order = np.lexsort((np.asarray(names), ts))
    return order, ts[order], "time", []
  order = np.argsort(np.asarray(names), kind="stable")
  first = names[int(np.argmax(missing))] if len(ts) else ""
  why = (f"{int(missing.sum()):,} of {len(ts):,} samples of {path} have no time (none in the "
         f"file as t/time/timestamp, none in the name as YYYYMMDD[_HHMM[SS]] or epoch "
         f"seconds/ms; first: {first}): ordered and split by file name, which is only "
         "chronological if the names sort in time")
  return order, np.full(len(ts), NAT, np.int64), "name", [why]


def _fit(x, rows):
  """Per-feature mean and std over every bar of the samples `rows` (float64 sums)."""
  F = x.shape[-1]
  count = len(rows) * x.shape[1]
  if count == 0:
    raise ValueError("cannot fit the normaliser: the training split has no samples")
  # Sums of x - shift (the first sample's mean, in x's dtype): centred values, so
  # E[d²] - E[d]² does not cancel even for price levels (mean >> std).
  shift = x[rows[0]].reshape(-1, F).mean(axis=0).astype(x.dtype)
  total, sq = np.zeros(F), np.zeros(F)
  for a in range(0, len(rows), _CHUNK):
    d = x[rows[a:a + _CHUNK]] - shift
    total += d.sum(axis=(0, 1), dtype=np.float64)
    sq += np.einsum("ntf,ntf->f", d, d, dtype=np.float64)
  mean = total / count
  std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
  std = np.where(std > 1e-12, std, 1.0)  # A constant feature stays 0 after centring.
  return {"mean": (mean + shift).tolist(), "std": std.tolist(),
          "feature_names": [f"f{j}" for j in range(F)]}


def _normalized(x, order, normalizer, path):
  """(x[order] - mean) / std as float32."""
  mean = np.asarray(normalizer["mean"], np.float64)
  std = np.asarray(normalizer["std"], np.float64)
  if x.shape[-1] != mean.shape[0]:
    raise ValueError(f"{path}: samples have {x.shape[-1]} features but the normaliser "
                     f"(the run's checkpoint) has {mean.shape[0]}")
  out = np.empty((len(order),) + x.shape[1:], np.float32)
  np.take(x, order, axis=0, out=out, mode="clip")
  # In place, in float32, as exact as float64 then rounding: x - hi is exact where x is
  # near the mean (Sterbenz) and has one rounding elsewhere; lo = mean - hi is the rest.
  hi = mean.astype(np.float32)
  out -= hi
  out -= (mean - hi).astype(np.float32)
  out *= (1.0 / std).astype(np.float32)
  return out


def _columns(rows, labels, returns, ts, horizon):
  """A split's columns, in dataset.Split's names (`ends` = row of the ordered samples)."""
  return {"ends": rows, "labels": labels[rows].astype(np.int32), "fwd_returns": returns[rows],
          "instrument": rows.astype(np.int32), "timestamps": ts[rows],
          "exit_offsets": np.where(labels[rows] >= 0, horizon, -1).astype(np.int32)}


def load_sample_set(data_config, data_dir, num_classes, normalizer=None, whole=None):
  """Reads `data_dir/samples.parquet` and splits (or, with `whole`, keeps) its samples.

  Args:
    data_config: config.data (window, horizon, fractions, embargo).
    data_dir: an ingested folder (samples.parquet, manifest.json with its sha256).
    num_classes: classes of config.data.label_kind; every label must be below it.
    normalizer: statistics to apply (from a checkpoint); None fits them on the
      training samples.
    whole: None: train / val / test, every sample labelled (training, evaluation);
      "labelled": every labelled sample as split "all"; "all": every sample as split
      "all", label -1 where it has none (prediction).

  Returns:
    A SampleDataset whose `splits` hold column dicts (dataset.build_dataset makes
    them Split objects).

  Raises:
    samples.SampleFileError: the file is missing or corrupt.
    ValueError: missing labels, a label of another label kind, a stored window
      other than data.window, or an empty split (one line each).
  """
  path = os.path.join(data_dir, samples_lib.SAMPLE_FILE)
  packed = samples_lib.read_samples(path, _manifest_sha256(data_dir))
  x, names = packed["x"], packed["names"]
  if x.ndim == 2:
    x = x[:, :, None]  # [T] samples: one feature.
  n, T = x.shape[0], x.shape[1]
  if T != data_config.window:
    raise ValueError(f"{path} stores samples of T={T} bars (shape {list(x.shape[1:])}), but "
                     f"config.data.window={data_config.window}; set --config.data.window={T}")
  labels, returns = packed["labels"], packed["returns"]
  unlabelled = labels < 0
  if whole is None and unlabelled.any():
    first = names[int(np.argmax(unlabelled))]
    raise ValueError(f"{path}: {int(unlabelled.sum()):,} of {n:,} samples carry no label "
                     f"(first: {first}); training and evaluation need a y or label in every "
                     "sample file (--mode=predict takes unlabelled samples)")
  if (labels >= num_classes).any():
    k = int(np.argmax(labels >= num_classes))
    raise ValueError(f"{path}: sample {names[k]} has label {labels[k]}, but "
                     f"config.data.label_kind={data_config.label_kind!r} has classes "
                     f"0..{num_classes - 1}; set config.data.label_kind to match the labels")
  order, ts, how, notes = _order(packed, path)
  has_returns = bool(np.isfinite(returns).any())
  if not has_returns:
    notes.append(f"no sample of {path} carries a return (r/ret/return/fwd_return): the "
                 "trading figures (mean return, profit/loss ratio) read 0")
  returns = np.nan_to_num(returns, nan=0.0)
  labels, returns, names = labels[order], returns[order], [names[i] for i in order]
  if whole is not None:
    keep = np.arange(n) if whole == "all" else np.flatnonzero(labels >= 0)
    if len(keep) == 0:
      raise ValueError(f"{path} holds no " + ("" if whole == "all" else "labelled ")
                       + "sample")
    parts, cuts = {"all": _columns(keep, labels, returns, ts, data_config.horizon)}, None
  else:
    segs = splits_lib.segments(n, data_config.val_fraction, data_config.test_fraction,
                               data_config.embargo)
    b1, b2 = segs["train"][1], segs["val"][1]
    if how == "time":  # Samples of one time go to the later split, never both sides.
      b1, b2 = (int(np.searchsorted(ts, ts[b], "left")) if b < n else n for b in (b1, b2))
      segs = {"train": (0, b1), "val": (min(b1 + data_config.embargo, b2), b2),
              "test": (min(b2 + data_config.embargo, n), n)}
    parts = {}
    for split, (a, b) in segs.items():
      if b <= a:
        raise ValueError(
            f"no {split} samples: {path} holds {n:,} samples, {split} gets [{a}, {b}) of them "
            f"(val_fraction={data_config.val_fraction}, test_fraction="
            f"{data_config.test_fraction}, embargo={data_config.embargo} samples dropped "
            "after each cut); use more samples or other fractions")
      parts[split] = _columns(np.arange(a, b), labels, returns, ts, data_config.horizon)
    cuts = ({"val_start": int(ts[b1]) if b1 < n else int(ts[-1]) + 1,
             "test_start": int(ts[b2]) if b2 < n else int(ts[-1]) + 1}
            if how == "time" else None)
    if data_config.embargo == 0:
      notes.append("data.embargo=0: neighbouring samples are overlapping windows of bars, "
                   "so the samples on either side of a cut may share bars; set "
                   "--config.data.embargo to the samples one window + horizon spans")
  if normalizer is None:  # (Prediction and evaluation on other data pass the run's.)
    normalizer = _fit(x, order[parts["train"]["ends"]])
  return SampleDataset(samples=_normalized(x, order, normalizer, path), splits=parts,
                       instruments=names, normalizer=normalizer, window=T,
                       horizon=data_config.horizon, num_classes=num_classes, cuts=cuts,
                       order=how, has_returns=has_returns, notes=notes)
