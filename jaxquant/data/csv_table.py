"""CSV bytes -> pyarrow string columns of the data rows, with the file line of each row.

pyarrow.csv tokenizes. What it has no option for is done on its output: the
physical line of every row for `<file>:<line>: <reason>` (blank lines, the
header line, CRLF, lone CR and line breaks in quoted values count as
csv.reader counted them), rows of only blanks (skipped like blank lines),
and rows with another field count than the header: read again on their own,
kept when the extra fields are all empty, else wrong_field_count.
"""

import codecs
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv

from jaxquant.data import bar_checks

_BLANK = b" \t\n\r\f\v\""


def _find(u, byte):
  """Positions of byte in u, in blocks (no file-sized temporary)."""
  step = 1 << 23
  return np.concatenate([np.flatnonzero(u[i:i + step] == byte) + i
                         for i in range(0, len(u), step)] or [np.zeros(0, np.int64)])


def _physical_lines(data, start):
  """(content start, content end) of each line of data; "\\n", "\\r\\n" and "\\r" end one."""
  u = np.frombuffer(data, np.uint8)
  nl = _find(u, 10)
  ends, nxt = nl, nl + 1
  if data.find(b"\r") >= 0:
    ends = nl - ((nl > 0) & (u[np.maximum(nl - 1, 0)] == 13))
    cr = _find(u, 13)
    lone = cr[(cr + 1 >= len(u)) | (u[np.minimum(cr + 1, len(u) - 1)] != 10)]
    ends, nxt = np.concatenate([ends, lone]), np.concatenate([nxt, lone + 1])
    order = np.argsort(nxt, kind="stable")
    ends, nxt = ends[order], nxt[order]
  starts = np.concatenate([[start], nxt])
  if starts[-1] < len(u):
    ends = np.concatenate([ends, [len(u)]])
  else:
    starts = starts[:-1]
  return starts, ends


def _newlines(strings):
  """Line ends inside each (quoted) value."""
  return (pc.count_substring(strings, "\n").to_numpy(zero_copy_only=False)
          + pc.count_substring(strings, "\r").to_numpy(zero_copy_only=False)
          - pc.count_substring(strings, "\r\n").to_numpy(zero_copy_only=False))


def _read(buf, ncol, delim, quoted, handler, threads=False):
  names = [f"f{j}" for j in range(ncol)]
  return pa_csv.read_csv(
      buf,
      read_options=pa_csv.ReadOptions(column_names=names, use_threads=threads),
      parse_options=pa_csv.ParseOptions(delimiter=delim, newlines_in_values=quoted,
                                        ignore_empty_lines=True, invalid_row_handler=handler),
      convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                            strings_can_be_null=False,
                                            quoted_strings_can_be_null=False))


def _blank(columns):
  """Rows whose every field is empty or whitespace (skipped like blank lines)."""
  col = columns[0]
  offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset:col.offset + len(col) + 1]
  data = col.buffers()[2]
  # Only a first field that is empty or starts with a blank can be blank.
  maybe = offsets[1:] == offsets[:-1]
  if data is not None and data.size:
    u = np.frombuffer(data, np.uint8)
    lead = u[np.minimum(offsets[:-1], len(u) - 1)]
    maybe |= (lead == 32) | ((lead >= 9) & (lead <= 13)) | (lead >= 128)
  blank = np.zeros(len(col), dtype=bool)
  for i in np.flatnonzero(maybe):
    blank[i] = all(not c[int(i)].as_py().strip() for c in columns)
  return blank


def _odd_rows(path, invalid, ncol, delim, quoted):
  """Rows pyarrow found with another field count than the header, read on their own.

  Returns (fields [ncol lists], lengths, kept, blank): a row with extra fields
  that are all empty is kept (cut to ncol); others are wrong_field_count
  (padded or cut, as their values are never used).
  """
  fields = [[""] * len(invalid) for _ in range(ncol)]
  lens, kept, blank = [r[1] for r in invalid], [False] * len(invalid), [False] * len(invalid)
  by_len = {}
  for k, (_, n, _) in enumerate(invalid):
    by_len.setdefault(n, []).append(k)
  for n, rows in by_len.items():
    text = "\n".join(invalid[k][2] for k in rows).encode()

    def again(row):
      raise bar_checks.IngestError(f"{path}: malformed CSV (cannot re-read row {row.text!r})")
    t = _read(pa.py_buffer(text), n, delim, quoted, again)
    cols = [c.to_pylist() for c in t.columns]
    if t.num_rows != len(rows):
      raise bar_checks.IngestError(f"{path}: malformed CSV (rows of {n} fields re-read as "
                                   f"{t.num_rows} rows, not {len(rows)})")
    for r, k in enumerate(rows):
      values = [c[r] for c in cols]
      blank[k] = not any(v.strip() for v in values)
      kept[k] = n > ncol and not any(v.strip() for v in values[ncol:])
      for j in range(min(n, ncol)):
        fields[j][k] = values[j]
  return fields, np.array(lens, dtype=np.int64), np.array(kept), np.array(blank)


def _header(line, delim, quoted):
  """The names of a header line (read as a data row: pyarrow wants rows after a header)."""
  parse = pa_csv.ParseOptions(delimiter=delim, newlines_in_values=quoted)
  auto = pa_csv.ReadOptions(autogenerate_column_names=True)
  ncol = pa_csv.read_csv(pa.py_buffer(line), read_options=auto, parse_options=parse).num_columns
  names = [f"f{j}" for j in range(ncol)]
  t = pa_csv.read_csv(pa.py_buffer(line), read_options=pa_csv.ReadOptions(column_names=names),
                      parse_options=parse, convert_options=pa_csv.ConvertOptions(
                          column_types={n: pa.string() for n in names},
                          strings_can_be_null=False, quoted_strings_can_be_null=False))
  return [c[0].as_py() for c in t.columns]


_DELIMITERS = (",", ";", "\t", "|")


def _delimiter(first):
  """The delimiter of a header line: the most frequent of , ; tab | outside quotes
  (ties in that order; none: a comma)."""
  bare = re.sub(rb'"[^"]*"', b"", first)
  counts = [bare.count(d.encode()) for d in _DELIMITERS]
  return _DELIMITERS[counts.index(max(counts))] if max(counts) else ","


def clean_header(data):
  """The header of a file `read_table` needs no line bookkeeping for, else None.

  Clean: ASCII, no quote, no CR, the header on line 1; each row is then one line,
  row r on line r + 2 if the reader finds a row on every line (no blank line).

  Returns:
    (header [names, stripped], delimiter, offset of the first row) or None.
  """
  bom = 3 if data.startswith(codecs.BOM_UTF8) else 0
  end = data.find(b"\n")
  if (end < 0 or not data[bom:end].strip() or end + 1 >= len(data) or data.find(b'"') >= 0
      or data.find(b"\r") >= 0 or not (data[bom:] if bom else data).isascii()):
    return None
  delim = _delimiter(data[bom:end])
  return [h.strip() for h in _header(data[bom:end + 1], delim, False)], delim, end + 1


def read_table(path, data):
  """Tokenizes CSV bytes; blank lines and rows of only blanks are dropped.

  Returns:
    (header [names, stripped], columns [ncol pyarrow string arrays of the rows],
    lines [int64: physical line of each row, line 1 the file's first], lengths
    [int64: fields in each row], wrong [bool: wrong_field_count rows]).
  """
  if not data.isascii():
    try:
      data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
      line = data[:e.start].count(b"\n") + 1
      raise bar_checks.IngestError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
  bom = 3 if data.startswith(codecs.BOM_UTF8) else 0
  end = data.find(b"\n")
  delim = _delimiter(data[bom:end if end >= 0 else len(data)])
  starts, ends = _physical_lines(data, bom)
  strip = _BLANK + delim.encode()
  k = 0
  while k < len(starts) and not data[starts[k]:ends[k]].strip(strip):
    k += 1
  if k == len(starts):
    raise bar_checks.IngestError(f"{path}:1: empty file, expected a header row")
  quoted = data.find(b'"', int(starts[k])) >= 0
  last = k  # A quoted header name may hold line breaks.
  while data[starts[k]:ends[last]].count(b'"') % 2 and last + 1 < len(starts):
    last += 1
  header_line = last + 1
  header = [h.strip() for h in _header(data[starts[k]:ends[last]] + b"\n", delim, quoted)]
  ncol = len(header)
  rest = last + 1
  if not (ends[rest:] > starts[rest:]).any():  # pyarrow refuses to read nothing
    raise bar_checks.IngestError(f"{path}:{header_line}: no data rows after the header")
  body = pa.py_buffer(data).slice(int(starts[rest]))

  invalid = []

  def handler(row):
    invalid.append((row.number, row.actual_columns, row.text))
    return "skip"
  try:
    table = _read(body, ncol, delim, quoted, handler, threads=True)
    if invalid:  # Rows have numbers only when read in one thread.
      invalid.clear()
      table = _read(body, ncol, delim, quoted, handler)
  except pa.ArrowInvalid as e:
    raise bar_checks.IngestError(f"{path}:{header_line + 1}: malformed CSV ({e})") from None
  m = table.num_rows
  columns = []
  while table.num_columns:  # One column at a time: the table lets go of each.
    c = table.column(0)
    table = table.drop_columns([table.column_names[0]])
    columns.append(c.combine_chunks() if c.num_chunks != 1 else c.chunk(0))
    del c
  n = m + len(invalid)
  lens = np.full(n, ncol, dtype=np.int64)
  wrong = np.zeros(n, dtype=bool)
  blank = np.zeros(n, dtype=bool)
  span = np.zeros(n, dtype=np.int64)  # Line breaks inside each record's quoted values.
  if m:
    blank[:m] = _blank(columns)
    if quoted:
      for c in columns:
        span[:m] += _newlines(c)
  if invalid:
    fields, odd_lens, kept, odd_blank = _odd_rows(path, invalid, ncol, delim, quoted)
    # Records in file order: pyarrow numbers them from 1, blank lines not counted.
    number = np.ones(n, dtype=bool)
    odd = np.array([r[0] for r in invalid], dtype=np.int64) - 1
    number[odd] = False
    order = np.argsort(np.concatenate([np.flatnonzero(number), odd]), kind="stable")
    columns = [pa.concat_arrays([c, pa.array(f, pa.string())]).take(pa.array(order))
               for c, f in zip(columns, fields)]
    lens[m:], wrong[m:], blank[m:] = odd_lens, ~kept, odd_blank
    span[m:] = _newlines(pa.array([r[2] for r in invalid], pa.string()))
    lens, wrong, blank, span = lens[order], wrong[order], blank[order], span[order]
  lines = _row_lines(path, starts, ends, rest, span)
  keep = ~blank
  if not keep.any():
    raise bar_checks.IngestError(f"{path}:{header_line}: no data rows after the header")
  if blank.any():
    idx = pa.array(np.flatnonzero(keep))
    columns = [c.take(idx) for c in columns]
    lines, lens, wrong = lines[keep], lens[keep], wrong[keep]
  return header, columns, lines, lens, wrong


def _row_lines(path, starts, ends, first, span):
  """The physical line of each record (its last line, as csv.reader's line_num).

  Args:
    starts, ends: the file's lines (`_physical_lines`).
    first: index of the first line after the header.
    span: [records] line breaks inside each record.
  """
  n = len(span)
  nonempty = np.flatnonzero(ends[first:] > starts[first:]) + first
  if not span.any():
    if nonempty.size != n:
      raise bar_checks.IngestError(f"{path}: malformed CSV ({n} rows on {nonempty.size} "
                                   "non-empty lines)")
    return nonempty + 1
  lines = np.zeros(n, dtype=np.int64)
  empty = ends <= starts
  p = first
  for r in range(n):  # Only for files with line breaks inside quoted values.
    while p < len(starts) and empty[p]:
      p += 1
    end = min(p + int(span[r]), len(starts) - 1)
    lines[r] = end + 1
    p = end + 1
  return lines
