"""Orbax checkpoints: the best by validation F1 (never a collapsed model) and the latest.

Each epoch saves two items: `state` (params, batch_stats, opt_state, step) and
`meta` (JSON: epoch, threshold, validation metrics, normalisation statistics,
early-stopping state). The manager keeps the `keep_best` best by `score`
(validation F1, or -1 for a collapsed model) AND the latest step, kept apart by
a preservation policy: the legacy `max_to_keep` + `best_fn` would delete the
newest step and lose the resume point.
"""

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

COLLAPSED_SCORE = -1.0  # Below any real F1, so a collapsed model is never "best".
PREEMPTED_SCORE = -2.0  # A mid-epoch save (SIGTERM) has no validation: never "best".


def _score(metrics):
  return metrics["score"]


class CheckpointStore:
  """Saves and restores training checkpoints under `directory`."""

  def __init__(self, directory, keep_best=2):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(get_metric_fn=_score, reverse=False, n=keep_best),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_score, best_mode="max", preservation_policy=policy,
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(directory, options=options,
                                          item_names=("state", "meta"))

  def save(self, step, state, meta, score):
    """Saves `state` (a pytree) and `meta` (JSON-able dict) at `step` with its score."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics={"score": float(score)})
    self._manager.wait_until_finished()

  def latest_step(self):
    return self._manager.latest_step()

  def best_step(self):
    return self._manager.best_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def restore_meta(self, step):
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step, abstract_state):
    """Restores (state, meta) at `step`; `abstract_state` gives the tree structure, shapes
    and shardings (e.g. from `jax.eval_shape`), so a checkpoint written on any device count
    restores onto the current devices."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_partial(self, step, abstract_subtree):
    """Restores only the entries of the saved state named in `abstract_subtree`
    (e.g. params and batch_stats, without the optimizer state)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_subtree,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtree),
            partial_restore=True)))
    return restored["state"]

  def close(self):
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a concrete pytree, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
