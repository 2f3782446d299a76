"""Turns real bar data into Parquet shards (and loose samples into `samples.parquet`).

Command line::

    python -m jaxquant.data.ingest --out=DIR [--time-format=FMT] [--on-error=stop|skip]
                                   [--instrument=NAME] [--chunk-rows=65536]
                                   [--max-gap=14d] [--max-bar-range=1.0]
                                   [--timezone=ZONE] [--product=NAME | --noroll] INPUT...

Each INPUT is a file or a folder (folders are scanned, non-recursively, for
`*.csv`, `*.csv.gz`, `*.zst` and `*.jqs` in sorted name order; a `.jqs` shard of the old
format is converted as it is). Three kinds of input:

* a generic OHLCV CSV (header required, columns matched case-insensitively);
* a TqSdk `DataDownloader` CSV (detected by its `datetime_nano` column),
  possibly holding several symbols: one shard per symbol;
* loose per-sample `.zst` files (a zstd-compressed `.npy` array, or `.npz`
  with `x`/`sample` and optional `y`/`label`, `r`/`ret`/`return`/`fwd_return` and
  `t`/`time`/`timestamp`), packed into one `samples.parquet` (`samples.read_samples`;
  `data.source="samples"` trains on it). A `*.csv.zst` whose payload is not a NumPy
  file is read as a CSV.

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
from jaxquant.data import instruments
from jaxquant.data import legacy_shards
from jaxquant.data import rolls
from jaxquant.data import samples
from jaxquant.data import shards


def _expand(inputs):
  """Files to read, in order: folders contribute their *.csv / *.zst, sorted."""
  files = []
  for inp in inputs:
    if os.path.isdir(inp):
      names = sorted(n for n in os.listdir(inp) if not n.startswith(".")
                     and n.lower().endswith((".csv", ".csv.gz", ".zst", legacy_shards.JQS_SUFFIX))
                     and os.path.isfile(os.path.join(inp, n)))
      if not names:
        raise bar_checks.IngestError(f"{inp}: folder holds no *.csv, *.zst or *.jqs files")
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


def _read_inputs(files, time_format, on_error, max_gap, max_bar_range, timezone=None):
  """Reads and validates every file: (bar series, loose samples, their files, skipped counts)."""
  series = []
  builder, sample_files, sample_skipped = None, [], {}
  for path in files:
    if path.lower().endswith(legacy_shards.JQS_SUFFIX):
      series.append(_from_jqs(path))
      continue
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
          x, y, r, t = samples.load_sample(path, payload)
        except bar_checks.IngestError:
          if on_error == "stop":
            raise
          sample_skipped["bad_sample_file"] = sample_skipped.get("bad_sample_file", 0) + 1
          continue
        why = builder.problem(x)
        if why:
          if on_error == "stop":
            raise bar_checks.IngestError(f"{path}: {why}")
          sample_skipped["sample_mismatch"] = sample_skipped.get("sample_mismatch", 0) + 1
          continue
        builder.add(os.path.basename(path), x, y, r, t)
        sample_files.append({"name": os.path.basename(path),
                             "sha256": hashlib.sha256(data).hexdigest(),
                             "labeled": y is not None})
        continue
    got = csv_bars.read_csv_bytes(path, payload, time_format, on_error, max_gap, max_bar_range,
                                  timezone)
    for s in got:  # The sha256 is of the file as stored (compressed or not).
      s.sha256 = hashlib.sha256(data).hexdigest()
    series += got
  return series, builder, sample_files, sample_skipped


def _from_jqs(path):
  """An old `.jqs` shard as a series, bars as they are (checked when it was written)."""
  inst, ts, bars, meta = legacy_shards.read_jqs(path)
  return csv_bars.Series(inst, ts, bars, {}, ["converted from a .jqs shard"], path,
                         os.path.basename(path), shards.file_digest(path)["sha256"], "jqs",
                         {"jqs_meta": meta})


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
                   and (n.endswith(shards.SHARD_SUFFIX) or n == samples.SAMPLE_FILE)
                   and n not in ours)
  if foreign:
    more = ", ..." if len(foreign) > 3 else ""
    raise bar_checks.IngestError(f"{out_dir}: already holds other shards "
                                 f"({', '.join(foreign[:3])}{more}); use an empty directory")


def ingest(inputs, out_dir, *, time_format=None, on_error="stop", instrument=None,
           chunk_rows=shards.DEFAULT_CHUNK_ROWS, max_gap=bar_checks.MAX_GAP,
           max_bar_range=bar_checks.MAX_BAR_RANGE, product=None, roll=True, timezone=None):
  """Validates the inputs and writes shards + `manifest.json` to `out_dir`.

  Everything is read and validated before the first file is written, so
  bad input (stop mode) leaves `out_dir` untouched.  Bar shards are
  `<instrument>.parquet` (`<instrument>.partK.parquet` when an instrument comes
  from several files, ordered by time); loose samples go to `samples.parquet`.
  Any old `manifest.json` is removed first and the new one written last.

  Args:
    inputs: files and/or folders (folders: their `*.csv`/`*.zst`/`*.jqs`, sorted).
    out_dir: output folder (created). It may hold shards of an earlier run
      of the same inputs, but no other `*.parquet` files.
    time_format: strptime format for generic CSV time columns (or
      `epoch_s`/`epoch_ms`/`epoch_us`/`epoch_ns`); None: auto-detect.
    timezone: CSV times with a UTC offset, and epoch times, in this zone's wall clock
      (IANA name, UTC, +HH:MM); None: each file's most common offset (`bar_times.local_times`).
    on_error: `"stop"` (raise on the first bad row) or `"skip"` (drop
      and count bad rows / bad sample files).
    instrument: name for the single generic CSV input (default: file stem).
    chunk_rows: rows per Parquet row group in bar shards.
    max_gap: longest time between two kept rows of a series ('90m', '6h', '14d',
      seconds; 0 = any): a longer gap raises (stop) or is flagged (skip).
    max_bar_range: widest high - low of a bar, in the series' median closes
      (0 = any); a wider bar is a bad row (`absurd_range`).
    product: name of the product every bar input is a contract month of; None groups
      contract months by the naming rule of `rolls` (with `roll`).
    roll: group contract months by that rule (manifest "products"; the contracts stay
      separate shards, the config rolls them into one series at load time).

  Writes `instruments.csv` too (the rows already there kept; `instruments`).

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
  if timezone is not None:
    bar_times.zone(timezone)
  gap = bar_checks.gap_ns(max_gap)
  if isinstance(max_bar_range, bool) or not isinstance(max_bar_range, (int, float)) \
          or not max_bar_range >= 0:
    raise bar_checks.IngestError(f"--max-bar-range={max_bar_range!r}: expected a number >= 0")

  # Phase 1: read and validate everything.
  series, builder, sample_files, sample_skipped = _read_inputs(_expand(inputs), time_format,
                                                               on_error, gap, max_bar_range,
                                                               timezone)
  generic = [s for s in series if s.kind == "csv"]
  if instrument is not None:
    if len(generic) != 1 or not instrument:
      raise bar_checks.IngestError(f"--instrument={instrument!r} needs exactly one generic CSV "
                                   f"input, got {len(generic)}")
    generic[0].instrument = instrument
  plan, unwritten = _plan(series, out_dir)
  samples_name = samples.SAMPLE_FILE if builder is not None and builder.shape is not None else None
  clash = [s.source for n, s in plan if n.lower() == samples.SAMPLE_FILE]
  if clash:  # Its shard would be the packed samples' file (which load_dir skips).
    raise bar_checks.IngestError(f"{clash[0]}: instrument name 'samples' is reserved for the "
                                 f"packed samples ({samples.SAMPLE_FILE}); pass --instrument")
  _check_out_dir(out_dir, {n for n, _ in plan} | ({samples_name} if samples_name else set()))
  products = rolls.ingest_products([(s.instrument, s.timestamps, s.bars) for _, s in plan],
                                   product, roll)
  table = instruments.load_table(out_dir)  # A malformed edit stops here, before any write.

  # Phase 2: write.
  os.makedirs(out_dir, exist_ok=True)
  manifest_path = os.path.join(out_dir, "manifest.json")
  try:
    os.remove(manifest_path)  # Its presence must mean "this ingest completed".
  except FileNotFoundError:
    pass
  entries, m_entries, digests = [], [], {}
  for name, s in plan:
    meta = {"generator": "jaxquant.data.ingest", "source": s.source_name,
            "source_sha256": s.sha256, "source_kind": s.kind, "skipped": s.skipped,
            "flagged": s.flagged, "notes": s.notes, **s.extra_meta}
    digests[name] = shards.write_shard(os.path.join(out_dir, name), s.instrument,
                                       s.timestamps, s.bars, chunk_rows=int(chunk_rows),
                                       meta=meta)
    entries.append(_entry(s, os.path.join(out_dir, name)))
    m_entries.append(_manifest_entry(s, name))
  for s in unwritten:
    entries.append(_entry(s, None))
    m_entries.append(_manifest_entry(s, None))
  sample_entry, m_samples = samples.write_packed(out_dir, samples_name, builder, sample_files,
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
  grouped = {c for p in products.values() for c in p["contracts"]}
  table_path = instruments.write_table(  # One row per series the config can train on.
      out_dir, sorted(products) + sorted({s.instrument for _, s in plan} - grouped),
      existing=table) if plan else None
  # Limits recorded so a reader (dataset.describe_data) can say what was checked.
  manifest = {"generator": "jaxquant.data.ingest", "shards": m_entries, "samples": m_samples,
              "total_rows": total_rows, "skipped": dict(sorted(total_skipped.items())),
              "flagged": flagged, "max_gap": bar_checks.fmt_gap(gap) if gap else None,
              "max_bar_range": max_bar_range or None, shards.MANIFEST_KEY: digests,
              "products": products}
  io_utils.atomic_write_json(manifest_path, manifest)
  return {"out_dir": out_dir, "instruments": entries, "samples": sample_entry,
          "total_rows": total_rows, "skipped": dict(sorted(total_skipped.items())),
          "flagged": flagged, "manifest": manifest_path, "products": products,
          "instruments_table": table_path, "elapsed_s": time.perf_counter() - t0}



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
  out += samples.describe_packed(summary["samples"])
  out += rolls.describe_products(summary.get("products") or {})
  if summary.get("instruments_table"):
    out.append(f"instrument facts: {summary['instruments_table']} (edit it: tick size, "
               "multiplier, commission, currency)")
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
  flags.DEFINE_string("timezone", None, "Times with a UTC offset and epoch times in this "
                      "zone's wall clock (Asia/Shanghai, UTC, +08:00); default: the file's offset.")
  flags.DEFINE_enum("on_error", "stop", ["stop", "skip"], "stop: fail on the first bad row; "
                    "skip: drop bad rows and count them.")
  flags.DEFINE_string("instrument", None, "Instrument name for a single generic CSV input.")
  flags.DEFINE_integer("chunk_rows", shards.DEFAULT_CHUNK_ROWS, "Rows per Parquet row group.")
  flags.DEFINE_string("max_gap", bar_checks.MAX_GAP, "Longest time between two rows of a "
                      "series (90m, 6h, 14d; 0 = any): longer stops, or with skip is flagged.")
  flags.DEFINE_float("max_bar_range", bar_checks.MAX_BAR_RANGE, "Widest high - low of a bar, "
                     "in the series' median closes (0 = any); wider is a bad row.")
  flags.DEFINE_string("product", None, "Every bar input is a contract month of this product "
                      "(default: grouped by the EXCHANGE.productYYMM naming rule).")
  flags.DEFINE_boolean("roll", True, "Group contract months of one product (rolled into one "
                       "series at load, config.data.roll); --noroll keeps them apart.")


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
                     max_gap=fl.max_gap, max_bar_range=fl.max_bar_range,
                     product=fl.product, roll=fl.roll, timezone=fl.timezone)
  except ValueError as e:  # IngestError, ShardError: <file>:<line>: <reason>.
    cli.fail(e, code=2)
  except OSError as e:
    cli.fail(f"cannot write {fl.out}: {e}", code=1)
  print(format_summary(summary))


if __name__ == "__main__":
  _define_flags()
  cli.run(main, distributed=False, positional=True, flag_error_code=2)
