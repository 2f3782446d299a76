"""Tests for real-data ingest (jaxquant.data.ingest)."""

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from jaxquant.data import bar_times, samples
from jaxquant.data.bar_checks import IngestError
from jaxquant.data.csv_bars import read_csv_bars
from jaxquant.data.ingest import ingest
from jaxquant.data.shards import ShardReader, load_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
EURUSD = os.path.join(DATA, "eurusd_1h_2017_head300.csv")
SP500 = os.path.join(DATA, "sp500_daily_1999_2018_head300.csv")
# The last 300 rows of the same files (the other end of the year / of 2017-2018).
EURUSD_TAIL = os.path.join(DATA, "eurusd_1h_2017_tail300.csv")
SP500_TAIL = os.path.join(DATA, "sp500_daily_1999_2018_tail300.csv")
TQSDK = os.path.join(DATA, "tqsdk_rb2105_if2103_1min.csv")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "real")
O, H, L, C, V, OI = range(6)


def _ns(s, fmt):
    """Expected int64 ns of a naive datetime string."""
    d = datetime.strptime(s, fmt)
    return (d - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _write(path, lines):
    with open(path, "w", newline="") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------
# Real data slices
# --------------------------------------------------------------------------


@pytest.mark.parametrize("path,fmt,time_format_name", [
    (EURUSD, "%d.%m.%Y %H:%M:%S.%f", "DD.MM.YYYY[ HH:MM[:SS[.f]]]"),
    (SP500, "%m/%d/%Y", "M/D/YYYY[ HH:MM[:SS[.f]]]"),
    (EURUSD_TAIL, "%d.%m.%Y %H:%M:%S.%f", "DD.MM.YYYY[ HH:MM[:SS[.f]]]"),
    (SP500_TAIL, "%m/%d/%Y", "M/D/YYYY[ HH:MM[:SS[.f]]]"),
])
def test_real_slices(tmp_path, path, fmt, time_format_name):
    rows = _csv_rows(path)
    header, rows = rows[0], rows[1:]
    col = {h: j for j, h in enumerate(header)}
    s = ingest([path], tmp_path / "out")
    (e,) = s["instruments"]
    stem = os.path.basename(path)[:-4]
    assert e["instrument"] == stem and e["rows"] == 300 and e["skipped"] == {}
    assert e["time_format"] == time_format_name
    assert e["shard"] == os.path.join(str(tmp_path / "out"), stem + ".parquet")
    assert any("open_interest set to 0" in n for n in e["notes"])
    assert not any("volume" in n for n in e["notes"])

    ((name, ts, bars),) = load_dir(tmp_path / "out")
    assert name == stem and ts.shape == (300,) and bars.shape == (300, 6)
    np.testing.assert_array_equal(ts, [_ns(r[0], fmt) for r in rows])
    assert e["first"] == datetime.strptime(rows[0][0], fmt).strftime("%Y-%m-%d %H:%M:%S")
    assert e["last"] == datetime.strptime(rows[-1][0], fmt).strftime("%Y-%m-%d %H:%M:%S")
    for k, c in zip((O, H, L, C, V), ("Open", "High", "Low", "Close", "Volume")):
        np.testing.assert_array_equal(bars[:, k], [float(r[col[c]]) for r in rows])
    assert (bars[:, V] > 0).all() and (bars[:, OI] == 0).all()

    with ShardReader(e["shard"]) as r:  # provenance without paths or times
        assert r.meta["source"] == os.path.basename(path)
        with open(path, "rb") as f:
            assert r.meta["source_sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_first_last_timestamps_exact():
    ((ts, _, _),) = read_csv_bars(EURUSD).values()
    assert str(ts[0].astype("datetime64[ns]")) == "2017-01-01T22:00:00.000000000"
    assert str(ts[-1].astype("datetime64[ns]")) == "2017-01-18T09:00:00.000000000"
    ((ts, _, _),) = read_csv_bars(SP500).values()
    assert str(ts[0].astype("datetime64[ns]")) == "1999-01-04T00:00:00.000000000"
    assert str(ts[-1].astype("datetime64[ns]")) == "2000-03-10T00:00:00.000000000"


def test_real_files_both_ends():
    """The first and last 300 rows of both real files (tests/data, copied verbatim from
    ../shared/data/real): every row read, none skipped, the files' own first and last
    bars exact (test_real_slices checks every value of the four slices)."""
    ends = {EURUSD: ("2017-01-01T22:00", "2017-01-18T09:00"),
            EURUSD_TAIL: ("2017-12-12T19:00", "2017-12-29T21:00"),
            SP500: ("1999-01-04T00:00", "2000-03-10T00:00"),
            SP500_TAIL: ("2017-10-20T00:00", "2018-12-31T00:00")}
    for path, (first, last) in ends.items():
        ((ts, bars, skipped),) = read_csv_bars(path).values()
        assert ts.size == 300 and skipped == {}, (path, ts.size, skipped)
        assert np.all(np.diff(ts) > 0)
        got = [str(t.astype("datetime64[ns]").astype("datetime64[m]")) for t in (ts[0], ts[-1])]
        assert got == [first, last], (path, got)
    # The two slices of a file are its two ends: the tail starts after the head ends.
    for head, tail in ((EURUSD, EURUSD_TAIL), (SP500, SP500_TAIL)):
        assert read_csv_bars(head).popitem()[1][0][-1] < read_csv_bars(tail).popitem()[1][0][0]


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data/real not present")
def test_full_real_files():
    """The whole files, where ../shared sits beside the checkout (not on CI; the
    always-run test_real_files_both_ends reads their two ends from tests/data)."""
    got = read_csv_bars(os.path.join(SHARED, "eurusd_1h_2017.csv"))
    assert {k: (v[0].size, v[2]) for k, v in got.items()} == {"eurusd_1h_2017": (6225, {})}
    got = read_csv_bars(os.path.join(SHARED, "sp500_daily_1999_2018.csv"))
    assert {k: (v[0].size, v[2]) for k, v in got.items()} == {"sp500_daily_1999_2018": (5031, {})}


# --------------------------------------------------------------------------
# TqSdk exports
# --------------------------------------------------------------------------


def test_tqsdk_two_symbols(tmp_path):
    s = ingest([TQSDK], tmp_path)
    by = {e["instrument"]: e for e in s["instruments"]}
    assert sorted(by) == ["CFFEX.IF2103", "SHFE.rb2105"]
    assert by["SHFE.rb2105"]["rows"] == 12 and by["SHFE.rb2105"]["skipped"] == {}
    # IF2103 does not trade at night: 4 rows without data, skipped, not an error.
    assert by["CFFEX.IF2103"]["rows"] == 8 and by["CFFEX.IF2103"]["skipped"] == {"no_data": 4}
    assert by["CFFEX.IF2103"]["shard"].endswith("CFFEX.IF2103.parquet")

    rows = _csv_rows(TQSDK)
    header, rows = rows[0], rows[1:]
    market = {name: (ts, bars) for name, ts, bars in load_dir(tmp_path)}
    for sym, n in (("SHFE.rb2105", 12), ("CFFEX.IF2103", 8)):
        ts, bars = market[sym]
        j = {c: header.index(f"{sym}.{c}") for c in
             ("open", "high", "low", "close", "volume", "close_oi")}
        # datetime_nano is UTC; shards hold exchange local time = the datetime column.
        np.testing.assert_array_equal(ts, [_ns(r[0][:26], "%Y-%m-%d %H:%M:%S.%f")
                                           for r in rows[:n]])
        np.testing.assert_array_equal(ts, [int(r[1]) + 8 * 3600 * 10**9 for r in rows[:n]])
        for k, c in enumerate(("open", "high", "low", "close", "volume", "close_oi")):
            np.testing.assert_array_equal(bars[:, k], [float(r[j[c]]) for r in rows[:n]])
    with ShardReader(tmp_path / "SHFE.rb2105.parquet") as r:
        assert r.meta["utc_offset"] == "+08:00" and r.meta["source_kind"] == "tqsdk"


def _tq_lines():
    with open(TQSDK) as f:
        return f.read().splitlines()


def test_tqsdk_partial_missing_is_an_error(tmp_path):
    lines = _tq_lines()
    f = lines[2].split(",")
    f[12] = "#N/A"  # CFFEX.IF2103.close only: not a "no data" row
    lines[2] = ",".join(f)
    p = _write(tmp_path / "tq.csv", lines)
    with pytest.raises(IngestError) as e:
        read_csv_bars(p)
    assert str(e.value) == f"{p}:3: CFFEX.IF2103: empty value '#N/A' in column 'CFFEX.IF2103.close'"
    got = read_csv_bars(p, on_error="skip")
    assert got["CFFEX.IF2103"][2] == {"empty_field": 1, "no_data": 4}
    assert got["CFFEX.IF2103"][0].size == 7 and got["SHFE.rb2105"][0].size == 12


def test_tqsdk_datetime_mismatch(tmp_path):
    lines = _tq_lines()
    lines[3] = "2021-01-04 09:33:00.000000000" + lines[3][29:]
    p = _write(tmp_path / "tq.csv", lines)
    with pytest.raises(IngestError) as e:
        read_csv_bars(p)
    assert str(e.value) == (f"{p}:4: SHFE.rb2105: datetime '2021-01-04 09:33:00.000000000' does "
                            "not match datetime_nano '1609723920000000000' shifted by the "
                            "file's UTC offset +08:00")
    got = read_csv_bars(p, on_error="skip")
    assert got["SHFE.rb2105"][2] == {"time_mismatch": 1}


# --------------------------------------------------------------------------
# Malformed input: one bad row in a 10-row slice of the EUR/USD file
# (line 5 is "02.01.2017 01:00:00.000,1.05282,1.05286,1.05225,1.0524,273940002.4")
# --------------------------------------------------------------------------

BAD_ROWS = [
    # (field index, new value or None to drop the field, reason key, message)
    (0, "32.01.2017 01:00:00.000", "unparsable_time",
     "unparsable time '32.01.2017 01:00:00.000' (expected DD.MM.YYYY[ HH:MM[:SS[.f]]])"),
    (0, "tomorrow", "unparsable_time",
     "unparsable time 'tomorrow' (expected DD.MM.YYYY[ HH:MM[:SS[.f]]])"),
    (0, "01.01.2017 21:00:00.000", "non_monotonic_timestamp",
     "timestamp 2017-01-01 21:00:00 is earlier than 2017-01-02 00:00:00 on line 4 "
     "(rows must be in increasing time order)"),
    (0, "02.01.2017 00:00:00.000", "duplicate_timestamp",
     "duplicate timestamp 2017-01-02 00:00:00 (same as line 4)"),
    (1, "0", "non_positive_price", "non-positive price Open=0"),
    (3, "-1.05225", "non_positive_price", "non-positive price Low=-1.05225"),
    (2, "1.05", "inconsistent_ohlc", "high 1.05 < low 1.05225"),
    (2, "1.0526", "inconsistent_ohlc", "high 1.0526 < max(open 1.05282, close 1.0524)"),
    (3, "1.0525", "inconsistent_ohlc", "low 1.0525 > min(open 1.05282, close 1.0524)"),
    (4, "nan", "non_finite", "non-finite value 'nan' in column 'Close'"),
    (4, "", "empty_field", "empty value '' in column 'Close'"),
    (1, "abc", "non_numeric", "non-numeric value 'abc' in column 'Open'"),
    (5, "-5", "negative_volume", "negative Volume=-5"),
    (5, None, "wrong_field_count", "expected 6 fields, got 5"),
]


def _eurusd_head(n=10):
    with open(EURUSD) as f:
        return f.read().splitlines()[:n + 1]


@pytest.mark.parametrize("field,value,reason,message", BAD_ROWS)
def test_bad_row(tmp_path, field, value, reason, message):
    lines = _eurusd_head()
    f = lines[4].split(",")
    if value is None:
        del f[field]
    else:
        f[field] = value
    lines[4] = ",".join(f)
    p = _write(tmp_path / "bad.csv", lines)
    with pytest.raises(IngestError) as e:
        ingest([p], tmp_path / "out")
    assert str(e.value) == f"{p}:5: {message}"
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing is written on bad input

    s = ingest([p], tmp_path / "out", on_error="skip")
    (e,) = s["instruments"]
    assert e["skipped"] == {reason: 1} and e["rows"] == 9 and s["skipped"] == {reason: 1}
    ((_, ts, _),) = load_dir(tmp_path / "out")
    good = [_ns(r.split(",")[0], "%d.%m.%Y %H:%M:%S.%f") for k, r in enumerate(lines[1:]) if k != 3]
    np.testing.assert_array_equal(ts, good)


def test_skip_counts_several_reasons(tmp_path):
    lines = _eurusd_head(20)
    lines[3] = lines[3].replace("1.05283,1.05283", "1.05283,x", 1)          # non_numeric
    lines[6] = "garbage," + lines[6].split(",", 1)[1]                       # unparsable_time
    lines[9] = lines[8]                                                     # duplicate
    lines[12] = lines[12].split(",", 1)[0] + ",1,2,3,1.5,7"                 # high < low
    lines[15] = lines[15].split(",", 1)[0] + ",1,1,1,1,"                    # empty volume
    p = _write(tmp_path / "bad.csv", lines)
    with pytest.raises(IngestError, match=r"bad\.csv:4: non-numeric value 'x' in column 'High'"):
        read_csv_bars(p)
    ((ts, bars, skipped),) = read_csv_bars(p, on_error="skip").values()
    assert skipped == {"duplicate_timestamp": 1, "empty_field": 1, "inconsistent_ohlc": 1,
                       "non_numeric": 1, "unparsable_time": 1}
    assert ts.size == 15 and (np.diff(ts) > 0).all()


def test_missing_columns(tmp_path):
    lines = [",".join(f for k, f in enumerate(l.split(",")) if k != 2) for l in _eurusd_head()]
    p = _write(tmp_path / "nohigh.csv", lines)
    msg = f"{p}:1: missing required column(s) high; found: 'Time', 'Open', 'Low', 'Close', 'Volume'"
    for mode in ("stop", "skip"):
        with pytest.raises(IngestError) as e:
            ingest([p], tmp_path / "out", on_error=mode)
        assert str(e.value) == msg
    # No header names the time and no column holds times (an unknown header whose
    # column does is found by its content: tests/test_csv_formats.py).
    lines = ["Stamp,Open,High,Low,Close,Volume"] + [
        f"row{k}," + l.split(",", 1)[1] for k, l in enumerate(_eurusd_head()[1:])]
    p = _write(tmp_path / "notime.csv", lines)
    with pytest.raises(IngestError, match=r"notime\.csv:1: missing required column\(s\) time "
                                          r"\(time, datetime, date, timestamp, gmt time"):
        read_csv_bars(p)


def test_file_level_errors(tmp_path):
    p = _write(tmp_path / "empty.csv", [""])
    with pytest.raises(IngestError, match=r"empty\.csv:1: empty file"):
        read_csv_bars(p)
    p = _write(tmp_path / "hdr.csv", ["Time,Open,High,Low,Close"])
    with pytest.raises(IngestError, match=r"hdr\.csv:1: no data rows"):
        read_csv_bars(p)
    p = _write(tmp_path / "fmt.csv", ["Time,Open,High,Low,Close", "soon,1,1,1,1"])
    with pytest.raises(IngestError, match=r"fmt\.csv:2: unparsable time 'soon': no known format"):
        read_csv_bars(p)
    with pytest.raises(IngestError, match="no such file"):
        ingest([str(tmp_path / "nope.csv")], tmp_path / "out")
    with pytest.raises(IngestError, match="on-error"):
        ingest([EURUSD], tmp_path / "out", on_error="ignore")
    with pytest.raises(IngestError, match="needs exactly one generic CSV"):
        ingest([EURUSD, SP500], tmp_path / "out", instrument="X")


def test_line_numbers_with_quotes_and_blank_lines(tmp_path):
    for quoted in (False, True):
        q = '"' if quoted else ""
        lines = [f"{q}Time{q},Open,High,Low,Close",
                 f"{q}2017-01-02 09:00{q},1,2,0.5,1.5", "",
                 f"{q}2017-01-02 09:01{q},1,2,0.5,{q}x{q}"]
        p = _write(tmp_path / f"q{quoted}.csv", lines)
        with pytest.raises(IngestError) as e:
            read_csv_bars(p)
        assert str(e.value) == f"{p}:4: non-numeric value 'x' in column 'Close'"


def test_line_numbers_crlf_blank_rows_and_line_breaks_in_values(tmp_path):
    rows = ["", "  ", "Time,Open,High,Low,Close", "",
            "2017-01-02 09:00,1,2,0.5,1.5,",  # A trailing delimiter: kept.
            " ,,", ",,,,", '"2017-01-02 09:01",1,2,0.5,"1.5\r\n"', "   ",
            "2017-01-02 09:02,1,2", "2017-01-02 09:03,1,2,0.5,y"]
    for eol in ("\n", "\r\n", "\r"):
        p = tmp_path / "crlf.csv"
        p.write_bytes(eol.join(rows).encode() + eol.encode())
        with pytest.raises(IngestError) as e:
            read_csv_bars(p)
        assert str(e.value) == f"{p}:11: expected 5 fields, got 3"  # Line 10 ends in a value.
        ((ts, bars, skipped),) = read_csv_bars(p, on_error="skip").values()
        assert skipped == {"non_numeric": 1, "wrong_field_count": 1} and ts.size == 2
        np.testing.assert_array_equal(bars[:, C], [1.5, 1.5])


def test_numbers_read_as_python_float_reads_them(tmp_path):
    p = _write(tmp_path / "n.csv", ["Time,Open,High,Low,Close,Volume",
                                    "2017-01-02 09:00, 1 ,2,1_0,1e1,+.5",
                                    "2017-01-02 09:01,1,2,1,1,nan(1)",
                                    "2017-01-02 09:02,1,2,1,1,-Infinity",
                                    "2017-01-02 09:03,1,2,1,1, N/A "])
    with pytest.raises(IngestError, match=r"n\.csv:2: high 2 < low 1_0"):
        read_csv_bars(p)
    ((_, _, skipped),) = read_csv_bars(p, on_error="skip").values()
    assert skipped == {"empty_field": 1, "inconsistent_ohlc": 1, "non_finite": 1,
                       "non_numeric": 1}


# --------------------------------------------------------------------------
# Column and time-format variants
# --------------------------------------------------------------------------


def test_date_time_columns_custom_format_and_aliases(tmp_path):
    p = _write(tmp_path / "cu.csv", [
        "DATE,TIME,open,HIGH,low,Close,Adj Close,OI",
        "20170102,0930,10,12,9,11,0,500", "20170102,0931,11,11.5,10.5,11,0,510"])
    with pytest.raises(IngestError, match="cu.csv:2: unparsable time '20170102 0930'"):
        read_csv_bars(p)
    s = ingest([p], tmp_path / "o", time_format="%Y%m%d %H%M", instrument="SHFE.cu")
    (e,) = s["instruments"]
    assert e["instrument"] == "SHFE.cu" and e["first"] == "2017-01-02 09:30:00"
    assert e["notes"] == ["no volume column: volume set to 0"]
    ((name, ts, bars),) = load_dir(tmp_path / "o")
    assert name == "SHFE.cu"
    np.testing.assert_array_equal(bars, [[10, 12, 9, 11, 0, 500], [11, 11.5, 10.5, 11, 0, 510]])


def test_strptime_fallback_format(tmp_path):
    p = _write(tmp_path / "b.csv", ["Date,Open,High,Low,Close,Volume",
                                    "02-Jan-2017 9:30 AM,1,2,1,2,5", "02-Jan-2017 1:05 PM,2,3,2,3,6"])
    ((ts, _, _),) = read_csv_bars(p, time_format="%d-%b-%Y %I:%M %p").values()
    np.testing.assert_array_equal(ts, [_ns("2017-01-02 09:30", "%Y-%m-%d %H:%M"),
                                       _ns("2017-01-02 13:05", "%Y-%m-%d %H:%M")])


@pytest.mark.parametrize("scale", [1, 1000, 10**6, 10**9])
def test_epoch_integers(tmp_path, scale):
    secs = [1483351200, 1483354800]  # 2017-01-02 10:00, 11:00 UTC
    p = _write(tmp_path / "e.csv", ["timestamp,open,high,low,close,volume"] +
               [f"{t * scale},1,1,1,1,1" for t in secs])
    ((ts, _, _),) = read_csv_bars(p).values()
    np.testing.assert_array_equal(ts, [t * 10**9 for t in secs])


def test_many_layouts_and_non_ascii_digits():
    rng = np.random.default_rng(1)
    dts = [datetime(1990, 1, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 10**7, 500)]
    vals = [f"{d.month}/{d.day}/{d.year} {d.hour}:{d.minute:02d}" for d in dts]
    vals[7] = "1/2/2017 9:3０"  # full-width digit: not ASCII, not a time
    ns, ok = bar_times.parse_times(vals, bar_times.BUILTINS[3])
    want = [(d - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000 for d in dts]
    assert not ok[7] and ok.sum() == 499
    np.testing.assert_array_equal(ns[ok], np.array(want)[ok])


def test_yyyymmdd_is_a_date_not_epoch(tmp_path):
    p = _write(tmp_path / "d.csv", ["Date,Open,High,Low,Close", "20170103,1,1,1,1",
                                    "20170104,1,1,1,1"])
    ((ts, _, _),) = read_csv_bars(p).values()
    np.testing.assert_array_equal(ts, [_ns("2017-01-03", "%Y-%m-%d"), _ns("2017-01-04", "%Y-%m-%d")])


def test_invalid_calendar_dates_rejected():
    vals = ["2017-02-29", "2016-02-29", "2017-13-01", "2017-04-31", "2017-01-01 24:00"]
    ns, ok = bar_times.parse_times(vals, bar_times.BUILTINS[0])
    assert ok.tolist() == [False, True, False, False, False]


_FORMATTERS = [
    (0, lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f"), lambda d: d),
    (0, lambda d: d.strftime("%Y-%m-%dT%H:%M"), lambda d: d.replace(second=0, microsecond=0)),
    (1, lambda d: d.strftime("%Y/%m/%d %H:%M:%S"), lambda d: d.replace(microsecond=0)),
    (2, lambda d: d.strftime("%d.%m.%Y %H:%M:%S.%f")[:-3],
     lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    (3, lambda d: f"{d.month}/{d.day}/{d.year}", lambda d: datetime(d.year, d.month, d.day)),
    (3, lambda d: f"{d.month}/{d.day}/{d.year} {d.hour}:{d.minute:02d}",
     lambda d: d.replace(second=0, microsecond=0)),
    (4, lambda d: d.strftime("%Y%m%d"), lambda d: datetime(d.year, d.month, d.day)),
]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(range(len(_FORMATTERS))),
       st.lists(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31)),
                min_size=1, max_size=40))
def test_time_parser_matches_datetime(k, dts):
    """The regex time parser (pyarrow.compute) agrees with datetime on every layout."""
    fmt_index, fmt, truncate = _FORMATTERS[k]
    ns, ok = bar_times.parse_times([fmt(d) for d in dts], bar_times.BUILTINS[fmt_index])
    assert ok.all()
    want = [(truncate(d) - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000 for d in dts]
    np.testing.assert_array_equal(ns, want)


# --------------------------------------------------------------------------
# Inputs, parts, output directory
# --------------------------------------------------------------------------


def test_folder_of_parts_and_compressed_csv(tmp_path):
    lines = _eurusd_head(300)
    for sub, part in (("a", lines[:151]), ("b", [lines[0]] + lines[151:])):
        os.makedirs(tmp_path / sub)
        data = ("\n".join(part) + "\n").encode()
        with open(tmp_path / sub / "eur.csv.zst", "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(data))
    s = ingest([str(tmp_path / "b"), str(tmp_path / "a")], tmp_path / "out")
    assert [e["shard"].rsplit(os.sep, 1)[1] for e in s["instruments"]] == \
        ["eur.part1.parquet", "eur.part2.parquet"]
    ((name, ts, bars),) = load_dir(tmp_path / "out")
    ((ts0, bars0, _),) = read_csv_bars(EURUSD).values()
    assert name == "eur"
    np.testing.assert_array_equal(ts, ts0)
    np.testing.assert_array_equal(bars, bars0)

    # Overlapping parts of one instrument are refused.
    _write(tmp_path / "b" / "eur.csv", [lines[0]] + lines[100:])
    os.remove(tmp_path / "b" / "eur.csv.zst")
    with pytest.raises(IngestError, match="instrument 'eur' overlaps"):
        ingest([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out2")


def test_output_dir_rules(tmp_path):
    out = tmp_path / "out"
    ingest([EURUSD], out)
    ingest([EURUSD], out)  # re-running the same inputs into the same folder is fine
    with pytest.raises(IngestError, match=r"already holds other shards "
                                          r"\(eurusd_1h_2017_head300\.parquet\)"):
        ingest([SP500], out)
    with pytest.raises(IngestError, match="given twice"):
        ingest([EURUSD, DATA], tmp_path / "o2")


def test_deterministic_rerun(tmp_path):
    samples = _sample_folder(tmp_path / "samples")
    inputs = [DATA, samples]
    ingest(inputs, tmp_path / "a")
    ingest(inputs, tmp_path / "b")
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b"))
    # 4 real slices, the 2 TqSdk symbols, the manifest, the samples and the instrument table.
    assert {"manifest.json", "samples.parquet", "instruments.csv"} <= set(names)
    assert len(names) == 9
    before = {}
    for n in names:
        with open(tmp_path / "a" / n, "rb") as fa, open(tmp_path / "b" / n, "rb") as fb:
            a = before[n] = fa.read()
            assert a == fb.read(), n
            assert str(tmp_path).encode() not in a  # no absolute paths stored
    ingest(inputs, tmp_path / "a")
    for n in names:
        with open(tmp_path / "a" / n, "rb") as f:
            assert f.read() == before[n], n
    manifest = json.loads(before["manifest.json"])
    assert [e["shard"] for e in manifest["shards"]] == [
        "CFFEX.IF2103.parquet", "SHFE.rb2105.parquet", "eurusd_1h_2017_head300.parquet",
        "eurusd_1h_2017_tail300.parquet", "sp500_daily_1999_2018_head300.parquet",
        "sp500_daily_1999_2018_tail300.parquet"]
    assert manifest["samples"]["shard"] == "samples.parquet" and manifest["total_rows"] == 1220


def test_crash_leaves_complete_shards_only(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ingest([EURUSD, SP500], out)  # an earlier complete run
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    os.remove(out / "sp500_daily_1999_2018_head300.parquet")
    with pytest.raises(OSError, match="No space left"):
        ingest([EURUSD, SP500], out)
    monkeypatch.undo()
    names = sorted(os.listdir(out))
    # The old manifest is gone (its presence would claim a complete ingest),
    # the first shard is complete, the second absent, and no temp file remains
    # (the instrument table of the earlier run stays: it holds the user's edits).
    assert names == ["eurusd_1h_2017_head300.parquet", "instruments.csv"]
    with ShardReader(out / names[0]) as r:
        assert r.read_all()[0].size == 300


# --------------------------------------------------------------------------
# Loose per-sample .zst files -> samples.parquet
# --------------------------------------------------------------------------


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _sample_folder(folder, n=7, shape=(20, 5)):
    """n samples: even ones .npy (no label), odd ones .npz (x/y or sample/label)."""
    os.makedirs(folder, exist_ok=True)
    cctx = zstandard.ZstdCompressor(level=3)
    for i in range(n):
        x = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1000 * i)
        if i % 2 == 0:
            raw = _npy(x)
        elif i % 4 == 1:
            raw = _npz(x=x, y=np.int64(i % 3))
        else:
            raw = _npz(sample=x, label=np.int64(i % 3))
        if i == 3:  # a streamed frame without a content size
            w = io.BytesIO()
            with zstandard.ZstdCompressor(write_content_size=False).stream_writer(
                    w, closefd=False) as zw:
                zw.write(raw)
            blob = w.getvalue()
        else:
            blob = cctx.compress(raw)
        with open(os.path.join(folder, f"s{i:03d}.zst"), "wb") as f:
            f.write(blob)
    return str(folder)


def test_sample_folder_round_trip(tmp_path):
    folder = _sample_folder(tmp_path / "samples")
    s = ingest([folder], tmp_path / "out")
    assert s["instruments"] == [] and s["samples"]["num_samples"] == 7
    assert s["samples"]["num_labels"] == 3 and s["samples"]["shape"] == [20, 5]
    path = tmp_path / "out" / "samples.parquet"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [f["name"] for f in manifest["samples"]["sources"]] == [f"s{i:03d}.zst" for i in range(7)]
    r = samples.read_samples(path, manifest["samples"]["sha256"])
    assert r["names"] == [f"s{i:03d}.zst" for i in range(7)] and r["x"].dtype == np.float32
    for i in range(7):
        np.testing.assert_array_equal(r["x"][i], np.arange(100, dtype=np.float32).reshape(20, 5)
                                      + 1000 * i)
    assert r["labels"].tolist() == [-1 if i % 2 == 0 else i % 3 for i in range(7)]
    assert np.isnan(r["returns"]).all() and r["time_from"] == [None] * 7
    # pyarrow (and so pandas, polars, DuckDB) reads the file as it is.
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    assert t.column_names == ["name", "timestamp", "time_from", "label", "return", "x"]
    assert t.column("x").type.byte_width == 20 * 5 * 4
    assert pq.ParquetFile(path).metadata.row_group(0).column(5).compression == "ZSTD"


def test_sample_file_corruption_is_one_line_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16, 3))
    p = str(tmp_path / "samples.parquet")
    sha = samples.write_samples(p, x, labels=rng.integers(0, 2, 40))
    np.testing.assert_array_equal(samples.read_samples(p, sha)["x"], x)
    raw = open(p, "rb").read()
    with pytest.raises(samples.SampleFileError, match=r"samples\.parquet: no such file"):
        samples.read_samples(tmp_path / "nothere" / "samples.parquet")
    cases = {"bit flip": raw[:2000] + bytes([raw[2000] ^ 4]) + raw[2001:],
             "truncated": raw[:-100], "zero span": raw[:1000] + bytes(500) + raw[1500:],
             "trailing garbage": raw + b"x" * 10, "empty": b""}
    for what, bad in cases.items():
        open(p, "wb").write(bad)
        with pytest.raises(samples.SampleFileError) as e:  # against the manifest's sha256
            samples.read_samples(p, sha)
        assert str(e.value).startswith(p + ": sha256 ") and "\n" not in str(e.value), what
    for what in cases:  # no manifest: Parquet's own checks
        open(p, "wb").write(cases[what])
        with pytest.raises(samples.SampleFileError, match=r"^" + re.escape(p) + ": corrupt"):
            samples.read_samples(p)
    newer = raw.replace(b'"version": 1', b'"version": 9')
    open(p, "wb").write(newer)
    with pytest.raises(samples.SampleFileError, match="version 9 is newer"):
        samples.read_samples(p)


def test_bad_sample_files(tmp_path):
    folder = _sample_folder(tmp_path / "samples", n=3)
    with open(os.path.join(folder, "s001_bad.zst"), "wb") as f:
        f.write(b"not zstd at all")
    with open(os.path.join(folder, "s002_big.zst"), "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(_npy(np.zeros((21, 5), np.float32))))
    with pytest.raises(IngestError) as e:
        ingest([folder], tmp_path / "out")
    assert str(e.value).startswith(os.path.join(folder, "s001_bad.zst") + ": cannot decompress")
    s = ingest([folder], tmp_path / "out", on_error="skip")
    assert s["samples"]["num_samples"] == 3
    assert s["samples"]["skipped"] == {"bad_sample_file": 1, "sample_mismatch": 1}
    os.remove(os.path.join(folder, "s001_bad.zst"))
    with pytest.raises(IngestError, match=r"s002_big\.zst: sample has shape \[21, 5\]"):
        ingest([folder], tmp_path / "out2")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def test_cli(tmp_path):
    lines = _eurusd_head()
    lines[4] = lines[4].replace("1.05286", "1.05", 1)
    bad = _write(tmp_path / "bad.csv", lines)
    cases = {
        "ok": ([f"--out={tmp_path / 'ok'}", "--instrument=EURUSD", EURUSD], 0),
        "skip": ([f"--out={tmp_path / 'skip'}", "--on-error=skip", "--chunk-rows=4", bad], 0),
        "bad": ([f"--out={tmp_path / 'bad'}", bad], 2),
        "no_out": ([EURUSD], 2),
        "no_input": ([f"--out={tmp_path / 'x'}", str(tmp_path / "missing.csv")], 2),
        "bad_flag": ([f"--out={tmp_path / 'y'}", "--on-error=maybe", EURUSD], 2),
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "jaxquant.data.ingest", *args], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, (args, _) in cases.items()}
    res = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=120)
        res[k] = (p.returncode, out, err)
        assert p.returncode == cases[k][1], (k, p.returncode, err)
        if p.returncode:
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (k, err)
    assert res["bad"][2].strip() == f"error: {bad}:5: high 1.05 < low 1.05225"
    assert not (tmp_path / "bad").exists()
    assert res["no_input"][2].strip() == f"error: {tmp_path / 'missing.csv'}: no such file or directory"
    assert "--out=DIR is required" in res["no_out"][2]
    out = res["ok"][1]
    assert "EURUSD: 300 rows, 2017-01-01 22:00:00 .. 2017-01-18 09:00:00 -> " \
           f"{tmp_path / 'ok' / 'EURUSD.parquet'}" in out
    assert "open_interest set to 0" in out and "manifest.json" in out
    assert "skipped: inconsistent_ohlc=1" in res["skip"][1]
    ((name, ts, _),) = load_dir(tmp_path / "skip")
    assert name == "bad" and ts.size == 9
    with ShardReader(tmp_path / "skip" / "bad.parquet") as r:
        assert r.chunk_rows == 4


# --------------------------------------------------------------------------
# Suspicious data: absurd bars and long gaps, named with file and line
# --------------------------------------------------------------------------


def test_absurd_bar_is_named_and_skipped(tmp_path):
    lines = _eurusd_head(20)
    f = lines[6].split(",")
    f[2] = "1e300"  # High: a misprint that would otherwise train without a word.
    lines[6] = ",".join(f)
    p = _write(tmp_path / "wide.csv", lines)
    with pytest.raises(IngestError) as e:
        ingest([p], tmp_path / "out")
    assert str(e.value).startswith(f"{p}:7: absurd range: high 1e300 - low ")
    assert "--max-bar-range" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()

    s = ingest([p], tmp_path / "out", on_error="skip")
    (e,) = s["instruments"]
    assert e["rows"] == 19 and e["skipped"] == {"absurd_range": 1}
    assert s["flagged"] == {"absurd_range": 1}
    assert e["flag_messages"][0].startswith(f"{p}:7: absurd range")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["flagged"] == {"absurd_range": 1}
    assert manifest["shards"][0]["flag_messages"][0].startswith("wide.csv:7: absurd range")
    # The limit is a setting: a wide enough one lets the bar through.
    s = ingest([p], tmp_path / "out2", max_bar_range=0)
    assert s["instruments"][0]["rows"] == 20 and s["flagged"] == {}


def test_long_gap_is_named_and_reported_by_the_run(tmp_path):
    from jaxquant.data import dataset
    lines = _eurusd_head(20)
    del lines[8:15]  # 7 hourly rows missing: an 8-hour step from line 8 to line 9.
    p = _write(tmp_path / "gappy.csv", lines)
    ingest([p], tmp_path / "default")  # 8 hours is no gap under the default 14 days.
    with pytest.raises(IngestError) as e:
        ingest([p], tmp_path / "out", max_gap="6h")
    assert str(e.value).startswith(
        f"{p}:9: gap of 8h since line 8 (2017-01-02 04:00:00 -> 2017-01-02 12:00:00) is "
        "longer than --max-gap=6h")
    s = ingest([p], tmp_path / "out", max_gap="6h", on_error="skip")
    (e,) = s["instruments"]
    assert e["rows"] == 13 and e["skipped"] == {}  # A gap drops no row.
    assert s["flagged"] == {"long_gap": 1} and e["flag_messages"][0].startswith(f"{p}:9: gap")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["flagged"] == {"long_gap": 1} and manifest["max_gap"] == "6h"
    # The run's data line repeats it.
    split = dataset.Split("train", *(np.zeros(1, t) for t in
                                     (np.int64, np.int32, float, np.int32, np.int64)))
    ds = dataset.Dataset(features=np.zeros((13, 1), np.float32), splits={"train": split},
                         instruments=["gappy"], normalizer={}, window=1, horizon=1)
    line = dataset.describe_data(ds, str(tmp_path / "out"))
    assert "ingest flagged 1 long_gap (first: gappy.csv:9: gap of 8h" in line, line
    assert "flagged" not in dataset.describe_data(ds, str(tmp_path / "default"))
    with pytest.raises(IngestError, match=r"--max-gap='soon': expected a duration"):
        ingest([p], tmp_path / "x", max_gap="soon")


def test_cli_flags_for_suspicious_data(tmp_path):
    lines = _eurusd_head(20)
    del lines[8:15]
    p = _write(tmp_path / "gappy.csv", lines)
    r = subprocess.run([sys.executable, "-m", "jaxquant.data.ingest", f"--out={tmp_path / 'o'}",
                        "--max-gap=6h", "--on-error=skip", p], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"flagged: {p}:9: gap of 8h since line 8" in r.stdout
