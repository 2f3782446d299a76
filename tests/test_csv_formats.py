"""Any reasonable bar CSV (#19 item 2): time column by content, delimiters, BOM, CRLF,
quotes, epoch units, UTC offsets and time zones (DST), date + time columns, .gz/.zst,
and the fast path for clean files giving what the exact path gives.

References are computed another way: Python's datetime/zoneinfo, the csv module,
pandas (when installed), or a hand-made case with a known answer.
"""

import csv
import datetime
import gzip
import io
import os
import subprocess
import sys
import zoneinfo

import numpy as np
import pytest
import zstandard

from jaxquant.data import bar_checks
from jaxquant.data import bar_times
from jaxquant.data import csv_bars
from jaxquant.data.bar_checks import IngestError
from jaxquant.data.ingest import ingest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "minute")
AZN = os.path.join(DATA, "azn_lse_1min_2022_head200.csv")
ES = os.path.join(DATA, "es_futures_1min_2013_head200.csv")
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1)
# Four made-up bars with a known answer.
BARS = [(1.5, 2.0, 1.0, 1.75, 10), (1.75, 2.5, 1.5, 2.0, 0), (2.0, 2.25, 1.25, 1.5, 7),
        (1.5, 1.5, 1.5, 1.5, 3)]
TIMES = [datetime.datetime(2024, 1, 2, 9, 30) + datetime.timedelta(minutes=k) for k in range(4)]


def _ns(d):
  """Naive datetime -> int64 ns (wall clock)."""
  return (d - EPOCH) // datetime.timedelta(microseconds=1) * 1000


def _read(path, **kw):
  ((ts, bars, skipped),) = csv_bars.read_csv_bars(path, **kw).values()
  return ts, bars, skipped


def _series(path, **kw):
  with open(path, "rb") as f:
    (s,) = csv_bars.read_csv_bytes(str(path), f.read(), kw.pop("time_format", None),
                                   kw.pop("on_error", "stop"), **kw)
  return s


def _write_rows(path, header, rows, **fmt):
  """Rows through Python's csv module (delimiter, quoting, line ends as asked)."""
  buf = io.StringIO(newline="")
  w = csv.writer(buf, **fmt)
  w.writerow(header)
  w.writerows(rows)
  path.write_bytes(buf.getvalue().encode("utf-8"))
  return path


def _check_known(ts, bars, times=TIMES):
  np.testing.assert_array_equal(ts, [_ns(d) for d in times])
  np.testing.assert_array_equal(bars[:, :5], np.array(BARS, dtype=float))
  np.testing.assert_array_equal(bars[:, 5], 0)


# --------------------------------------------------------------------------
# Time column by content
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Unnamed: 0", "minute", "bar_start"])
def test_time_column_found_by_content(tmp_path, name):
  rows = [[d.strftime("%Y-%m-%d %H:%M:%S")] + list(b) for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "x.csv", [name, "open", "high", "low", "close", "volume"], rows)
  ts, bars, _ = _read(p)
  _check_known(ts, bars)
  s = _series(p)
  assert s.notes[0] == (f"time column {name!r} (column 1) found by its content "
                        f"({bar_times.ISO.name})")


def test_pandas_to_csv_index_column(tmp_path):
  pd = pytest.importorskip("pandas")
  idx = pd.date_range("2024-01-02 09:30", periods=4, freq="min")
  df = pd.DataFrame(BARS, columns=["open", "high", "low", "close", "volume"], index=idx)
  df.to_csv(tmp_path / "pd.csv")
  assert (tmp_path / "pd.csv").read_text().startswith(",open,high,low,close,volume")
  ts, bars, _ = _read(tmp_path / "pd.csv")
  np.testing.assert_array_equal(ts, idx.as_unit("ns").asi8)
  np.testing.assert_array_equal(bars[:, :5], df.to_numpy(float))
  # A second round trip through pandas names the index column "Unnamed: 0"; a
  # RangeIndex column beside a named time column is ignored.
  df2 = pd.read_csv(tmp_path / "pd.csv").rename(columns={"Unnamed: 0": "date"})
  df2.to_csv(tmp_path / "pd2.csv")
  ts2, bars2, _ = _read(tmp_path / "pd2.csv")
  np.testing.assert_array_equal(ts2, ts)
  np.testing.assert_array_equal(bars2, bars)


def test_row_numbers_and_counts_are_not_times(tmp_path):
  rows = [[k, 100 + k] + list(b) for k, b in enumerate(BARS)]
  p = _write_rows(tmp_path / "n.csv", ["", "ticks", "open", "high", "low", "close", "volume"],
                  rows)
  with pytest.raises(IngestError, match=r"n\.csv:1: missing required column\(s\) time "):
    _read(p)


def test_two_unnamed_time_columns_are_ambiguous(tmp_path):
  rows = [[d.isoformat(), (d + datetime.timedelta(hours=8)).isoformat()] + list(b)
          for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "two.csv", ["utc", "local", "open", "high", "low", "close", "vol"],
                  rows)
  with pytest.raises(IngestError, match=r"two\.csv:1: no column is named time.*several hold "
                                        r"times \('utc', 'local'\): rename the one to use"):
    _read(p)


def test_real_es_futures_minute_column():
  """E-mini bars whose time header is 'minute' (tests/data/README.md)."""
  with open(ES, newline="") as f:
    rows = list(csv.reader(f))[1:]
  ts, bars, skipped = _read(ES)
  want = [_ns(datetime.datetime.strptime(r[0], "%Y-%m-%d %H:%M:%S")) for r in rows]
  np.testing.assert_array_equal(ts, want)
  np.testing.assert_array_equal(bars[:, :5], np.array([r[1:6] for r in rows], dtype=float))
  assert skipped == {}


# --------------------------------------------------------------------------
# Delimiters, BOM, line ends, quotes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("delim,eol,bom,quoting", [
    (";", "\n", False, csv.QUOTE_MINIMAL), ("\t", "\n", False, csv.QUOTE_MINIMAL),
    ("|", "\r\n", False, csv.QUOTE_MINIMAL), (",", "\r\n", True, csv.QUOTE_MINIMAL),
    (",", "\n", True, csv.QUOTE_MINIMAL),
    (",", "\n", True, csv.QUOTE_ALL), (";", "\r\n", True, csv.QUOTE_NONNUMERIC)])
def test_delimiters_bom_crlf_and_quotes(tmp_path, delim, eol, bom, quoting):
  rows = [[d.strftime("%Y-%m-%d %H:%M")] + list(b) for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "d.csv", ["Date Time", "Open", "High", "Low", "Close", "Volume"],
                  rows, delimiter=delim, lineterminator=eol, quoting=quoting)
  if bom:
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
  ts, bars, _ = _read(p)
  _check_known(ts, bars)
  # Line numbers of the exact path count CRLF lines like csv.reader.
  text = p.read_bytes().decode("utf-8-sig").replace("1.75", "x", 1)
  p.write_bytes(text.encode())
  with pytest.raises(IngestError, match=r"d\.csv:2: non-numeric value 'x' in column 'Close'"):
    _read(p)


# --------------------------------------------------------------------------
# Epoch integers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_epoch_magnitude_rule(tmp_path, unit, scale):
  secs = [int((d.replace(tzinfo=UTC)).timestamp()) for d in TIMES]
  rows = [[t * scale] + list(b) for t, b in zip(secs, BARS)]
  p = _write_rows(tmp_path / "e.csv", ["timestamp", "open", "high", "low", "close", "volume"],
                  rows)
  ts, bars, _ = _read(p)
  _check_known(ts, bars)  # Epoch times are UTC, kept as UTC.
  s = _series(p)
  assert s.extra_meta["time_format"] == f"epoch_{unit}"
  assert "epoch times are UTC: kept as UTC" in s.notes[0]


def test_epoch_override_when_the_magnitude_misleads(tmp_path):
  # Milliseconds of 1970-01-10 (9 digits: not a YYYYMMDD date) look like seconds
  # (< 1e11) to the magnitude rule.
  start = datetime.datetime(1970, 1, 10)
  times = [start + datetime.timedelta(minutes=k) for k in range(4)]
  rows = [[_ns(d) // 10**6] + list(b) for d, b in zip(times, BARS)]
  p = _write_rows(tmp_path / "ms.csv", ["time", "open", "high", "low", "close", "volume"], rows)
  ts, _, _ = _read(p)
  assert ts[0] == _ns(start) * 1000  # Read as seconds: wrong, as the rule says.
  ts, bars, _ = _read(p, time_format="epoch_ms")
  _check_known(ts, bars, times)
  s = ingest([str(p)], tmp_path / "out", time_format="epoch_ms", max_gap=0)
  assert s["instruments"][0]["first"] == "1970-01-10 00:00:00"


# --------------------------------------------------------------------------
# UTC offsets and time zones
# --------------------------------------------------------------------------


def test_iso_offsets_and_z_keep_the_written_wall_clock(tmp_path):
  for suffix in ("+08:00", "+0800", "Z", "-05:30"):
    rows = [[d.strftime("%Y-%m-%dT%H:%M:%S") + suffix] + list(b) for d, b in zip(TIMES, BARS)]
    p = _write_rows(tmp_path / "z.csv", ["datetime", "open", "high", "low", "close", "volume"],
                    rows)
    ts, bars, _ = _read(p)
    _check_known(ts, bars)
    off = "+00:00" if suffix == "Z" else suffix[:3] + ":" + suffix[-2:]
    assert _series(p).notes[0] == (f"times carry the UTC offset {off}: kept as written "
                                   "(--timezone=ZONE converts)")


def test_timezone_converts_instants_with_zoneinfo(tmp_path):
  """AZN.L bars stamped in UTC (+00:00) become London wall clock (BST in May)."""
  with open(AZN, newline="") as f:
    stamps = [r[0] for r in list(csv.reader(f))[1:]]
  london = zoneinfo.ZoneInfo("Europe/London")
  want = [_ns(datetime.datetime.fromisoformat(s).astimezone(london).replace(tzinfo=None))
          for s in stamps]
  ts, _, _ = _read(AZN, timezone="Europe/London")
  np.testing.assert_array_equal(ts, want)
  assert bar_checks.fmt_ts(ts[0]) == "2022-05-19 08:00:00"  # LSE opens at 08:00 London.
  ts_utc, _, _ = _read(AZN)
  np.testing.assert_array_equal(ts_utc, ts - 3600 * 10**9)
  # Epoch times (UTC) and fixed offsets too.
  rows = [[int(d.replace(tzinfo=UTC).timestamp())] + list(b) for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "e.csv", ["timestamp", "open", "high", "low", "close", "volume"],
                  rows)
  for tz, hours in (("Asia/Shanghai", 8), ("+05:30", 5.5), ("UTC", 0)):
    ts, bars, _ = _read(p, timezone=tz)
    _check_known(ts, bars, [d + datetime.timedelta(hours=hours) for d in TIMES])
  with pytest.raises(IngestError, match=r"--timezone='Mars/Olympus': unknown time zone"):
    ingest([str(p)], tmp_path / "o", timezone="Mars/Olympus")


def _dst_file(tmp_path, zone, start, hours, step_min, name):
  """Local wall clock + that instant's offset, every step_min minutes from a UTC start."""
  tz = zoneinfo.ZoneInfo(zone)
  instants = [start + datetime.timedelta(minutes=step_min * k)
              for k in range(hours * 60 // step_min)]
  rows = []
  for k, u in enumerate(instants):
    loc = u.astimezone(tz)
    price = 100 + k % 7
    rows.append([loc.isoformat(), price, price + 1, price - 1, price, 1])
  return _write_rows(tmp_path / name, ["datetime", "open", "high", "low", "close", "volume"],
                     rows), instants


def test_dst_fall_back_comes_out_strictly_increasing(tmp_path):
  """A 24-hour market across New York's fall-back: offsets -04:00 then -05:00, the
  01:00-02:00 wall clock written twice."""
  start = datetime.datetime(2023, 11, 5, 0, tzinfo=UTC)  # 6 h of EDT, then 24 h of EST.
  p, instants = _dst_file(tmp_path, "America/New_York", start, 30, 30, "ny.csv")
  ts, _, _ = _read(p)
  # The file's most common offset here is -05:00 (EST): every instant at -05:00.
  want = [_ns((u - datetime.timedelta(hours=5)).replace(tzinfo=None)) for u in instants]
  np.testing.assert_array_equal(ts, want)
  assert (np.diff(ts) == 30 * 60 * 10**9).all()
  note = _series(p).notes[0]
  assert "UTC offsets -05:00" in note and "-04:00" in note and "all expressed at -05:00" in note
  # The zone's own wall clock repeats 01:00-02:00 (row 12, line 14: 06:00 UTC, 01:00
  # EST): named by the ordering rules, or dropped.
  with pytest.raises(IngestError, match=r"ny\.csv:14: timestamp 2023-11-05 01:00:00 is earlier "
                                        r"than 2023-11-05 01:30:00 on line 13"):
    _read(p, timezone="America/New_York")
  ts_ny, _, skipped = _read(p, timezone="America/New_York", on_error="skip")
  assert skipped == {"duplicate_timestamp": 1, "non_monotonic_timestamp": 1}
  assert (np.diff(ts_ny) > 0).all()


def test_dst_with_a_closed_night_keeps_the_exchange_wall_clock(tmp_path):
  """London across the spring change, trading 08:00-09:00 only: --timezone gives the
  wall clock each row was written in, DST included."""
  rows, want = [], []
  london = zoneinfo.ZoneInfo("Europe/London")
  for day in range(4):  # Friday 29 March .. Monday 1 April 2024; BST from the 31st.
    for minute in range(0, 60, 15):
      local = (datetime.datetime(2024, 3, 29, 8, minute)
               + datetime.timedelta(days=day)).replace(tzinfo=london)
      rows.append([local.isoformat(), 10, 11, 9, 10, 1])
      want.append(_ns(local.replace(tzinfo=None)))
  p = _write_rows(tmp_path / "lse.csv", ["datetime", "open", "high", "low", "close", "volume"],
                  rows)
  assert {r[0][-6:] for r in rows} == {"+00:00", "+01:00"}
  ts, _, _ = _read(p, timezone="Europe/London")
  np.testing.assert_array_equal(ts, want)


def test_times_without_offset_in_a_file_with_offsets(tmp_path):
  rows = [[d.isoformat() + ("+01:00" if k != 2 else "")] + list(b)
          for k, (d, b) in enumerate(zip(TIMES, BARS))]
  p = _write_rows(tmp_path / "mix.csv", ["datetime", "open", "high", "low", "close", "volume"],
                  rows)
  with pytest.raises(IngestError, match=r"mix\.csv:4: time '2024-01-02T09:32:00' has no UTC "
                                        r"offset, unlike line 2"):
    _read(p)
  _, _, skipped = _read(p, on_error="skip")
  assert skipped == {"unparsable_time": 1}


def test_strptime_z_directive_gives_the_offset(tmp_path):
  rows = [[d.strftime("%d/%m/%Y %H:%M ") + "+0100"] + list(b) for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "zz.csv", ["time", "open", "high", "low", "close", "volume"], rows)
  ts, bars, _ = _read(p, time_format="%d/%m/%Y %H:%M %z", timezone="UTC")
  _check_known(ts, bars, [d - datetime.timedelta(hours=1) for d in TIMES])


# --------------------------------------------------------------------------
# Date + time columns, compressed files, the CLI
# --------------------------------------------------------------------------


def test_separate_date_and_time_columns(tmp_path):
  rows = [[d.strftime("%Y-%m-%d"), d.strftime("%H:%M:%S")] + list(b)
          for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "dt.csv", ["Date", "Time", "Open", "High", "Low", "Close", "Vol"],
                  rows)
  ts, bars, _ = _read(p)
  _check_known(ts, bars)


def test_gz_and_zst_files_and_folders(tmp_path):
  rows = [[d.strftime("%Y-%m-%d %H:%M")] + list(b) for d, b in zip(TIMES, BARS)]
  plain = _write_rows(tmp_path / "plain.csv", ["time", "open", "high", "low", "close", "volume"],
                      rows).read_bytes()
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "a.csv.gz").write_bytes(gzip.compress(plain))
  (folder / "b.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(plain))
  for name in ("a.csv.gz", "b.csv.zst"):
    ts, bars, _ = _read(folder / name)
    _check_known(ts, bars)
  s = ingest([str(folder)], tmp_path / "out")
  assert sorted((e["instrument"], e["rows"]) for e in s["instruments"]) == [("a", 4), ("b", 4)]
  (folder / "a.csv.gz").write_bytes(gzip.compress(plain)[:-9])  # Truncated.
  with pytest.raises(IngestError, match=r"a\.csv\.gz: cannot decompress gzip"):
    ingest([str(folder)], tmp_path / "out2")


def test_cli_timezone_flag_and_gz_input(tmp_path):
  rows = [[int(d.replace(tzinfo=UTC).timestamp())] + list(b) for d, b in zip(TIMES, BARS)]
  p = _write_rows(tmp_path / "e.csv", ["timestamp", "open", "high", "low", "close", "volume"],
                  rows)
  gz = tmp_path / "e.csv.gz"
  gz.write_bytes(gzip.compress(p.read_bytes()))
  cmd = [sys.executable, "-m", "jaxquant.data.ingest", f"--out={tmp_path / 'o'}",
         "--timezone=Asia/Shanghai", str(gz)]
  r = subprocess.run(cmd, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert "e: 4 rows, 2024-01-02 17:30:00 .. 2024-01-02 17:33:00" in r.stdout
  assert "note: epoch (UTC) times converted to Asia/Shanghai wall clock" in r.stdout
  r = subprocess.run(cmd[:-2] + ["--timezone=Nowhere/Else", str(gz)], capture_output=True,
                     text=True)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
      "error: --timezone='Nowhere/Else': unknown time zone")


# --------------------------------------------------------------------------
# The fast path (clean files) gives what the exact path gives
# --------------------------------------------------------------------------


def _variants(rng):
  """Clean and not-quite-clean files: the same answers either way."""
  n = 300
  start = datetime.datetime(2021, 3, 1, 9)
  times = [start + datetime.timedelta(seconds=int(s)) for s in np.cumsum(rng.integers(1, 90, n))]
  close = np.round(50 + np.cumsum(rng.normal(0, 0.1, n)), 3)
  layouts = [
      ("datetime", lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
      ("Time", lambda d: d.strftime("%d.%m.%Y %H:%M:%S.%f")[:-3]),
      ("date", lambda d: f"{d.month}/{d.day}/{d.year} {d.hour}:{d.minute:02d}:{d.second:02d}"),
      ("timestamp", lambda d: str(int(d.replace(tzinfo=UTC).timestamp() * 1000))),
      ("datetime", lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f+02:00")),
  ]
  for k, (head, fmt) in enumerate(layouts):
    lines = [f"{head},open,high,low,close,volume"]
    for d, c in zip(times, close):
      lines.append(f"{fmt(d)},{c},{c + 0.5},{c - 0.5},{c},{int(rng.integers(0, 9))}")
    text = "\n".join(lines) + "\n"
    yield f"v{k}.csv", text, True
    # Number spellings the cast reads and blanks float() ignores.
    yield f"v{k}_sp.csv", text.replace(",0\n", ", 0 \n").replace(".5,", ".50,"), True
    bad = lines[:]
    bad[150] = bad[150].replace(bad[150].split(",")[2], "-1", 1)  # A bad row: high < low.
    yield f"v{k}_bad.csv", "\n".join(bad) + "\n", False
    yield f"v{k}_blank.csv", "\n".join(lines[:100] + [""] + lines[100:]) + "\n", False
    yield f"v{k}_nonl.csv", text.rstrip("\n"), True  # No line end after the last row.
    head, body = text.split("\n", 1)
    yield f"v{k}_trail.csv", head + "\n" + body.replace("\n", ",\n", 7), False  # Kept rows.


def test_fast_path_matches_the_exact_path(tmp_path, monkeypatch):
  for name, text, clean in _variants(np.random.default_rng(3)):
    p = tmp_path / name
    p.write_text(text)
    fast = csv_bars._read_clean(str(p), text.encode(), None, "skip", bar_checks.gap_ns("14d"),
                                1.0, None)
    assert (fast is not None) == clean, name  # Clean files do take the fast path.
    got = {}
    for fast in (True, False):
      monkeypatch.setattr(csv_bars, "FAST", fast)
      try:
        s = _series(p, on_error="skip")
        got[fast] = (s.timestamps, s.bars, s.skipped, s.notes, s.extra_meta)
        with pytest.raises(IngestError) as e:
          _series(p, max_bar_range=1e-9)  # Every bar too wide: the first is named.
        got[fast] += (str(e.value),)
      except IngestError as e:
        got[fast] = str(e)
    a, b = got[True], got[False]
    assert type(a) is type(b), name
    if isinstance(a, str):
      assert a == b, name
      continue
    np.testing.assert_array_equal(a[0], b[0], err_msg=name)
    np.testing.assert_array_equal(a[1], b[1], err_msg=name)
    assert a[2:] == b[2:], name
