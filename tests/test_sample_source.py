"""data.source="samples": the original's folder of per-sample .zst files trains, evaluates
and predicts (jaxquant.data.sample_set); order, split, embargo, normalisation on train."""

import datetime
import io
import json
import os

import numpy as np
import pytest
import zstandard

from configs import resnet
from conftest import tiny_config
from jaxquant import evaluate
from jaxquant import train
from jaxquant.data import dataset
from jaxquant.data import ingest
from jaxquant.data import loader
from jaxquant.data import samples
from jaxquant.models import planes

T, F = 16, 10  # The original's 10 feature channels; a short window keeps the test fast.
T0 = np.datetime64("2021-01-04T09:00", "ns")


def _write(folder, name, **arrays):
  buf = io.BytesIO()
  if set(arrays) == {"x"}:
    np.save(buf, arrays["x"])  # A bare .npy: no label, no time.
  else:
    np.savez(buf, **arrays)
  with open(os.path.join(folder, name), "wb") as f:
    f.write(zstandard.ZstdCompressor(level=3).compress(buf.getvalue()))


def original_folder(folder, n, seed=0, time_in="file", labels=True):
  """n one-sample files as the original stored them: a zstd-compressed .npz of one
  [T, F] float32 window with its class (return > 0.006 → 1, about 10 % positive) and
  the return, taken one minute apart. time_in: "file" (a `t` key; names shuffled
  against time), "name" (rb_YYYYMMDD_HHMMSS.zst; names with two prefixes, so name
  order is not time order) or "none" (s000123.zst, in time order).

  Returns:
    (x [n, T, F] in time order, labels [n], returns [n], names [n] in time order).
  """
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(n, T, F)).astype(np.float32) * np.arange(1, F + 1, dtype=np.float32)
  y = (rng.random(n) < 0.1).astype(np.int64)
  y[:3], y[-3:] = 1, 1
  xs[:, -4:, 0] += 1.5 * y[:, None]  # A weak, learnable signal in the last bars.
  xs[:, :, 1] += 4000.0  # A price level: mean >> std.
  r = rng.normal(0, 0.004, n) + 0.008 * y
  names = []
  for i in range(n):
    t = T0 + np.timedelta64(i, "m")
    if time_in == "file":
      name = f"sample_{(i * 7919) % n:06d}.zst"
    elif time_in == "name":
      stamp = t.astype("datetime64[s]").astype(datetime.datetime).strftime("%Y%m%d_%H%M%S")
      name = f"{'ab'[i % 2]}_{stamp}.zst"
    else:
      name = f"s{i:06d}.zst"
    names.append(name)
    if not labels:
      _write(folder, name, x=xs[i])
    elif time_in == "file":
      _write(folder, name, x=xs[i], y=y[i], r=r[i], t=t)
    else:
      _write(folder, name, x=xs[i], y=y[i], r=r[i])
  return xs, y, r, names


def _config(data_dir, changes=None):
  return tiny_config(data_dir, {"data.source": "samples", "data.window": T,
                                "data.embargo": 2, **(changes or {})})


def _ingested(tmp_path, n=40, **kw):
  folder, out = tmp_path / "folder", tmp_path / "data"
  raw = original_folder(folder, n, **kw)
  summary = ingest.ingest([str(folder)], str(out))
  return raw, summary, out


def test_original_folder_trains_evaluates_and_predicts(tmp_path):
  """2,000 loose files → ingest → a tiny run → eval → predict, all through sample_set."""
  x, y, r, names = original_folder(tmp_path / "folder", 2000)
  summary = ingest.ingest([str(tmp_path / "folder")], str(tmp_path / "data"))
  assert summary["samples"]["num_samples"] == 2000 and summary["samples"]["order"] == "time"
  config = _config(tmp_path / "data", {"data.sampler": "stratified", "train.batch_size": 32,
                                       "data.positives_per_batch": 4})
  workdir = str(tmp_path / "run")
  report = train.train_and_evaluate(config, workdir)
  splits = report["data"]["splits"]
  # 70 / 15 / 15 % of 2,000 in time order, 2 samples dropped after each cut.
  assert [splits[s]["windows"] for s in ("train", "val", "test")] == [1400, 298, 298]
  assert splits["train"]["positives"] == int(y[:1400].sum())
  assert splits["test"]["start"] == str((T0 + np.timedelta64(1702, "m")).astype("datetime64[s]"))
  assert report["data"]["order"] == "time" and 0.0 <= report["test"]["roc_auc"] <= 1.0
  again = evaluate.evaluate(workdir)  # --mode=eval: same data, same checkpoint, same numbers.
  assert again["test"]["roc_auc"] == report["test"]["roc_auc"]
  assert again["test"]["confusion"] == report["test"]["confusion"]
  pred = evaluate.predict(workdir, data_dir=str(tmp_path / "data"))
  assert list(pred["instrument"]) == names  # Every sample, named, in time order.
  np.testing.assert_array_equal(pred["label"], y)
  np.testing.assert_allclose(pred["forward_return"], r)
  assert ((pred["probability"] >= 0) & (pred["probability"] <= 1)).all()
  with open(os.path.join(workdir, "predictions.csv")) as f:
    assert f.readline().startswith("instrument,timestamp") and \
        f.readline().startswith(f"{names[0]},2021-01-04T09:00:00,")


def test_order_by_time_in_the_file(tmp_path):
  (x, y, _, names), _, out = _ingested(tmp_path)
  ds = dataset.build_dataset(_config(out).data, str(out), check_labels=False)
  assert ds.order == "time" and ds.instruments == names
  assert sorted(names) != names  # The names alone would have given another order.
  tr = ds.splits["train"]
  np.testing.assert_array_equal(tr.timestamps, (T0 + np.arange(28) * np.timedelta64(1, "m"))
                                .astype(np.int64))
  np.testing.assert_array_equal(tr.labels, y[:28])


@pytest.mark.parametrize("name,expected", [
    ("rb_20210104_093000.zst", datetime.datetime(2021, 1, 4, 9, 30)),
    ("20210104T0931.zst", datetime.datetime(2021, 1, 4, 9, 31)),
    ("x20210104-093105y.zst", datetime.datetime(2021, 1, 4, 9, 31, 5)),
    ("day_20210104.zst", datetime.datetime(2021, 1, 4)),
    ("s_1609752600.zst", datetime.datetime(2021, 1, 4, 9, 30)),
    ("s_1609752600123.zst", datetime.datetime(2021, 1, 4, 9, 30, 0, 123000)),
    ("s00000001_20210104.zst", datetime.datetime(2021, 1, 4)),  # 00000001 is no date.
    ("s000123.zst", None), ("s_123456789.zst", None), ("20211341.zst", None)])
def test_time_in_the_name(name, expected):
  got = samples.name_time(name)
  want = None if expected is None else int(
      (expected - datetime.datetime(1970, 1, 1)) / datetime.timedelta(microseconds=1)) * 1000
  assert got == want


def test_order_by_time_in_the_name(tmp_path):
  (x, y, _, names), summary, out = _ingested(tmp_path, time_in="name")
  assert summary["samples"]["num_timed"] == 40
  ds = dataset.build_dataset(_config(out).data, str(out), check_labels=False)
  assert ds.order == "time" and ds.instruments == names and sorted(names) != names
  # Test: samples 36..39 (34 + embargo 2) in time order.
  np.testing.assert_allclose(ds.windows("test", np.arange(3)) * np.asarray(ds.normalizer["std"])
                             + np.asarray(ds.normalizer["mean"]), x[36:39], rtol=1e-5, atol=1e-5)


def test_no_time_orders_by_name_with_a_warning(tmp_path):
  (x, y, _, names), summary, out = _ingested(tmp_path, time_in="none")
  assert summary["samples"]["order"] == "name"
  assert "warning: 40 samples have no time" in ingest.format_summary(summary)
  ds = dataset.build_dataset(_config(out).data, str(out), check_labels=False)
  assert ds.order == "name" and ds.instruments == sorted(names) and ds.cuts is None
  line = dataset.describe_data(ds, str(out))
  assert "ordered by name" in line and "warning: 40 of 40 samples" in line
  assert "ordered and split by file name" in line
  assert ds.summary()["splits"]["train"]["start"] == "NaT"


def test_normaliser_fitted_on_the_training_samples_only(tmp_path):
  (x, y, _, _), _, out = _ingested(tmp_path)
  ds = dataset.build_dataset(_config(out).data, str(out), check_labels=False)
  train_x = x[:28].reshape(-1, F).astype(np.float64)  # 70 % of 40, in time order.
  # To float32 rounding of the centred values (1e-6 of a standard deviation).
  np.testing.assert_allclose(ds.normalizer["mean"], train_x.mean(0), rtol=0,
                             atol=1e-6 * train_x.std(0).min())
  np.testing.assert_allclose(ds.normalizer["std"], train_x.std(0), rtol=1e-6)
  assert not np.allclose(ds.normalizer["mean"], x.reshape(-1, F).mean(0), rtol=1e-3)
  want = ((x[30:34] - train_x.mean(0)) / train_x.std(0)).astype(np.float32)  # val: 28 + 2 ..
  np.testing.assert_allclose(ds.windows("val", np.arange(4)), want, rtol=1e-5, atol=1e-5)
  # Evaluation on other data goes through the saved statistics, not its own.
  other = dataset.build_inference_set(_config(out).data, str(out), ds.normalizer)
  np.testing.assert_allclose(other.windows("all", np.arange(40)),
                             ((x - train_x.mean(0)) / train_x.std(0)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("embargo,sizes,firsts", [
    (0, (14, 3, 3), (0, 14, 17)), (2, (14, 1, 1), (0, 16, 19)), (1, (14, 2, 2), (0, 15, 18))])
def test_embargo_drops_samples_after_each_cut(tmp_path, embargo, sizes, firsts):
  """20 samples, val = test = 15 %: cuts after sample 14 and 17 (round(20 · 0.7), 0.85)."""
  (x, *_), _, out = _ingested(tmp_path, n=20)
  ds = dataset.build_dataset(_config(out, {"data.embargo": embargo}).data, str(out),
                             check_labels=False)
  got = {s: ds.splits[s].ends for s in ("train", "val", "test")}
  assert tuple(len(v) for v in got.values()) == sizes
  assert tuple(int(v[0]) for v in got.values()) == firsts
  assert int(got["test"][-1]) == 19
  assert ("data.embargo=0" in " ".join(ds.notes)) == (embargo == 0)


def test_every_sampler_and_the_resnet_view(tmp_path):
  (x, y, _, _), _, out = _ingested(tmp_path, n=200)
  ds = dataset.build_dataset(_config(out).data, str(out))
  tr = ds.splits["train"]
  for sampler in ("shuffle", "stratified", "undersample", "oversample"):
    c = _config(out, {"data.sampler": sampler, "data.positives_per_batch": 3})
    plan = loader.train_plan(ds, c.data, 16, 0, 0)
    batch = next(iter(loader.train_batches(ds, plan)))
    idx = plan[0] % len(tr)
    np.testing.assert_array_equal(batch["x"], ds.samples[tr.ends[idx]])
    np.testing.assert_array_equal(batch["y"], y[tr.ends[idx]])
    if sampler == "stratified":
      assert (batch["y"] == 1).sum(axis=-1) == 3
  # The ResNet's view (configs/resnet.py): each stored [T, F] sample as H x W planes of F
  # channels, bar t at row t // W, column t % W (W = 8 in the quick config: 2 x 8 planes).
  width = resnet.get_config("quick").model.plane_width
  w = ds.windows("val", np.arange(4))
  p = np.asarray(planes.to_planes(w, width))
  assert p.shape == (4, T // width, width, F)
  for t in (0, 5, T - 1):
    np.testing.assert_array_equal(p[:, t // width, t % width], w[:, t])


def test_unlabelled_folder_is_refused_for_training_but_predicts(tmp_path):
  (x, *_), summary, out = _ingested(tmp_path, n=20, time_in="none", labels=False)
  assert summary["samples"]["num_labels"] == 0
  with pytest.raises(ValueError, match=r"samples\.parquet: 20 of 20 samples carry no label "
                                       r"\(first: s000000\.zst\)"):
    dataset.build_dataset(_config(out).data, str(out))
  norm = {"mean": [0.0] * F, "std": [1.0] * F}
  d = dataset.build_inference_set(_config(out).data, str(out), norm)
  assert (d.splits["all"].labels == -1).all() and len(d.splits["all"]) == 20
  with pytest.raises(ValueError, match="holds no labelled sample"):
    dataset.build_inference_set(_config(out).data, str(out), norm, labelled_only=True)
  # The run refuses before building a model (a ValueError: one `error:` line from the CLI).
  with pytest.raises(ValueError, match="carry no label"):
    train.train_and_evaluate(_config(out), str(tmp_path / "run"))


def test_window_and_label_kind_must_match_the_samples(tmp_path):
  _, _, out = _ingested(tmp_path, n=20)
  with pytest.raises(ValueError, match=r"stores samples of T=16 bars \(shape \[16, 10\]\), but "
                                       r"config\.data\.window=20; set --config\.data\.window=16"):
    dataset.build_dataset(_config(out, {"data.window": 20}).data, str(out))
  folder = tmp_path / "three"
  os.makedirs(folder)
  for i in range(6):
    _write(str(folder), f"s{i}.zst", x=np.zeros((T, F), np.float32), y=np.int64(i % 3))
  ingest.ingest([str(folder)], str(tmp_path / "d3"))
  with pytest.raises(ValueError, match=r"sample s2\.zst has label 2, but "
                                       r"config\.data\.label_kind='binary' has classes 0\.\.1"):
    dataset.build_dataset(_config(tmp_path / "d3").data, str(tmp_path / "d3"))
  with open(tmp_path / "d3" / "manifest.json") as f:
    assert json.load(f)["samples"]["order"] == "name"
