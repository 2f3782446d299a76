"""The pictures of a sweep: validation F1, PR-AUC and precision against each swept setting
(the class-weight "tightrope" as a curve), the mean over seeds with a min–max band.

Members are the dicts of jaxquant/selection.py. Only validation figures are drawn: a
researcher tunes on these, and the test split stays for the selected member alone. Each figure
is built on its own Agg canvas and written atomically (plots.new_figure, plots.save_png).
"""

import math
import numbers
import os
import re

import numpy as np
from matplotlib.lines import Line2D

from jaxquant import plots
from jaxquant import selection

SWEEP_METRICS = (("f1", "F1"), ("pr_auc", "PR-AUC"), ("precision", "precision"))
MAX_PANELS = 6  # More combinations of the other swept settings than this: pool them.
LOG_SPAN = 100  # Positive numeric values spanning this factor or more get a log axis.


def _label(value):
  return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _is_number(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _common_prior(members):
  """The validation prior when every member reports the same one (same data and labels)."""
  priors = [m["val"].get("prior") for m in members]
  if all(_is_number(p) and math.isfinite(p) for p in priors) and np.ptp(priors) < 1e-12:
    return float(priors[0])
  return None


def _setting(members, key, where):
  settings = [m.get("settings") or {} for m in members]
  if not any(key in s for s in settings):
    names = sorted({k for s in settings for k in s})
    raise ValueError(f"{where}: {key!r} is not a setting of the members (their settings: "
                     f"{', '.join(names) or 'none'})")
  missing = [i for i, s in enumerate(settings) if key not in s]
  if missing:
    raise ValueError(f"{where}: members[{missing[0]}] has no setting {key!r} "
                     f"({len(missing)} member(s) lack it)")
  return [s[key] for s in settings]


def plot_sweep(members, key, path, prior=None, metrics=SWEEP_METRICS):
  """Validation metrics against one swept setting, mean over seeds with a min–max band.

  x is the setting's values in sweep order (first appearance): categorical when any is not
  a number (e.g. class weights "1,4", "1,8"), else a numeric axis (log when positive and
  spanning LOG_SPAN or more). Each member is also drawn as a dot (an x when it collapsed).
  When other settings are swept too, each combination of them gets its own panel (pooled
  into one, and said so, beyond MAX_PANELS).

  Args:
    members: list of member dicts (jaxquant/selection.py).
    key: the swept setting for the x axis, e.g. "loss.alpha".
    path: PNG to write.
    prior: validation share of positives (precision and PR-AUC of a random model), drawn
      dashed; None takes the members' common val["prior"] if they report one.
    metrics: (validation metric, label) pairs to draw.

  Returns:
    The path written.

  Raises:
    ValueError: no members, `key` not a setting of every member, or a member without one
      of the validation metrics.
  """
  for m, _ in metrics:
    selection.check_members(members, m, "plot_sweep")
  xs = _setting(members, key, "plot_sweep")
  prior = _common_prior(members) if prior is None else prior
  order = []
  for v in map(_label, xs):
    if v not in order:
      order.append(v)
  numeric = all(_is_number(v) for v in xs)
  others = [k for k in selection.swept_keys(members) if k != key]
  groups = {}
  for i, mem in enumerate(members):
    groups.setdefault(tuple(_label(mem["settings"].get(k)) for k in others), []).append(i)
  pooled = len(groups) > MAX_PANELS
  if pooled:
    groups = {(): list(range(len(members)))}
  fig, axes = plots.new_figure(min(len(groups), 3), math.ceil(len(groups) / 3),
                               figsize=(6 if len(groups) == 1 else 4.2 * min(len(groups), 3),
                                        4 * math.ceil(len(groups) / 3)), sharey=True)
  axes = axes.ravel()
  for ax in axes[len(groups):]:
    ax.set_visible(False)
  if numeric:
    values = sorted({float(v) for v in xs})
    pos = {_label(v): float(v) for v in xs}
  else:
    values = list(range(len(order)))
    pos = {v: float(k) for k, v in enumerate(order)}
  seeds = max(len([i for i in idx if _label(xs[i]) == v]) for idx in groups.values()
              for v in order)
  for ax, (combo, idx) in zip(axes, groups.items()):
    for (metric, name), color in zip(metrics, ("C0", "C1", "C2", "C3", "C4")):
      px = [pos[_label(xs[i])] for i in idx]
      py = [float(members[i]["val"][metric]) for i in idx]
      at = {}
      for x, y in zip(px, py):
        at.setdefault(x, []).append(y)
      line_x = [x for x in values if x in at and np.isfinite(at[x]).any()]
      cols = [np.asarray(at[x], np.float64) for x in line_x]
      mean = [np.nanmean(c) for c in cols]
      ax.plot(line_x, mean, "-o", color=color, ms=4, label=f"val {name}, mean")
      if seeds > 1:
        ax.fill_between(line_x, [np.nanmin(c) for c in cols], [np.nanmax(c) for c in cols],
                        color=color, alpha=0.18, lw=0)
      dead = [bool(members[i].get("collapsed", False)) for i in idx]
      ax.scatter([x for x, d in zip(px, dead) if not d], [y for y, d in zip(py, dead) if not d],
                 s=9, color=color, alpha=0.6)
      ax.scatter([x for x, d in zip(px, dead) if d], [y for y, d in zip(py, dead) if d],
                 s=30, marker="x", color=color)
    if prior is not None:
      ax.axhline(prior, ls="--", color="grey", lw=1)
    ax.set_xlabel(key)
    if numeric and values[0] > 0 and values[-1] / values[0] >= LOG_SPAN:
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(values, order, rotation=30 if len(order) > 4 else 0)
    title = ", ".join(f"{k}={v}" for k, v in zip(others, combo))
    ax.set_title(title if title else f"validation vs {key}", fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("validation score")
  band = ("one member per point: no band" if seeds == 1 else
          "band: min–max over the members at each value" if pooled else
          f"band: min–max over {seeds} seeds")
  extra = [f"pooled over {', '.join(others)}"] if pooled else []
  handles, labels = axes[0].get_legend_handles_labels()
  handles += [Line2D([], [], ls="", marker="x", color="k"),
              Line2D([], [], ls="", marker="o", ms=3, color="k", alpha=0.6)]
  labels += ["collapsed member", "one member"]
  if prior is not None:
    handles.append(Line2D([], [], ls="--", color="grey"))
    labels.append(f"prior {prior:.3f} (random model's precision / PR-AUC)")
  fig.suptitle("; ".join([f"Validation metrics vs {key}", band] + extra), fontsize=10)
  fig.legend(handles, labels, loc="outside lower center", ncols=3 if len(groups) > 1 else 2,
             fontsize=8)
  return plots.save_png(fig, path)


def sweep_file_name(key):
  """The PNG name for the sweep plot of `key`: "sweep_loss.alpha.png".

  Args:
    key: a setting name.

  Returns:
    A file name safe on any filesystem.
  """
  return "sweep_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".png"


def plot_sweeps(members, out_dir, prior=None, metrics=SWEEP_METRICS):
  """One `plot_sweep` PNG per swept setting (the seed is not a setting).

  Args:
    members: list of member dicts.
    out_dir: folder the PNGs go into (created if missing).
    prior: as in `plot_sweep`.
    metrics: as in `plot_sweep`.

  Returns:
    The file names written, in the members' settings order (for compare.md); empty when
    nothing but the seed varies.
  """
  for m, _ in metrics:
    selection.check_members(members, m, "plot_sweeps")
  names = []
  for key in selection.swept_keys(members):
    name = sweep_file_name(key)
    plot_sweep(members, key, os.path.join(out_dir, name), prior, metrics)
    names.append(name)
  return names
