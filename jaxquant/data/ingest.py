"""Turns real bar data into `.jqs` shards (and loose samples into `.jqx`).

Command line::

    python -m jaxquant.data.ingest --out=DIR [--time-format=FMT] [--on-error=stop|skip]
                                   [--instrument=NAME] [--chunk-rows=4096]
                                   [--max-gap=14d] [--max-bar-range=1.0] INPUT...

Each INPUT is a file or a folder (folders are scanned, non-recursively, for
`*.csv` and `*.zst` in sorted name order). Three kinds of input:

* a generic OHLCV CSV (header required, columns matched case-insensitively);
* a TqSdk `DataDownloader` CSV (detected by its `datetime_nano` column),
  possibly holding several symbols: one shard per symbol;
* loose per-sample `.zst` files (a zstd-compressed `.npy` array, or `.npz`
  with `x`/`sample` and optional `y`/`label`), packed into one checksummed,
  random-access `samples.jqx` (`samples.SampleShardReader`). A `*.csv.zst`
  whose payload is not a NumPy file is read as a CSV.

Every row is validated (`csv_bars`, rules in `bar_checks`); with
--on-error=stop (default) the first problem is reported as
`<file>:<line>: <reason>` (line 1 is the header) and nothing is written;
with --on-error=skip bad rows are dropped and counted per reason. Suspicious data
is named too: a bar whose high - low exceeds --max-bar-range median closes is a bad
row; a gap longer than --max-gap between kept rows stops the ingest, or with skip is
listed (file and line) under `flagged` in the summary and manifest. Shards are
written atomically, then `manifest.json` last, so its presence marks a
complete ingest. The output is a pure function of the input bytes:
re-running gives byte-identical files. Both file formats are documented in
`docs/data-format.md` ("Ingesting real data").
"""

import hashlib
import os
import re
import time

from absl import flags
import numpy as np

from jaxquant import cli
from jaxquant import io_utils
from jaxquant.data import bar_checks
from jaxquant.data import bar_times
from jaxquant.data import csv_bars
from jaxquant.data import samples
from jaxquant.data import shards


def _expand(inputs):
  """Files to read, in order: folders contribute their *.csv / *.zst, sorted."""
  files = []
  for inp in inputs:
    if os.path.isdir(inp):
      names = sorted(n for n in os.listdir(inp) if not n.startswith(".")
                     and n.lower().endswith((".csv", ".zst"))
                     and os.path.isfile(os.path.join(inp, n)))
      if not names:
        raise bar_checks.IngestError(f"{inp}: folder holds no *.csv or *.zst files")
      files += [os.path.join(inp, n) for n in names]
    elif os.path.exists(inp):
      files.append(inp)
    else:
      raise bar_checks.IngestError(f"{inp}: no such file or directory")
  seen = {}
  for f in files:
    key = os.path.realpath(f)
    if key in seen:
      raise bar_checks.IngestError(f"{f}: given twice (also as {seen[key]})")
    seen[key] = f
  return files


def _safe_name(instrument):
  """File-name-safe instrument name (never hidden: list_shards skips dot files)."""
  s = re.sub(r"[^A-Za-z0-9._@+-]", "_", instrument)
  return "_" + s if s.startswith(".") else s


def _read_inputs(files, time_format, on_error, max_gap, max_bar_range):
  """Reads and validates every file: (bar series, loose samples, their files, skipped counts)."""
  series = []
  builder, sample_files, sample_skipped = None, [], {}
  for path in files:
    data = samples.read_file(path)
    payload = data
    if path.lower().endswith(".zst"):
      csv_name = path.lower().endswith(".csv.zst")
      try:
        payload = samples.zstd_decompress(path, data)
      except bar_checks.IngestError:
        if csv_name or on_error == "stop":
          raise
        payload = b""  # A broken sample file: counted below.
      if not csv_name or samples.npy_kind(payload):
        builder = builder or samples.SampleBuilder()
        try:
          x, y = samples.load_sample(path, payload)
        except bar_checks.IngestError:
          if on_error == "stop":
            raise
          sample_skipped["bad_sample_file"] = sample_skipped.get("bad_sample_file", 0) + 1
          continue
        why = builder.problem(x, y)
        if why:
          if on_error == "stop":
            raise bar_checks.IngestError(f"{path}: {why}")
          sample_skipped["sample_mismatch"] = sample_skipped.get("sample_mismatch", 0) + 1
          continue
        builder.add(x, y)
        sample_files.append({"name": os.path.basename(path),
                             "sha256": hashlib.sha256(data).hexdigest(),
                             "labeled": y is not None})
        continue
    got = csv_bars.read_csv_bytes(path, payload, time_format, on_error, max_gap, max_bar_range)
    for s in got:  # The sha256 is of the file as stored (compressed or not).
      s.sha256 = hashlib.sha256(data).hexdigest()
    series += got
  return series, builder, sample_files, sample_skipped


def _plan(series, out_dir):
  """Shard names: [(file name, series)] and the series left without rows.

  An instrument from several files becomes time-ordered parts.
  """
  by_inst = {}
  for s in series:
    by_inst.setdefault(s.instrument, []).append(s)
  plan, unwritten = [], []
  for inst in sorted(by_inst):
    parts = [s for s in by_inst[inst] if s.timestamps.size]
    unwritten += [s for s in by_inst[inst] if not s.timestamps.size]
    parts.sort(key=lambda s: int(s.timestamps[0]))
    for a, b in zip(parts, parts[1:]):
      if b.timestamps[0] <= a.timestamps[-1]:
        raise bar_checks.IngestError(
            f"{b.source}: instrument {inst!r} overlaps {a.source} "
            f"({bar_checks.fmt_ts(b.timestamps[0])} <= {bar_checks.fmt_ts(a.timestamps[-1])})")
    base = _safe_name(inst)
    for k, s in enumerate(parts):
      name = base + (f".part{k + 1}" if len(parts) > 1 else "") + shards.SHARD_SUFFIX
      plan.append((name, s))
  names = [n for n, _ in plan]
  if len(set(n.lower() for n in names)) != len(names):
    dup = sorted(n for n in names if [m.lower() for m in names].count(n.lower()) > 1)
    raise bar_checks.IngestError(f"{out_dir}: instrument names map to the same file {dup[0]!r}; "
                                 "rename an input or pass --instrument")
  return plan, unwritten


def _check_out_dir(out_dir, ours):
  """Refuses to mix with other data: load_dir would pick up stale shards."""
  if not os.path.isdir(out_dir):
    return
  foreign = sorted(n for n in os.listdir(out_dir) if not n.startswith(".")
                   and n.endswith((shards.SHARD_SUFFIX, samples.SAMPLE_SUFFIX)) and n not in ours)
  if foreign:
    more = ", ..." if len(foreign) > 3 else ""
    raise bar_checks.IngestError(f"{out_dir}: already holds other shards "
                                 f"({', '.join(foreign[:3])}{more}); use an empty directory")


def _write_samples(out_dir, name, builder, sample_files, sample_skipped):
  """Writes samples.jqx; returns its summary entry and its manifest entry."""
  skipped = dict(sorted(sample_skipped.items()))
  if not name:
    entry = {"shard": None, "num_samples": 0, "num_labels": 0, "skipped": skipped}
    return (entry, entry) if sample_skipped else (None, None)
  agg = hashlib.sha256("".join(f"{f['name']} {f['sha256']}\n" for f in sample_files)
                       .encode()).hexdigest()
  meta = {"generator": "jaxquant.data.ingest", "num_sources": len(sample_files),
          "sources_sha256": agg, "skipped": skipped}
  path = os.path.join(out_dir, name)
  io_utils.atomic_write_bytes(path, builder.build(meta, path))
  entry = {"shard": path, "num_samples": len(sample_files),
           "num_labels": sum(f["labeled"] for f in sample_files),
           "shape": list(builder.shape), "dtype": builder.dtype.str,
           "label_shape": None if builder.label_shape is None else list(builder.label_shape),
           "label_dtype": None if builder.label_dtype is None else builder.label_dtype.str,
           "skipped": skipped}
  return entry, {**entry, "shard": name, "sources": sample_files}


def ingest(inputs, out_dir, *, time_format=None, on_error="stop", instrument=None,
           chunk_rows=4096, max_gap=bar_checks.MAX_GAP, max_bar_range=bar_checks.MAX_BAR_RANGE):
  """Validates the inputs and writes shards + `manifest.json` to `out_dir`.

  Everything is read and validated before the first file is written, so
  bad input (stop mode) leaves `out_dir` untouched.  Bar shards are
  `<instrument>.jqs` (`<instrument>.partK.jqs` when an instrument comes
  from several files, ordered by time); loose samples go to `samples.jqx`.
  Any old `manifest.json` is removed first and the new one written last.

  Args:
    inputs: files and/or folders (folders: their `*.csv`/`*.zst`, sorted).
    out_dir: output folder (created). It may hold shards of an earlier run
      of the same inputs, but no other `*.jqs`/`*.jqx` files.
    time_format: strptime format for generic CSV time columns (or
      `epoch_s`/`epoch_ms`/`epoch_us`/`epoch_ns`); None: auto-detect.
    on_error: `"stop"` (raise on the first bad row) or `"skip"` (drop
      and count bad rows / bad sample files).
    instrument: name for the single generic CSV input (default: file stem).
    chunk_rows: rows per compressed chunk in bar shards.
    max_gap: longest time between two kept rows of a series ('90m', '6h', '14d',
      seconds; 0 = any): a longer gap raises (stop) or is flagged (skip).
    max_bar_range: widest high - low of a bar, in the series' median closes
      (0 = any); a wider bar is a bad row (`absurd_range`).

  Returns:
    The summary dict: ``{"out_dir", "instruments": [{"instrument", "rows",
    "first", "last", "skipped", "flagged", "flag_messages", "notes", "source",
    "shard"}], "samples": {...} or None, "total_rows", "skipped", "flagged",
    "manifest", "elapsed_s"}`` (flagged: {reason: count} of the suspicious rows kept
    or dropped; flag_messages: the first `<file>:<line>: ...` of them).

  Raises:
    bar_checks.IngestError: bad input or arguments (one-line message).
    OSError: the output cannot be written (already written shards stay
      complete; no partial file is left).
  """
  t0 = time.perf_counter()
  csv_bars.check_on_error(on_error)
  if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
          or chunk_rows < 1:
    raise bar_checks.IngestError(f"--chunk-rows={chunk_rows!r}: expected a positive integer")
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  inputs = [os.fspath(p) for p in inputs]
  if not inputs:
    raise bar_checks.IngestError("no INPUT given")
  out_dir = os.fspath(out_dir)
  if time_format is not None:
    bar_times.user_time_format(time_format)  # Fail early on a bad format.
  gap = bar_checks.gap_ns(max_gap)
  if isinstance(max_bar_range, bool) or not isinstance(max_bar_range, (int, float)) \
          or not max_bar_range >= 0:
    raise bar_checks.IngestError(f"--max-bar-range={max_bar_range!r}: expected a number >= 0")

  # Phase 1: read and validate everything.
  series, builder, sample_files, sample_skipped = _read_inputs(_expand(inputs), time_format,
                                                               on_error, gap, max_bar_range)
  generic = [s for s in series if s.kind == "csv"]
  if instrument is not None:
    if len(generic) != 1 or not instrument:
      raise bar_checks.IngestError(f"--instrument={instrument!r} needs exactly one generic CSV "
                                   f"input, got {len(generic)}")
    generic[0].instrument = instrument
  plan, unwritten = _plan(series, out_dir)
  samples_name = samples.SAMPLE_FILE if builder is not None and builder.shape is not None else None
  _check_out_dir(out_dir, {n for n, _ in plan} | ({samples_name} if samples_name else set()))

  # Phase 2: write.
  os.makedirs(out_dir, exist_ok=True)
  manifest_path = os.path.join(out_dir, "manifest.json")
  try:
    os.remove(manifest_path)  # Its presence must mean "this ingest completed".
  except FileNotFoundError:
    pass
  entries, m_entries = [], []
  for name, s in plan:
    meta = {"generator": "jaxquant.data.ingest", "source": s.source_name,
            "source_sha256": s.sha256, "source_kind": s.kind, "skipped": s.skipped,
            "flagged": s.flagged, "notes": s.notes, **s.extra_meta}
    shards.write_shard(os.path.join(out_dir, name), s.instrument, s.timestamps, s.bars,
                       chunk_rows=int(chunk_rows), meta=meta)
    entries.append(_entry(s, os.path.join(out_dir, name)))
    m_entries.append(_manifest_entry(s, name))
  for s in unwritten:
    entries.append(_entry(s, None))
    m_entries.append(_manifest_entry(s, None))
  sample_entry, m_samples = _write_samples(out_dir, samples_name, builder, sample_files,
                                           sample_skipped)

  total_skipped = {}
  for e in entries:
    for k, v in e["skipped"].items():
      total_skipped[k] = total_skipped.get(k, 0) + v
  for k, v in sample_skipped.items():
    total_skipped[k] = total_skipped.get(k, 0) + v
  total_rows = sum(e["rows"] for e in entries)
  flagged = {}
  for e in entries:
    for k, v in e["flagged"].items():
      flagged[k] = flagged.get(k, 0) + v
  flagged = dict(sorted(flagged.items()))
  # Limits recorded so a reader (dataset.describe_data) can say what was checked.
  manifest = {"generator": "jaxquant.data.ingest", "shards": m_entries, "samples": m_samples,
              "total_rows": total_rows, "skipped": dict(sorted(total_skipped.items())),
              "flagged": flagged, "max_gap": bar_checks.fmt_gap(gap) if gap else None,
              "max_bar_range": max_bar_range or None}
  io_utils.atomic_write_json(manifest_path, manifest)
  return {"out_dir": out_dir, "instruments": entries, "samples": sample_entry,
          "total_rows": total_rows, "skipped": dict(sorted(total_skipped.items())),
          "flagged": flagged, "manifest": manifest_path, "elapsed_s": time.perf_counter() - t0}


def _entry(s, shard):
  n = int(s.timestamps.size)
  notes = list(s.notes) + ([] if n else ["no rows left: no shard written"])
  return {"instrument": s.instrument, "rows": n,
          "first": bar_checks.fmt_ts(s.timestamps[0]) if n else None,
          "last": bar_checks.fmt_ts(s.timestamps[-1]) if n else None,
          "skipped": s.skipped, "flagged": s.flagged, "flag_messages": s.flag_messages,
          "notes": notes, "source": s.source_name,
          "time_format": s.extra_meta.get("time_format"), "shard": shard}


def _manifest_entry(s, shard):
  """_entry with the file's base name in messages: the manifest depends on bytes only."""
  e = _entry(s, shard) | {"source_sha256": s.sha256}
  e["flag_messages"] = [s.source_name + m[len(s.source):] if m.startswith(s.source) else m
                        for m in e["flag_messages"]]
  return e


def format_summary(summary):
  """Human-readable multi-line summary of `ingest`'s result."""
  out = []
  for e in summary["instruments"]:
    span = f"{e['first']} .. {e['last']}" if e["rows"] else "-"
    out.append(f"{e['instrument']}: {e['rows']} rows, {span} -> {e['shard'] or '(none)'}"
               f"  [from {e['source']}]")
    if e["skipped"]:
      out.append("    skipped: " + ", ".join(f"{k}={v}" for k, v in e["skipped"].items()))
    for msg in e["flag_messages"]:
      out.append(f"    flagged: {msg}")
    if sum(e["flagged"].values()) > len(e["flag_messages"]):
      out.append("    flagged: " + ", ".join(f"{k}={v}" for k, v in e["flagged"].items())
                 + " in all (the manifest lists the first)")
    for note in e["notes"]:
      out.append(f"    note: {note}")
  s = summary["samples"]
  if s:
    if s["shard"]:
      out.append(f"samples: {s['num_samples']} x {s['shape']} {s['dtype']}, "
                 f"{s['num_labels']} labelled -> {s['shard']}")
    if s["skipped"]:
      out.append("    skipped files: "
                 + ", ".join(f"{k}={v}" for k, v in s["skipped"].items()))
  out.append(f"total: {summary['total_rows']} rows; manifest {summary['manifest']} "
             f"({summary['elapsed_s']:.2f}s)")
  return "\n".join(out)




# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _define_flags():
  """Defined only when run as a script (no clashes with other modules' flags)."""
  flags.DEFINE_string("out", None, "Output directory for shards + manifest.json.")
  flags.DEFINE_string("time_format", None, "strptime format of the time column "
                      "(or epoch_s/ms/us/ns); default: auto-detect.")
  flags.DEFINE_enum("on_error", "stop", ["stop", "skip"], "stop: fail on the first bad row; "
                    "skip: drop bad rows and count them.")
  flags.DEFINE_string("instrument", None, "Instrument name for a single generic CSV input.")
  flags.DEFINE_integer("chunk_rows", 4096, "Rows per compressed shard chunk.")
  flags.DEFINE_string("max_gap", bar_checks.MAX_GAP, "Longest time between two rows of a "
                      "series (90m, 6h, 14d; 0 = any): longer stops, or with skip is flagged.")
  flags.DEFINE_float("max_bar_range", bar_checks.MAX_BAR_RANGE, "Widest high - low of a bar, "
                     "in the series' median closes (0 = any); wider is a bad row.")


def main(argv):
  """CLI entry point: exit 2 on bad input, 1 on I/O errors."""
  fl = flags.FLAGS
  if not fl.out:
    cli.fail("--out=DIR is required", code=2)
  if len(argv) < 2:
    cli.fail("no INPUT given (files or folders of *.csv / *.zst)", code=2)
  try:
    summary = ingest(argv[1:], fl.out, time_format=fl.time_format, on_error=fl.on_error,
                     instrument=fl.instrument, chunk_rows=fl.chunk_rows,
                     max_gap=fl.max_gap, max_bar_range=fl.max_bar_range)
  except ValueError as e:  # IngestError, ShardError: <file>:<line>: <reason>.
    cli.fail(e, code=2)
  except OSError as e:
    cli.fail(f"cannot write {fl.out}: {e}", code=1)
  print(format_summary(summary))


if __name__ == "__main__":
  _define_flags()
  cli.run(main, distributed=False, positional=True, flag_error_code=2)
