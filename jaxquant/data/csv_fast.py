"""The fast path of bar CSV reading: a clean file block by block, its text never all in memory.

`csv_table.read_table` keeps every field of a file as text, so that any row's
problem can be named with its text as written. Most files have no problem. For
a clean file (`csv_table.clean_header`) this reads the rows in blocks with
pyarrow's streaming reader and keeps only the parsed times and numbers. The
first sign of trouble (a row of another width, a number the cast refuses or
that is not finite, a time its format does not read) returns None, and the
caller reads the file the exact way, which names the problem. The values are the
exact path's: the same cast, the same time parser, on the same rows.
"""

import numpy as np
import pyarrow as pa
from pyarrow import csv as pa_csv

from jaxquant.data import bar_times
from jaxquant.data import shards

_PIECE = 8 << 20  # Bytes per pyarrow read: each piece's text is dropped before the next.


def read_bars(data, start, ncol, delim, tcol, cols, fmt=None):
  """The times and bars of a clean file's rows, or None for the exact reader to decide.

  Args:
    data: the file's bytes; start: where its first row begins (`csv_table.clean_header`).
    ncol: fields in the header; delim: the delimiter.
    tcol: index of the time column; cols: {bar column: index} of the number columns.
    fmt: a `bar_times.TimeFormat`, or None to detect it from the first rows.

  Returns:
    (fmt, ns [int64: wall clock as written], offset [int64 ns], zoned [bool], values
    [6, rows] float64 in BAR_COLUMNS order, absent columns 0), or None. A row on
    every line after the header, or None: the file has blank lines.
  """
  rows = data.count(b"\n", start) + (0 if data.endswith(b"\n") else 1)
  names = [f"f{j}" for j in range(ncol)]
  # Numbers converted by the reader: the cast of the exact path, blanks around a
  # number ignored as float() ignores them; "nan" and "inf" are read, then refused.
  types = {names[tcol]: pa.string(), **{names[j]: pa.float64() for j in cols.values()}}
  options = (pa_csv.ReadOptions(column_names=names), pa_csv.ParseOptions(delimiter=delim),
             pa_csv.ConvertOptions(include_columns=list(types), column_types=types,
                                   strings_can_be_null=False, null_values=[]))
  ns, offset = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
  zoned = np.zeros(rows, dtype=bool)
  values = np.zeros((len(shards.BAR_COLUMNS), rows))  # Columns contiguous: checked next.
  a, r = start, 0
  while a < len(data):
    b = data.find(b"\n", a + _PIECE)
    b = len(data) if b < 0 else b + 1
    try:
      table = pa_csv.read_csv(pa.py_buffer(data).slice(a, b - a), *options)
    except pa.ArrowInvalid:  # Another field count, or a cell that is not a number.
      return None
    a, m = b, table.num_rows
    if r + m > rows:
      return None
    times = table.column(names[tcol])
    if fmt is None:  # The exact path detects on the file's first rows: these.
      fmt = bar_times.detect_time_format(times.combine_chunks())
      if fmt is None:
        return None
    t, ok, off, z = bar_times.parse_zoned(times, fmt)
    if not ok.all():
      return None
    ns[r:r + m] = t
    if z.any():  # np.zeros pages are only resident once written.
      offset[r:r + m], zoned[r:r + m] = off, z
    for k, j in cols.items():
      col = table.column(names[j])
      v = col.to_numpy()
      if col.null_count or not np.isfinite(v).all():
        return None
      values[shards.BAR_COLUMNS.index(k), r:r + m] = v
    r += m
  return (fmt, ns, offset, zoned, values) if r == rows and fmt is not None else None
