"""Tests for the .jqs shard format (jaxquant.data.shards)."""

import json
import os
import struct
import zlib

import numpy as np
import pytest

from jaxquant.data import shards
from jaxquant.data.shards import BAR_COLUMNS, ShardError, ShardReader, load_dir, write_shard


def _data(n, seed=0, t0=1_700_000_000_000_000_000):
    rng = np.random.default_rng(seed)
    ts = t0 + np.cumsum(rng.integers(1, 120, n)) * 60_000_000_000
    bars = rng.normal(100.0, 5.0, (n, len(BAR_COLUMNS)))
    return ts.astype(np.int64), bars


def _write(tmp_path, n=1000, chunk_rows=100, name="x.jqs", **kw):
    ts, bars = _data(n, **kw)
    path = str(tmp_path / name)
    write_shard(path, "SYN.x", ts, bars, chunk_rows=chunk_rows, meta={"k": [1, 2]})
    return path, ts, bars


def _data_start(path):
    """Byte offset of the first chunk, parsed independently of the reader."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack_from("<I", raw, 12)
    return 16 + hlen + 4, json.loads(raw[16:16 + hlen])


def _flip(path, pos, bit=0):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ (1 << bit)]))


@pytest.mark.parametrize("n,chunk_rows", [(1, 4096), (1, 1), (1000, 4096), (1000, 100),
                                          (1001, 100), (999, 7), (5000, 4096)])
def test_round_trip(tmp_path, n, chunk_rows):
    path, ts, bars = _write(tmp_path, n=n, chunk_rows=chunk_rows)
    with ShardReader(path) as r:
        assert r.instrument == "SYN.x" and r.num_rows == n
        assert r.columns == BAR_COLUMNS and r.meta == {"k": [1, 2]}
        assert r.chunk_rows == chunk_rows
        t2, b2 = r.read_all()
    assert t2.dtype == np.int64 and b2.dtype == np.float64
    np.testing.assert_array_equal(t2, ts)
    np.testing.assert_array_equal(b2, bars)


def test_layout_matches_spec(tmp_path):
    """Decode a file by hand from the documented layout (no reader code)."""
    import zstandard

    path, ts, bars = _write(tmp_path, n=250, chunk_rows=100)
    raw = open(path, "rb").read()
    assert raw[:8] == b"JQSHARD\0"
    version, hlen = struct.unpack_from("<II", raw, 8)
    assert version == shards.FORMAT_VERSION == 1
    hdr = raw[16:16 + hlen]
    assert struct.unpack_from("<I", raw, 16 + hlen)[0] == zlib.crc32(hdr)
    h = json.loads(hdr.decode("utf-8"))
    assert h["num_rows"] == 250 and h["columns"] == list(BAR_COLUMNS) and h["chunk_rows"] == 100
    assert [c["rows"] for c in h["chunks"]] == [100, 100, 50]
    assert h["chunks"][0]["offset"] == 16 + hlen + 4
    last = h["chunks"][-1]
    assert last["offset"] + last["length"] == len(raw)
    row0 = 0
    for c in h["chunks"]:
        blob = raw[c["offset"]:c["offset"] + c["length"]]
        assert zlib.crc32(blob) == c["crc32"]
        params = zstandard.get_frame_parameters(blob)
        assert params.has_checksum and params.content_size == c["rows"] * 56
        dec = zstandard.ZstdDecompressor().decompress(blob)
        k = c["rows"]
        np.testing.assert_array_equal(np.frombuffer(dec[:8 * k], "<i8"), ts[row0:row0 + k])
        np.testing.assert_array_equal(np.frombuffer(dec[8 * k:], "<f8").reshape(k, 6),
                                      bars[row0:row0 + k])
        row0 += k


def test_random_ranges(tmp_path):
    path, ts, bars = _write(tmp_path, n=1003, chunk_rows=64)
    rng = np.random.default_rng(1)
    with ShardReader(path) as r:
        ranges = [(0, 0), (0, 1), (63, 65), (64, 128), (1002, 1003), (1003, 1003), (0, 1003)]
        ranges += [tuple(sorted(rng.integers(0, 1004, 2))) for _ in range(40)]
        for a, b in ranges:
            t2, b2 = r.read(a, b)
            np.testing.assert_array_equal(t2, ts[a:b])
            np.testing.assert_array_equal(b2, bars[a:b])
        for a, b in [(-1, 5), (5, 4), (0, 1004)]:
            with pytest.raises(ShardError, match="invalid row range"):
                r.read(a, b)


def test_read_touches_only_needed_chunks(tmp_path):
    path, ts, bars = _write(tmp_path, n=1000, chunk_rows=100)
    _, h = _data_start(path)
    c7 = h["chunks"][7]
    _flip(path, c7["offset"] + c7["length"] // 2, bit=3)  # corrupt rows 700-799 only
    with ShardReader(path) as r:  # opening does not read chunk contents
        t2, b2 = r.read(120, 690)
        np.testing.assert_array_equal(t2, ts[120:690])
        np.testing.assert_array_equal(b2, bars[120:690])
        t2, _ = r.read(800, 1000)
        np.testing.assert_array_equal(t2, ts[800:])
        for a, b in [(750, 751), (650, 850), (0, 1000)]:
            with pytest.raises(ShardError) as e:
                r.read(a, b)
            msg = str(e.value)
            assert path in msg and "chunk 7 (rows 700-799)" in msg and "checksum" in msg


def test_deterministic_bytes(tmp_path):
    p1, ts, bars = _write(tmp_path, n=777, chunk_rows=50, name="a.jqs")
    p2, _, _ = _write(tmp_path, n=777, chunk_rows=50, name="b.jqs")
    assert open(p1, "rb").read() == open(p2, "rb").read()
    write_shard(p1, "SYN.x", ts, bars, chunk_rows=50, meta={"k": [1, 2]})  # rewrite in place
    assert open(p1, "rb").read() == open(p2, "rb").read()


def test_bit_flips_always_detected(tmp_path):
    path, ts, bars = _write(tmp_path, n=500, chunk_rows=100)
    pristine = open(path, "rb").read()
    start, h = _data_start(path)
    size = len(pristine)
    positions = {
        "magic": 3, "version": 8, "header_len": 13, "header_first": 16,
        "header_mid": 16 + (start - 20) // 2, "header_crc": start - 2,
        "chunk0_first": start, "chunk0_mid": start + h["chunks"][0]["length"] // 2,
        "chunk_last_byte": size - 1,
    }
    rng = np.random.default_rng(2)
    positions.update({f"random{i}": int(p) for i, p in enumerate(rng.integers(0, size, 20))})
    for label, pos in positions.items():
        for bit in (0, 7):
            with open(path, "wb") as f:
                f.write(pristine)
            _flip(path, pos, bit)
            with pytest.raises(ShardError) as e:
                with ShardReader(path) as r:
                    r.read_all()
            assert path in str(e.value), label


def test_truncation_and_trailing_garbage(tmp_path):
    path, _, _ = _write(tmp_path, n=500, chunk_rows=100)
    pristine = open(path, "rb").read()
    start, _ = _data_start(path)
    for cut in [1, 7, 8, 12, 15, 16, 40, start - 1, start, start + 10, len(pristine) - 1]:
        with open(path, "wb") as f:
            f.write(pristine[:cut])
        with pytest.raises(ShardError, match="truncated|magic") as e:
            ShardReader(path)
        assert path in str(e.value)
    with open(path, "wb") as f:
        f.write(pristine + b"\0")
    with pytest.raises(ShardError, match="trailing"):
        ShardReader(path)


def test_empty_and_foreign_files(tmp_path):
    p = tmp_path / "empty.jqs"
    p.write_bytes(b"")
    with pytest.raises(ShardError, match="empty"):
        ShardReader(str(p))
    p.write_bytes(b"PK\x03\x04 definitely a zip file" * 3)
    with pytest.raises(ShardError, match="magic"):
        ShardReader(str(p))
    with pytest.raises(ShardError, match="cannot open"):
        ShardReader(str(tmp_path / "missing.jqs"))


def test_newer_version_rejected(tmp_path):
    path, _, _ = _write(tmp_path, n=10)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    with pytest.raises(ShardError, match=r"newer jaxquant \(format v2 > 1\)"):
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
    path = str(tmp_path / "bad.jqs")
    with pytest.raises(ShardError) as e:
        write_shard(path, "SYN.x", ts, bars, **kw)
    assert path in str(e.value)
    assert os.listdir(tmp_path) == []  # nothing written, not even a temp file


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    from jaxquant import io_utils

    path, _, _ = _write(tmp_path, n=50)
    before = open(path, "rb").read()

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(io_utils.os, "replace", boom)
    ts, bars = _data(60, seed=5)
    with pytest.raises(OSError, match="disk on fire"):
        write_shard(path, "SYN.x", ts, bars)
    assert sorted(os.listdir(tmp_path)) == ["x.jqs"]
    assert open(path, "rb").read() == before


def test_list_and_load_dir(tmp_path):
    with pytest.raises(ShardError, match=str(tmp_path)):
        shards.list_shards(tmp_path)
    ts, bars = _data(300)
    write_shard(tmp_path / "b.jqs", "SYN.b", ts, bars, chunk_rows=64)
    # Instrument SYN.a split over two files whose names sort opposite to time.
    write_shard(tmp_path / "a_part1.jqs", "SYN.a", ts[150:], bars[150:])
    write_shard(tmp_path / "a_part2.jqs", "SYN.a", ts[:150], bars[:150])
    (tmp_path / "notes.txt").write_text("ignored")
    paths = shards.list_shards(tmp_path)
    assert [os.path.basename(p) for p in paths] == ["a_part1.jqs", "a_part2.jqs", "b.jqs"]
    loaded = load_dir(tmp_path)
    assert [name for name, _, _ in loaded] == ["SYN.a", "SYN.b"]
    for _, t2, b2 in loaded:
        np.testing.assert_array_equal(t2, ts)
        np.testing.assert_array_equal(b2, bars)
    # Overlapping parts of one instrument are an error naming the files.
    write_shard(tmp_path / "a_part3.jqs", "SYN.a", ts[100:120], bars[100:120])
    with pytest.raises(ShardError, match="overlaps"):
        load_dir(tmp_path)


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
