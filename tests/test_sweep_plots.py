"""Tests for jaxquant.sweep_plots (validation metrics against each swept setting)."""

import os

from matplotlib import image
import numpy as np
import pytest

from jaxquant import plots
from jaxquant import sweep_plots


def assert_png(path):
  """A complete PNG that decodes to a picture, with no temp file left beside it."""
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pixels = image.imread(path)
  assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels.std() > 0
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]


def fake_members(alphas=("1,4", "1,8", "1,14.6"), gammas=(0.0, 2.0), seeds=2):
  """A tightrope: validation F1 peaks at the middle class weight; seeds add noise."""
  rng = np.random.default_rng(0)
  out = []
  for i, a in enumerate(alphas):
    for g in gammas:
      for s in range(seeds):
        f1 = 0.3 + 0.1 * i - 0.05 * i * i + 0.01 * g + rng.normal(0, 0.01)
        out.append({"settings": {"loss.alpha": a, "loss.gamma": g, "train.seed": s},
                    "val": {"f1": f1, "pr_auc": f1 - 0.05, "precision": f1 - 0.1,
                            "roc_auc": 0.55, "prior": 0.2},
                    "test": {"f1": 0.2, "pr_auc": 0.2, "precision": 0.2, "roc_auc": 0.5},
                    "collapsed": i == 2 and s == 1})
  return out


def test_plot_sweeps_writes_one_png_per_swept_setting(tmp_path):
  members = fake_members()
  names = sweep_plots.plot_sweeps(members, tmp_path)
  assert names == ["sweep_loss.alpha.png", "sweep_loss.gamma.png"]  # The seed is no setting.
  for n in names:
    assert_png(str(tmp_path / n))


def test_plot_sweep_numeric_log_axis_single_seed_and_explicit_prior(tmp_path):
  members = fake_members(gammas=(0.0,), seeds=1)
  for m, lr in zip(members, (1e-4, 1e-3, 1e-2)):
    m["settings"]["train.lr"] = lr
  path = sweep_plots.plot_sweep(members, "train.lr", tmp_path / "lr.png", prior=0.3)
  assert_png(path)


def test_plot_sweep_draws_mean_and_band_over_seeds(tmp_path, monkeypatch):
  """The F1 line sits at the mean over the seeds of each value, its band spans their
  min–max (computed here from the members directly), and the prior is a dashed line."""
  members = fake_members(gammas=(0.0,))
  figures = []
  monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig) or path)
  sweep_plots.plot_sweep(members, "loss.alpha", tmp_path / "a.png")
  (fig,) = figures
  ax = fig.axes[0]
  f1 = {}
  for m in members:
    f1.setdefault(m["settings"]["loss.alpha"], []).append(m["val"]["f1"])
  line = ax.get_lines()[0]
  np.testing.assert_allclose(line.get_ydata(), [np.mean(v) for v in f1.values()])
  assert list(line.get_xdata()) == [0, 1, 2]  # Categorical, in sweep order.
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1,4", "1,8", "1,14.6"]
  band = ax.collections[0].get_paths()[0].vertices
  assert np.isclose(band[:, 1].min(), min(map(min, f1.values())))
  assert np.isclose(band[:, 1].max(), max(map(max, f1.values())))
  dashed = [l for l in ax.get_lines() if l.get_linestyle() == "--"]
  assert len(dashed) == 1 and dashed[0].get_ydata()[0] == 0.2  # The members' common prior.


def test_bad_key_or_member_gives_one_clear_line(tmp_path):
  members = fake_members()
  with pytest.raises(ValueError, match="'loss.beta' is not a setting of the members") as e:
    sweep_plots.plot_sweep(members, "loss.beta", tmp_path / "x.png")
  assert "\n" not in str(e.value)
  del members[3]["settings"]["loss.alpha"]
  with pytest.raises(ValueError, match=r"members\[3\] has no setting 'loss.alpha'"):
    sweep_plots.plot_sweep(members, "loss.alpha", tmp_path / "x.png")
  del members[0]["val"]["pr_auc"]
  with pytest.raises(ValueError, match=r"members\[0\]\['val'\] has no 'pr_auc'"):
    sweep_plots.plot_sweeps(members, tmp_path)
  assert not list(tmp_path.iterdir())
