"""Which windows each split gets: the calendar train / val / test split, or one fold of a
walk-forward or combinatorial purged cross-validation (config.data.fold)."""

from jaxquant.data import folds as folds_lib
from jaxquant.data import rolls as rolls_lib
from jaxquant.data import splits as splits_lib


def split_ends(data_config, data_dir, names, stamps, crossing, facts):
  """Each split's window ends per instrument, the bar runs that fit the normaliser, and
  the cuts: the calendar split (splits.calendar_segments) or, with config.data.fold, one
  cross-validation fold (data/folds.py, recorded in facts["fold"])."""
  T, h, embargo = data_config.window, data_config.horizon, data_config.embargo
  fold = folds_lib.parse_fold(data_config.get("fold", ""))
  if fold:
    raw, train_rows, facts["fold"] = folds_lib.fold_split(
        stamps, fold, T, h, data_config.val_fraction, embargo)
    cuts, segs = None, None
  else:  # One calendar for all instruments: train / val / test cut at common timestamps.
    segs, cuts = splits_lib.calendar_segments(stamps, data_config.val_fraction,
                                              data_config.test_fraction, embargo)
    raw = {s: [splits_lib.window_ends(g[s], T, h) for g in segs] for s in splits_lib.SPLITS}
    train_rows = [[g["train"]] for g in segs]
  ends = {s: [rolls_lib.keep_clear(e, name, crossing, facts, s, T, h)
              for name, e in zip(names, raw[s])] for s in splits_lib.SPLITS}
  for split in splits_lib.SPLITS:
    # An instrument may have no bars in a period; only a split empty everywhere fails.
    if sum(map(len, ends[split])):
      continue
    if fold:
      raise ValueError(folds_lib.empty_split_message(split, facts["fold"], T, h, embargo,
                                                     data_dir))
    val_start, test_start = folds_lib.iso(cuts["val_start"]), folds_lib.iso(cuts["test_start"])
    period = {"train": f"before {val_start}", "val": f"from {val_start} to {test_start}",
              "test": f"from {test_start}"}[split]
    most = max(g[split][1] - g[split][0] for g in segs)
    raise ValueError(
        f"no {split} windows: a window needs config.data.window={T} + horizon={h} + 1 "
        f"bars of one instrument inside the {split} period ({period}; cut at the same "
        f"timestamps for all instruments, embargo={embargo} bars dropped "
        f"after each cut), and no instrument of {data_dir} has more than {most} there "
        "(use a smaller window, other val_fraction / test_fraction, or more data)")
  return ends, train_rows, cuts
