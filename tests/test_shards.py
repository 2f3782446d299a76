"""Tests for the Parquet bar shards (jaxquant.data.shards) and the `.jqs` conversion."""

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxquant.data import shards
from jaxquant.data.shards import BAR_COLUMNS, ShardError, ShardReader, load_dir, write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n, seed=0, t0=1_700_000_000_000_000_000):
  rng = np.random.default_rng(seed)
  ts = t0 + np.cumsum(rng.integers(1, 120, n)) * 60_000_000_000
  bars = rng.normal(100.0, 5.0, (n, len(BAR_COLUMNS)))
  return ts.astype(np.int64), bars


def _write(tmp_path, n=1000, chunk_rows=100, name="x.parquet", **kw):
  ts, bars = _data(n, **kw)
  path = str(tmp_path / name)
  digest = write_shard(path, "SYN.x", ts, bars, chunk_rows=chunk_rows, meta={"k": [1, 2]})
  return path, ts, bars, digest


def _manifest(directory):
  """manifest.json recording every shard's size and sha256, computed with hashlib."""
  files = {}
  for n in sorted(os.listdir(directory)):
    if n.endswith(".parquet"):
      raw = open(os.path.join(directory, n), "rb").read()
      files[n] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump({"shard_files": files}, f)


def _rewrite(path, table, kv):
  """The shard rewritten with pyarrow alone, its key-value metadata replaced by `kv`."""
  pq.write_table(table.replace_schema_metadata(kv), path, compression="zstd",
                 write_page_checksum=True)


@pytest.mark.parametrize("n,chunk_rows", [(1, 65536), (1, 1), (1000, 100), (1001, 100),
                                          (999, 7), (5000, 65536)])
def test_round_trip_against_pyarrow(tmp_path, n, chunk_rows):
  path, ts, bars, digest = _write(tmp_path, n=n, chunk_rows=chunk_rows)
  raw = open(path, "rb").read()
  assert digest == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
  with ShardReader(path) as r:
    assert r.instrument == "SYN.x" and r.num_rows == n and r.format_version == 2
    assert r.columns == BAR_COLUMNS and r.meta == {"k": [1, 2]} and r.chunk_rows == chunk_rows
    t2, b2 = r.read_all()
  assert t2.dtype == np.int64 and b2.dtype == np.float64
  np.testing.assert_array_equal(t2, ts)
  np.testing.assert_array_equal(b2, bars)
  # The file as pyarrow reads it, independently of ShardReader.
  table = pq.read_table(path, page_checksum_verification=True)
  assert table.schema.names == ["timestamp", *BAR_COLUMNS]
  assert table.schema.field("timestamp").type == pa.timestamp("ns")  # No time zone.
  np.testing.assert_array_equal(table["timestamp"].to_numpy().view(np.int64), ts)
  for j, c in enumerate(BAR_COLUMNS):
    assert table.schema.field(c).type == pa.float64()
    np.testing.assert_array_equal(table[c].to_numpy(), bars[:, j])


def test_layout_as_documented(tmp_path):
  """zstd column chunks, row groups of chunk_rows, the metadata keys, page checksums."""
  path, ts, bars, _ = _write(tmp_path, n=250, chunk_rows=100)
  md = pq.ParquetFile(path).metadata
  kv = {k.decode(): v.decode() for k, v in md.metadata.items()}
  assert kv["jaxquant.format_version"] == "2" and kv["jaxquant.instrument"] == "SYN.x"
  assert json.loads(kv["jaxquant.meta"]) == {"k": [1, 2]} and kv["jaxquant.chunk_rows"] == "100"
  assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [100, 100, 50]
  assert {md.row_group(i).column(j).compression for i in range(3) for j in range(7)} == {"ZSTD"}
  # A byte flipped inside the first data page: caught by Parquet's page CRC on read,
  # read without complaint when verification is off (so the CRC is what catches it).
  col = md.row_group(0).column(1)
  raw = bytearray(open(path, "rb").read())
  raw[col.data_page_offset + col.total_compressed_size - 5] ^= 0x10
  bad = tmp_path / "bad.parquet"
  bad.write_bytes(bytes(raw))
  with pytest.raises(OSError, match="CRC"):
    pq.read_table(bad, page_checksum_verification=True)
  with pytest.raises(ShardError, match=r"bad\.parquet: row group 0 .*CRC"):
    ShardReader(bad).read_all()


def test_pandas_polars_duckdb_open_a_shard(tmp_path):
  pd = pytest.importorskip("pandas")
  duckdb = pytest.importorskip("duckdb")
  path, ts, bars, _ = _write(tmp_path, n=500, chunk_rows=128)
  df = pd.read_parquet(path)
  assert list(df.columns) == ["timestamp", *BAR_COLUMNS]
  assert str(df["timestamp"].dtype) == "datetime64[ns]"  # Naive: no time zone.
  np.testing.assert_array_equal(df["timestamp"].to_numpy().view(np.int64), ts)
  np.testing.assert_array_equal(df[list(BAR_COLUMNS)].to_numpy(), bars)
  cut = np.datetime64(int(ts[200]), "ns")
  q = f"SELECT count(*), sum(close) FROM '{path}' WHERE timestamp >= TIMESTAMP '{cut}'"
  ((count, total),) = duckdb.sql(q).fetchall()
  assert count == (ts >= ts[200]).sum() and np.isclose(total, bars[200:, 3].sum())
  try:
    import polars as pl
  except ImportError:
    return
  frame = pl.read_parquet(path)
  assert str(frame.schema["timestamp"]) == "Datetime(time_unit='ns', time_zone=None)"
  np.testing.assert_array_equal(frame["close"].to_numpy(), bars[:, 3])
  np.testing.assert_array_equal(frame["timestamp"].to_numpy().view(np.int64), ts)


def test_random_ranges(tmp_path):
  path, ts, bars, _ = _write(tmp_path, n=1003, chunk_rows=64)
  rng = np.random.default_rng(1)
  with ShardReader(path) as r:
    ranges = [(0, 0), (0, 1), (63, 65), (64, 128), (1002, 1003), (1003, 1003), (0, 1003)]
    ranges += [tuple(sorted(rng.integers(0, 1004, 2))) for _ in range(20)]
    for a, b in ranges:
      t2, b2 = r.read(a, b)
      np.testing.assert_array_equal(t2, ts[a:b])
      np.testing.assert_array_equal(b2, bars[a:b])
    for a, b in [(-1, 5), (5, 4), (0, 1004)]:
      with pytest.raises(ShardError, match="invalid row range"):
        r.read(a, b)


def test_deterministic_bytes(tmp_path):
  p1, ts, bars, _ = _write(tmp_path, n=777, chunk_rows=50, name="a.parquet")
  p2, _, _, _ = _write(tmp_path, n=777, chunk_rows=50, name="b.parquet")
  assert open(p1, "rb").read() == open(p2, "rb").read()
  write_shard(p1, "SYN.x", ts, bars, chunk_rows=50, meta={"k": [1, 2]})  # Rewrite in place.
  assert open(p1, "rb").read() == open(p2, "rb").read()


def test_manifest_catches_every_corruption(tmp_path):
  """With the manifest's sha256 every change is caught, in any byte (also those that
  Parquet's page checksums do not cover: page headers, statistics, the footer)."""
  d = tmp_path / "d"
  d.mkdir()
  path, _, _, _ = _write(d, n=500, chunk_rows=100)
  _manifest(d)
  pristine = open(path, "rb").read()
  size = len(pristine)
  footer = size - 8 - struct.unpack_from("<I", pristine, size - 8)[0]
  cases = {"first": pristine[:0] + bytes([pristine[0] ^ 1]) + pristine[1:]}
  for i, pos in enumerate(sorted({4, 20, footer, footer + 50, size - 9, size - 1,
                                  *np.random.default_rng(2).integers(0, size, 8)})):
    cases[f"flip{i}@{pos}"] = pristine[:pos] + bytes([pristine[pos] ^ 0x80]) + pristine[pos + 1:]
  cases.update({"truncated": pristine[:size // 2], "trailing": pristine + b"\0",
                "zeros": pristine[:100] + bytes(64) + pristine[164:], "empty": b""})
  for label, raw in cases.items():
    with open(path, "wb") as f:
      f.write(raw)
    with pytest.raises(ShardError) as e:
      list(load_dir(d))
    assert path in str(e.value) and "\n" not in str(e.value), label
  with open(path, "wb") as f:
    f.write(pristine)
  assert len(list(load_dir(d))) == 1


def test_without_a_manifest_parquet_checks_still_catch_damage(tmp_path):
  path, _, _, _ = _write(tmp_path, n=500, chunk_rows=100)
  pristine = open(path, "rb").read()
  for raw, reason in [(pristine[:-10], "not a readable Parquet file"),
                      (pristine + b"garbage", "not a readable Parquet file"),
                      (b"", "empty file"), (b"PK\x03\x04 a zip file" * 3, "not a readable")]:
    with open(path, "wb") as f:
      f.write(raw)
    with pytest.raises(ShardError, match=reason) as e:
      list(load_dir(tmp_path))
    assert path in str(e.value)
  with pytest.raises(ShardError, match="cannot open"):
    ShardReader(str(tmp_path / "missing.parquet"))


def test_newer_version_and_foreign_parquet_rejected(tmp_path):
  path, ts, bars, _ = _write(tmp_path, n=10)
  table = pq.read_table(path)
  kv = dict(pq.ParquetFile(path).metadata.metadata)
  _rewrite(path, table, {**kv, b"jaxquant.format_version": b"3"})
  with pytest.raises(ShardError, match=r"newer jaxquant \(format v3 > 2\); upgrade"):
    ShardReader(path)
  _rewrite(path, table, {})  # Plain Parquet, e.g. from pandas.
  with pytest.raises(ShardError, match="not a jaxquant shard"):
    ShardReader(path)
  utc = table.set_column(0, "timestamp", table["timestamp"].cast(pa.timestamp("ns", "UTC")))
  _rewrite(path, utc, kv)
  with pytest.raises(ShardError, match=r"columns .*timestamp\[ns, tz=UTC\]"):
    ShardReader(path)


@pytest.mark.parametrize("case", ["dup_ts", "decreasing_ts", "nan", "inf", "shape",
                                  "length", "float_ts", "chunk_rows", "meta"])
def test_write_rejects_bad_input(tmp_path, case):
  ts, bars = _data(20)
  kw = {}
  if case == "dup_ts":
    ts[5] = ts[4]
  elif case == "decreasing_ts":
    ts[10] = ts[9] - 1
  elif case == "nan":
    bars[3, 2] = np.nan
  elif case == "inf":
    bars[0, 5] = np.inf
  elif case == "shape":
    bars = bars[:, :5]
  elif case == "length":
    ts = ts[:-1]
  elif case == "float_ts":
    ts = ts.astype(np.float64)
  elif case == "chunk_rows":
    kw["chunk_rows"] = 0
  elif case == "meta":
    kw["meta"] = {"x": object()}
  path = str(tmp_path / "bad.parquet")
  with pytest.raises(ShardError) as e:
    write_shard(path, "SYN.x", ts, bars, **kw)
  assert path in str(e.value)
  assert os.listdir(tmp_path) == []  # Nothing written, not even a temp file.


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
  from jaxquant import io_utils

  path, _, _, _ = _write(tmp_path, n=50)
  before = open(path, "rb").read()

  def boom(*a, **k):
    raise OSError("disk on fire")

  monkeypatch.setattr(io_utils.os, "replace", boom)
  ts, bars = _data(60, seed=5)
  with pytest.raises(OSError, match="disk on fire"):
    write_shard(path, "SYN.x", ts, bars)
  assert sorted(os.listdir(tmp_path)) == ["x.parquet"]
  assert open(path, "rb").read() == before


def test_list_and_load_dir(tmp_path, monkeypatch):
  with pytest.raises(ShardError, match=str(tmp_path)):
    shards.list_shards(tmp_path)
  ts, bars = _data(300)
  write_shard(tmp_path / "b.parquet", "SYN.b", ts, bars, chunk_rows=64)
  # Instrument SYN.a split over two files whose names sort opposite to time.
  write_shard(tmp_path / "a_part1.parquet", "SYN.a", ts[150:], bars[150:])
  write_shard(tmp_path / "a_part2.parquet", "SYN.a", ts[:150], bars[:150])
  (tmp_path / "notes.txt").write_text("ignored")
  (tmp_path / "samples.parquet").write_text("the sample set: not bars")
  paths = shards.list_shards(tmp_path)
  assert [os.path.basename(p) for p in paths] == ["a_part1.parquet", "a_part2.parquet",
                                                  "b.parquet"]
  # Lazy: one instrument's files are read at a time, in name order.
  reads, real = [], ShardReader.read_all
  monkeypatch.setattr(ShardReader, "read_all", lambda r: reads.append(r.instrument) or real(r))
  it = load_dir(tmp_path)
  assert reads == []
  name, t2, b2 = next(it)
  assert name == "SYN.a" and reads == ["SYN.a", "SYN.a"]
  np.testing.assert_array_equal(t2, ts)
  np.testing.assert_array_equal(b2, bars)
  name, t2, b2 = next(it)
  assert name == "SYN.b" and reads[2:] == ["SYN.b"]
  np.testing.assert_array_equal(t2, ts)
  assert next(it, None) is None
  # With a manifest: a shard it does not list, or one it lists that is gone, is refused.
  os.remove(tmp_path / "samples.parquet")
  _manifest(tmp_path)
  assert [n for n, _, _ in load_dir(tmp_path)] == ["SYN.a", "SYN.b"]
  write_shard(tmp_path / "c.parquet", "SYN.c", ts, bars)
  with pytest.raises(ShardError, match=r"c\.parquet: not listed in .*manifest\.json"):
    load_dir(tmp_path)
  os.remove(tmp_path / "c.parquet")
  os.remove(tmp_path / "b.parquet")
  with pytest.raises(ShardError, match=r"b\.parquet: listed in manifest\.json but missing"):
    load_dir(tmp_path)
  os.remove(tmp_path / "manifest.json")
  # Overlapping parts of one instrument are an error naming the files.
  write_shard(tmp_path / "a_part3.parquet", "SYN.a", ts[100:120], bars[100:120])
  with pytest.raises(ShardError, match="overlaps"):
    list(load_dir(tmp_path))


# -------------------- The old `.jqs` format: read only, to convert


def _write_jqs(path, instrument, ts, bars, chunk_rows=100, version=1):
  """A `.jqs` shard written from docs' old layout (this test's own writer)."""
  import zstandard
  cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
  blobs = [cctx.compress(ts[a:a + chunk_rows].astype("<i8").tobytes()
                         + bars[a:a + chunk_rows].astype("<f8").tobytes())
           for a in range(0, len(ts), chunk_rows)]

  def header(start):
    chunks, off = [], start
    for a, blob in zip(range(0, len(ts), chunk_rows), blobs):
      chunks.append({"offset": off, "length": len(blob), "rows": min(chunk_rows, len(ts) - a),
                     "crc32": zlib.crc32(blob)})
      off += len(blob)
    return json.dumps({"instrument": instrument, "num_rows": len(ts),
                       "columns": list(BAR_COLUMNS), "chunk_rows": chunk_rows,
                       "chunks": chunks, "meta": {"source": "old"}}).encode()
  length, hdr = -1, b""
  while len(hdr) != length:  # Offsets depend on the header's length: its fixed point.
    length, hdr = len(hdr), header(20 + len(hdr))
  with open(path, "wb") as f:
    f.write(b"JQSHARD\0" + struct.pack("<II", version, len(hdr)) + hdr
            + struct.pack("<I", zlib.crc32(hdr)) + b"".join(blobs))


def test_jqs_folder_converts_with_one_ingest_command(tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  ts, bars = _data(450)
  _write_jqs(old / "SYN.a.jqs", "SYN.a", ts, bars)
  _write_jqs(old / "SYN.b.jqs", "SYN.b", ts[:77], bars[:77] * 2)
  (old / "manifest.json").write_text("{}")
  with pytest.raises(ShardError, match=r"\.jqs shards of the old format: convert them with "
                                       r"python -m jaxquant\.data\.ingest --out="):
    shards.list_shards(old)
  new = tmp_path / "new"
  p = subprocess.run([sys.executable, "-m", "jaxquant.data.ingest", f"--out={new}", str(old)],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  got = {n: (t, b) for n, t, b in load_dir(new)}
  assert sorted(got) == ["SYN.a", "SYN.b"]
  np.testing.assert_array_equal(got["SYN.a"][0], ts)
  np.testing.assert_array_equal(got["SYN.a"][1], bars)
  np.testing.assert_array_equal(got["SYN.b"][1], bars[:77] * 2)
  manifest = json.loads((new / "manifest.json").read_text())
  raw = (new / "SYN.a.parquet").read_bytes()
  assert manifest["shard_files"]["SYN.a.parquet"]["sha256"] == hashlib.sha256(raw).hexdigest()
  with ShardReader(new / "SYN.a.parquet") as r:
    assert r.meta["jqs_meta"] == {"source": "old"} and r.meta["source_kind"] == "jqs"


def test_corrupt_or_newer_jqs_is_one_clear_error(tmp_path):
  from jaxquant.data import legacy_shards
  path = tmp_path / "x.jqs"
  ts, bars = _data(300)
  _write_jqs(path, "SYN.x", ts, bars)
  pristine = path.read_bytes()
  assert legacy_shards.read_jqs(path)[0] == "SYN.x"
  for raw, reason in [(pristine[:-3], "truncated"), (pristine + b"\0", "trailing"),
                      (b"", "empty"), (pristine[:-40] + bytes(40), "chunk 2 .*checksum"),
                      (pristine[:8] + struct.pack("<I", 2) + pristine[12:], "newer jaxquant")]:
    path.write_bytes(raw)
    with pytest.raises(ShardError, match=reason) as e:
      legacy_shards.read_jqs(path)
    assert str(path) in str(e.value)


def test_io_utils_json_helpers(tmp_path):
  from jaxquant.io_utils import append_jsonl, atomic_write_json

  p = tmp_path / "sub" / "m.json"
  atomic_write_json(p, {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(7)})
  assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": 7}
  log = tmp_path / "log.jsonl"
  for i in range(3):
    append_jsonl(log, {"step": np.int32(i)})
  assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]
  assert sorted(os.listdir(tmp_path)) == ["log.jsonl", "sub"]


def test_replace_markdown_section_keeps_the_rest(tmp_path):
  from jaxquant import io_utils
  path = tmp_path / "doc.md"
  io_utils.replace_markdown_section(path, "## B", "b1\n", title="Doc")
  assert path.read_text() == "# Doc\n\n## B\n\nb1\n"
  path.write_text("# Doc\n\n## A\n\na\n\n## B\n\nold\nlines\n\n## C\n\nc\n")
  io_utils.replace_markdown_section(path, "## B", "new\n")
  assert path.read_text() == "# Doc\n\n## A\n\na\n\n## B\n\nnew\n\n## C\n\nc\n"
  io_utils.replace_markdown_section(path, "## D", "d\n")
  assert path.read_text().endswith("## C\n\nc\n\n## D\n\nd\n")
