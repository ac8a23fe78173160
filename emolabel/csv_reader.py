"""CSV in: the header read first, every column as text, pieces that end at a row end, and
errors that name the line; pyarrow's streaming reader does the parsing.

The header is read here, so every column is read as a string: values round-trip exactly and a
column cannot fail half-way through a file on a type change (detect.typed types them after, if
asked). CSV out is csv_text.py's.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv

from emolabel import formats
from emolabel.errors import InputError, InputOptionError
from emolabel.inputs import CSV_BLOCK, HEADER_LIMIT, Reader, _decode_or_fail, _short, rechunk


def read_csv(name: str, stream: IO[bytes], *, chunk_rows: int, encoding: str, on_error: str,
             delimiter: str | None = None, detect_types: bool = False, empty_null: bool = False,
             text_column: str | None = None, text_columns: tuple[str, ...] = (), **_: Any) -> Reader:
    """formats.CSV's reader (inputs.open_stream says what the options do; the others are not CSV's)."""
    keep = {*(text_columns or ()), *([text_column] if text_column else [])}
    return _open_csv(name, stream, chunk_rows, encoding, on_error, delimiter or formats.default_delimiter(name),
                     detect_types, empty_null, keep, tuple(text_columns or ()))


def _open_csv(name: str, stream: IO[bytes], chunk_rows: int, encoding: str, on_error: str, delimiter: str = ",",
              detect_types: bool = False, empty_null: bool = False, keep: set[str] | None = None,
              text_columns: tuple[str, ...] = ()) -> Reader:
    header, names = _read_header(name, stream, encoding, delimiter)
    missing = [n for n in text_columns if n not in names]
    if missing:
        raise InputOptionError(f"`text_columns` names {', '.join(map(repr, missing))}, which {name} does not have. "
                         f"Available columns: {', '.join(names)}.")

    invalid: list[Any] = []
    skipped: list[int] = []

    def on_invalid(row: Any) -> str:
        if on_error == "skip":
            skipped.append(row.number)
            return "skip"
        invalid.append(row)
        return "error"

    explain = _explainer(name, encoding, invalid)
    blocks = _RowBlocks(header, stream)
    try:
        reader = pa_csv.open_csv(blocks, **_arrow_options(names, delimiter, encoding, empty_null, on_invalid))
    except pa.ArrowException as e:
        raise explain(e) from None
    schema, rows = reader.schema, _batches(reader, blocks, explain, name, delimiter, len(names))
    if detect_types:
        from emolabel.detect import typed

        try:
            schema, rows = typed(name, rows, schema, keep or set())
        except BaseException:
            reader.close()
            raise
    out = Reader(name, formats.CSV, schema, None, rechunk(rows, chunk_rows), skipped)
    out.types = {f.name: str(f.type) for f in schema} if detect_types else None
    out._closers.append(reader.close)
    return out


def _read_header(name: str, stream: IO[bytes], encoding: str, delimiter: str) -> tuple[bytes, list[str]]:
    """The header row (its bytes, for pyarrow, and its column names), read before pyarrow's reader
    so that every column is read as a string; a file that has no header is named."""
    header = stream.readline(HEADER_LIMIT)
    while header.count(b'"') % 2 and len(header) < HEADER_LIMIT and (more := stream.readline(HEADER_LIMIT)):
        header += more  # a quoted newline in the header
    if len(header) >= HEADER_LIMIT and not header.endswith(b"\n"):
        if b"\r" in header:
            raise InputError(f"{name} ends its lines with CR alone (old Mac style); convert them first, e.g. "
                             f"tr '\\r' '\\n' < {name} > fixed.csv")
        raise InputError(f"{name}: the first line is longer than {HEADER_LIMIT >> 20} MiB, so it is not a CSV header "
                         "(is this a CSV file?). Give the right `input_format`, or put the column names first.")
    if header.startswith(codecs.BOM_UTF8):
        header = header[len(codecs.BOM_UTF8) :]
    if not header.strip():
        raise InputError(f"{name} is empty: expected a CSV header row with column names.")
    text = _decode_or_fail(header, encoding, name, "line 1 (the header)")
    if "\r" in text.rstrip("\r\n") and "\n" not in text.rstrip("\r\n") and not text.endswith("\n"):
        raise InputError(f"{name} ends its lines with CR alone (old Mac style); convert them first, e.g. "
                         f"tr '\\r' '\\n' < {name} > fixed.csv")
    try:
        names = next(csv.reader([text], delimiter=delimiter))
    except csv.Error as e:
        raise InputError(f"{name}, line 1 (the header) cannot be read as CSV column names: {e}.") from None
    _check_unique(names, name)
    return header, names


def _arrow_options(names: list[str], delimiter: str, encoding: str, empty_null: bool,
                   on_invalid: Callable[[Any], str]) -> dict[str, Any]:
    """pyarrow's read, parse and convert options: every column a string, rows that span lines."""
    # Reads are at most one block; a row may span two (a longer one fails, named): 16 MB blocks take
    # multi-megabyte texts in one field.
    read_opts = pa_csv.ReadOptions(block_size=CSV_BLOCK, encoding=encoding, use_threads=False)
    parse_opts = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid)
    convert_opts = pa_csv.ConvertOptions(
        column_types={n: pa.string() for n in names},  # typed after reading (detect.typed), if asked
        strings_can_be_null=empty_null,
        quoted_strings_can_be_null=empty_null,
        null_values=[""] if empty_null else [],
    )
    return dict(read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)


def _explainer(name: str, encoding: str, invalid: list[Any]) -> Callable[[Exception], InputError]:
    """pyarrow's error as an InputError naming the file and line (`invalid`: the rows pyarrow refused)."""

    def explain(e: Exception) -> InputError:
        msg = _short(e)
        if invalid:
            row = invalid[-1]
            where = f"line {row.number}" if row.number is not None else "a row"
            return InputError(
                f"{name}, {where}: expected {row.expected_columns} columns, found {row.actual_columns} "
                f"({row.text[:80]!r}). Fix the row, quote fields that contain commas, "
                "or pass `on_error` skip to leave such rows out."
            )
        if "straddling" in msg:
            return InputError(f"{name} has a row longer than {CSV_BLOCK >> 20} MB; split such texts first.")
        if "UTF8" in msg or "UTF-8" in msg:
            line = _first_undecodable_line(name, encoding)
            where = f", line {line}," if line else ""
            return InputError(
                f"{name}{where} is not valid {encoding}. If the file is Latin-1 or Windows-1252, "
                "pass `encoding` latin-1 (or cp1252)."
            )
        return InputError(f"{name} cannot be parsed as CSV: {msg}")

    return explain


def _batches(reader: Any, blocks: _RowBlocks, explain: Callable[[Exception], InputError], name: str,
             delimiter: str, n_columns: int) -> Iterator[pa.RecordBatch]:
    """pyarrow's batches, its errors explained; a quoted field never closed is named."""
    warned: list[bool] = []
    seen = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            if blocks.unclosed:
                where = f"line {blocks.open_line}" if blocks.open_line else "a row"
                raise InputError(
                    f"{name}, {where}: a quoted field opens here and never closes (an unmatched \"), so "
                    "every row after it would be read as part of one text. Close or remove that quote "
                    "(a quote inside a quoted field is written twice: \"\")."
                ) from None
            return
        except pa.ArrowException as e:
            raise explain(e) from None
        if not warned:
            warned.extend(_rows_in_a_field(batch, delimiter, n_columns, name, seen))
        seen += batch.num_rows
        yield batch


def _rows_in_a_field(batch: pa.RecordBatch, delimiter: str, n_columns: int, name: str, start: int) -> list[bool]:
    """Warn (once) when a quoted field spans lines that look like rows of this file: a stray
    quote that closes later merges the rows between into one text, which CSV cannot tell from a
    real multi-line text. [True] if it warned."""
    import pyarrow.compute as pc

    if n_columns < 2:
        return []
    for col in batch.columns:
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        hits = pc.indices_nonzero(pc.fill_null(pc.match_substring(col, "\n"), False)).to_pylist()
        for i in hits:
            inner = col[i].as_py().split("\n")[1:]
            rowlike = [line for line in inner if line.count(delimiter) >= n_columns - 1]
            if rowlike:
                import warnings

                from emolabel.errors import EmolabelWarning

                warnings.warn(EmolabelWarning(
                    f"{name}, data row {start + i + 1}: a quoted text spans {len(inner) + 1} lines, and "
                    f"{len(rowlike)} of them look like rows of this file ({rowlike[0][:60]!r}). If a stray quote "
                    "merged rows, fix it: every row is labelled as read."), stacklevel=2)
                return [True]
    return []


def _first_undecodable_line(name: str, encoding: str) -> int | None:
    """Where a file first fails to decode (only computed for the error message)."""
    if name == "<stdin>" or not Path(name).is_file():
        return None
    opener = gzip.open if name.lower().endswith(".gz") else open
    with opener(name, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError:
                return lineno
    return None


def _check_unique(names: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names, 1):
        if n in seen:
            raise InputError(
                f"{name}: column name {n!r} appears twice (columns {seen[n]} and {i}). "
                "Rename one so every column has its own name."
            )
        seen[n] = i


class _RowBlocks(io.RawIOBase):
    """`header` then `rest`, handed out in pieces of about `piece` bytes that end at a row end.

    pyarrow's CSV reader reads up to 32 blocks ahead of the parser, whatever their size. With
    16 MB blocks (needed for multi-megabyte texts) that is up to 512 MB of input in memory, so
    peak memory grew with the file. Handing it 256 KB pieces bounds that to ~8 MB, and ending
    each piece at a newline outside quotes (RFC 4180 quoting: the parity of quote characters
    tells) keeps a long row in one piece. This only chooses where pieces end: pyarrow still
    finds the rows itself, so a wrong guess (a stray quote) costs memory, never correctness.
    """

    def __init__(self, header: bytes, rest: IO[bytes], piece: int = 256 << 10):
        self._buf = bytearray(header)
        self._rest = rest
        self._piece = piece
        self._quoted = False  # inside a quoted field at the start of _buf
        self._eof = False
        self._lines = 0  # newlines handed out so far
        self.open_line: int | None = None  # line of the quote that opened the field still open

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size > 0 else 1 << 62
        searched = 0
        while True:
            if len(self._buf) >= min(self._piece, limit) or self._eof:
                end = min(len(self._buf), limit)
                cut = self._row_end(end, searched)
                if cut or end >= limit or self._eof:
                    cut = cut or end
                    break
                searched = end
            more = self._rest.read(self._piece)
            if more:
                self._buf += more
            else:
                self._eof = True
        out = bytes(self._buf[:cut])
        del self._buf[:cut]
        was = self._quoted
        self._quoted ^= out.count(b'"') % 2 == 1
        if self._quoted:  # rare: pieces end outside quotes unless a field runs on (to the end?)
            opened = self._last_opening(out, was)
            if opened is not None:
                self.open_line = self._lines + out.count(b"\n", 0, opened) + 1
        self._lines += out.count(b"\n")
        return out

    @staticmethod
    def _last_opening(data: bytes, quoted: bool) -> int | None:
        """Offset of the last quote in `data` that opened a quoted field (None: none opened here)."""
        last = None
        i = data.find(b'"')
        while i >= 0:
            if not quoted:
                last = i
            quoted = not quoted
            i = data.find(b'"', i + 1)
        return last

    @property
    def unclosed(self) -> bool:
        """At the end of the input: a quoted field never closed (every row after it became its text)."""
        return self._eof and not self._buf and self._quoted

    def _row_end(self, end: int, searched: int) -> int:
        """1 + the last newline in _buf[:end] that is outside quotes (0: none, or none past `searched`)."""
        buf = self._buf
        quotes = buf.count(b'"', 0, end) + self._quoted  # parity of the quotes before `end`
        i, stop = buf.rfind(b"\n", searched, end), end
        while i >= 0:
            quotes -= buf.count(b'"', i, stop)
            if quotes % 2 == 0:
                return i + 1
            i, stop = buf.rfind(b"\n", searched, i), i
        return 0
