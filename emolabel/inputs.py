"""Inputs: one file, stdin or several files as one stream of record batches, and the readers
of the formats that need no module of their own (Parquet, lines).

Readers yield pyarrow RecordBatches of about `chunk_rows` rows, so memory stays flat whatever
the input size; every problem is an InputError naming the file and line. Each format's reader is
named by its record (formats.py): csv_reader.py, jsonl.py, and read_parquet / read_lines here.
Finding the files (globs, URIs) is files.py's; writing is outputs.py's.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from emolabel import formats
from emolabel.errors import InputError
from emolabel.files import STDIO, display_name, is_regular_file, is_uri, text_name
from emolabel.formats import Format

CSV_BLOCK = 16 << 20  # the longest CSV row (and JSON line, and text line) that can be read
HEADER_LIMIT = 1 << 20  # a CSV header longer than this is not a header (/dev/zero, a binary file)


@dataclass
class Reader:
    """A streaming table: its schema is known before the first batch is read."""

    name: str  # the file name or <stdin>, for messages
    format: Format
    schema: pa.Schema
    total_rows: int | None  # known up front for Parquet only
    batches: Iterator[pa.RecordBatch]
    skipped: list[Any] = field(default_factory=list)  # lines dropped by --on-error skip (file:line for several files)
    _closers: list[Any] = field(default_factory=list)
    total_bytes: int | None = None  # a CSV / JSON Lines file's size, for progress by bytes
    bytes_read: Callable[[], int] | None = None  # how far into those bytes the reader is
    keys: list[str] | None = None  # JSON Lines kept as read: the keys of its first lines (its columns: text, RAW)
    types: dict[str, str] | None = None  # CSV with detect_types: the type each column got

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self.batches

    def close(self) -> None:
        for c in self._closers:
            try:
                c()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def open_input(
    path: str,
    fmt: Format | None = None,
    *,
    chunk_rows: int = 16384,
    encoding: str = "utf-8",
    on_error: str = "fail",
    **csv_options: Any,
) -> Reader:
    """Open `path` (or '-' for stdin) as a stream of record batches; errors name the file.
    `csv_options`: open_stream's delimiter (default: from the name), detect_types, empty_null,
    text_column."""
    if fmt is not None:
        fmt = formats.for_reading(fmt)  # before the file is opened: a format never read is an option error
    name = display_name(path)
    raw = disk = sys.stdin.buffer if path == STDIO else _open_file(path)
    if path != STDIO and path.lower().endswith(".gz"):
        raw = _Gunzip(name, raw)  # type: ignore[assignment]
    stream = io.BufferedReader(raw, buffer_size=1 << 20) if not hasattr(raw, "peek") else raw
    if path == STDIO and stream.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[union-attr]
        # gzip on stdin (`zcat` forgotten): its magic bytes tell, so read through it
        stream = io.BufferedReader(_Gunzip(name, stream), buffer_size=1 << 20)  # type: ignore[arg-type]
    if fmt is None:
        fmt = formats.from_suffix(path) if path != STDIO else None
        if fmt is None:
            head = stream.peek(4096)[:4096]  # type: ignore[union-attr]
            if path != STDIO:
                raise InputError(
                    f"Cannot tell the format of {path} from its name; "
                    f"use `input_format` ({', '.join(formats.readable())})."
                )
            fmt = formats.sniff(head, encoding)
    closers: list[Any] = []
    try:
        source: Any = stream
        if fmt.seekable:
            source = path if path != STDIO else _spool(stream, fmt, closers)
        if not fmt.seekable and path != STDIO and is_regular_file(path):
            csv_options["reopen"] = lambda: _reopen(path, name)  # JSON Lines: typed over all its lines, then read
        reader = open_stream(name, source, fmt, chunk_rows=chunk_rows, encoding=encoding, on_error=on_error,
                             **csv_options)
    except BaseException:
        for close in (*closers, raw.close):
            try:
                close()
            except OSError:  # a spool that cannot flush (a full TMPDIR): the error being raised says so
                pass
        raise
    reader._closers += [*closers, raw.close]
    if path != STDIO and not fmt.seekable:  # progress by bytes: where the reader is in the file
        reader.total_bytes = os.fstat(disk.fileno()).st_size if is_regular_file(path) else None
        reader.bytes_read = _position(disk) if reader.total_bytes is not None else None  # of a .gz: its compressed bytes
    return reader


def _open_file(path: str) -> IO[bytes]:
    """A local input file opened for reading; what stops it (a folder, no file, no permission) named."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path} is a folder; give a file ({formats.titles(formats.readable())}).")
    try:
        return open(p, "rb")  # noqa: SIM115 - closed by the Reader
    except FileNotFoundError:
        raise InputError(f"Input file {path} does not exist.") from None
    except PermissionError:
        raise InputError(f"Input file {path} cannot be read: permission denied.") from None
    except OSError as e:  # a symlink loop, a name too long, ...
        raise InputError(f"Input file {path} cannot be opened: {e.strerror or e}.") from None


def _spool(stream: IO[bytes], fmt: Format, closers: list[Any]) -> str:
    """stdin copied to a temporary file, for a format read from a seekable file (Parquet keeps its
    index at the end of the file): on disk, not in memory. Its close goes on `closers`."""
    try:
        spool = tempfile.NamedTemporaryFile(prefix="emolabel-stdin-", suffix=fmt.suffixes[0])  # noqa: SIM115
    except OSError as e:
        raise InputError(f"{fmt.title} on stdin is buffered in {tempfile.gettempdir()}, which cannot be "
                         f"written ({e.strerror or e}): set TMPDIR to a folder with room, or give "
                         "the file's path.") from None
    closers.append(spool.close)
    try:
        shutil.copyfileobj(stream, spool, 1 << 20)
        spool.flush()
    except OSError as e:
        raise InputError(f"{fmt.title} on stdin is buffered in {tempfile.gettempdir()}, which ran out of "
                         f"room ({e.strerror or e}): set TMPDIR to a folder with room, or give the "
                         "file's path.") from None
    return spool.name


def _reopen(path: str, name: str) -> IO[bytes]:
    """A regular file opened again from its first byte (through gzip for .gz)."""
    f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if not path.lower().endswith(".gz"):
        return f
    unzipped = _Gunzip(name, f)
    unzipped.myfileobj = f  # GzipFile closes the file it names here when it is closed
    return unzipped


def _position(file: IO[bytes]) -> Callable[[], int]:
    """How far the operating system has read `file`, for the progress bar's thread: one lseek,
    atomic, where file.tell() would read the buffer's fields while the reading thread changes
    them (a bar that could jump). At most a buffer (1 MiB) ahead of the rows. Once the file is
    closed, ValueError, as tell() would (its descriptor may already name another file)."""
    fd = file.fileno()

    def position() -> int:
        if file.closed:
            raise ValueError("I/O operation on closed file")
        return os.lseek(fd, 0, os.SEEK_CUR)

    return position


class _Gunzip(gzip.GzipFile):
    """gzip.GzipFile whose read errors (not gzip, truncated, corrupt) are InputErrors naming the file."""

    def __init__(self, name: str, fileobj: Any):
        super().__init__(fileobj=fileobj, mode="rb")
        self._label = name

    def _fail(self, e: BaseException) -> InputError:
        return InputError(f"{self._label} is not a readable gzip file ({e or type(e).__name__}). Check the file, or "
                          "give it without .gz if it is not compressed.")

    def read(self, size: int = -1) -> bytes:
        try:
            return super().read(size)
        except (OSError, EOFError, zlib.error) as e:
            raise self._fail(e) from None

    def read1(self, size: int = -1) -> bytes:
        try:
            return super().read1(size)
        except (OSError, EOFError, zlib.error) as e:
            raise self._fail(e) from None

    def peek(self, n: int) -> bytes:
        try:
            return super().peek(n)
        except (OSError, EOFError, zlib.error) as e:
            raise self._fail(e) from None

    def readline(self, size: int | None = -1) -> bytes:
        try:
            return super().readline(size)
        except (OSError, EOFError, zlib.error) as e:
            raise self._fail(e) from None


def open_stream(name: str, source: Any, fmt: Format, *, chunk_rows: int = 16384, encoding: str = "utf-8",
                on_error: str = "fail", delimiter: str | None = None, detect_types: bool = False,
                empty_null: bool = False, text_column: str | None = None, text_columns: tuple[str, ...] = (),
                keep_json: bool = False, reserved: tuple[str, ...] = (),
                reopen: Callable[[], IO[bytes]] | None = None) -> Reader:
    """The readers behind open_input, for a stream opened elsewhere (an engine's worker reading
    from an object store): CSV, JSON Lines and lines from a binary stream, Parquet from a path or
    a seekable file, by the reader its record names (formats.py); a format that is never read is an
    OptionError. `name` is what messages call it; every reader option is honoured. An
    `encoding` that is not ASCII-compatible (UTF-16, UTF-32) is read as UTF-8 (detect.utf8_stream).

    CSV only: `delimiter` (default: a tab for a .tsv name, else ","; `\\t` and `tab` name a tab);
    `detect_types`: detect.typed, except `text_column` and `text_columns`; `empty_null`: an empty
    cell is null (else ""). JSON Lines: jsonl.read_jsonl's `keep_json`, `reserved` and `reopen`."""
    from emolabel import detect

    if on_error not in ("fail", "skip"):
        raise InputError(f"Unknown `on_error` {on_error!r}: use fail or skip.")
    delimiter = detect.delimiter(delimiter)
    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise InputError(f"`delimiter` must be one character (not a quote or a line break), not {delimiter!r}.")
    fmt = formats.for_reading(fmt)  # never sent to another format's reader
    if not fmt.seekable and not detect.ascii_compatible(encoding):
        source = detect.utf8_stream(source, encoding, name)
        if reopen is not None:
            reopen = (lambda again, enc: lambda: detect.utf8_stream(again(), enc, name))(reopen, encoding)
        encoding = "utf-8"
    return fmt.read(name, source, chunk_rows=chunk_rows, encoding=encoding, on_error=on_error, delimiter=delimiter,
                    detect_types=detect_types, empty_null=empty_null, text_column=text_column,
                    text_columns=text_columns, keep_json=keep_json, reserved=reserved, reopen=reopen)


def open_inputs(paths: list[str], fmt: Format | None = None, *, source_column: str | None = None,
                **read: Any) -> Reader:
    """Several files as one stream, in the order given: the first file's columns, then (with
    `source_column`) the path each row came from. Every file must have the same columns and types
    (an error names the file that differs); each is opened only when the one before is done."""
    if len(paths) == 1 and source_column is None:
        return open_input(paths[0], fmt, **read)
    first = open_input(paths[0], fmt, **read)
    schema = first.schema
    if source_column is not None:
        if source_column in schema.names:
            first.close()
            raise InputError(f"{first.name} already has a column {source_column!r}, which would name each "
                             "row's file; use `prefix` to name the new columns differently.")
        schema = schema.append(pa.field(source_column, pa.string()))
    sizes = [os.path.getsize(p) if is_regular_file(p) else None for p in paths]
    total_bytes = sum(sizes) if first.total_bytes is not None and None not in sizes else None  # type: ignore[arg-type]
    state: dict[str, Any] = {"done_bytes": 0, "reader": first}
    skipped: list[Any] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for i, path in enumerate(paths):
            reader = first if i == 0 else open_input(path, fmt or first.format, **read)
            state["reader"] = reader
            try:
                check_same_columns(reader.name, reader.schema, first.name, first.schema)
                for batch in reader:
                    if source_column is not None:
                        col = pa.repeat(pa.scalar(text_name(path), pa.string()), batch.num_rows)
                        batch = pa.RecordBatch.from_arrays([*batch.columns, col], schema=schema)
                    yield batch
            finally:
                skipped.extend(f"{reader.name}:{n}" for n in reader.skipped)
                reader.close()
            state["done_bytes"] += sizes[i] or 0

    def bytes_read() -> int:
        reader = state["reader"]
        return state["done_bytes"] + (reader.bytes_read() if reader.bytes_read else 0)

    out = Reader(", ".join(display_name(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else ""), first.format,
                 schema, None, batches(), skipped, total_bytes=total_bytes,
                 bytes_read=bytes_read if total_bytes is not None else None, keys=first.keys, types=first.types)
    out._closers.append(lambda: state["reader"].close())
    return out


def check_same_columns(name: str, schema: pa.Schema, first_name: str, first: pa.Schema) -> None:
    """Files labelled together have the same columns and types (nothing is silently retyped)."""
    if schema != first:
        raise InputError(f"{name} has columns {_columns(schema)}, but {first_name} (the first input) has "
                         f"{_columns(first)}; files labelled together need the same columns.")


def schema_of(path: str, fmt: Format, chunk_rows: int, **read: Any) -> pa.Schema | None:
    """The schema the readers give a file (local or an object-store URI; None for a folder)."""
    import pyarrow.fs as pafs

    try:
        fs, where = pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)
        if fs.get_file_info(where).type != pafs.FileType.File:
            return None
        source = fs.open_input_file(where) if fmt is formats.PARQUET else io.BufferedReader(fs.open_input_stream(where))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InputError(f"Cannot read {path}: {e}") from None
    with source:
        reader = open_stream(path, source, fmt, chunk_rows=chunk_rows, **read)
        try:
            return reader.schema
        finally:
            reader.close()


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def read_parquet(name: str, source: Any, *, chunk_rows: int, **_: Any) -> Reader:
    """formats.PARQUET's reader: a path or a seekable file, read a row group at a time."""
    closers: list[Any] = []
    if isinstance(source, str) and text_name(source) != source and not is_uri(source):
        source = open(source, "rb")  # noqa: SIM115 - pyarrow cannot encode a file name that is not UTF-8
        closers.append(source.close)
    try:
        # pre_buffer (pyarrow's default) keeps every row group read: memory would grow with the file
        pf = pq.ParquetFile(source, pre_buffer=False)
    except (pa.ArrowException, OSError) as e:
        for close in closers:
            close()
        raise InputError(f"{name} is not a readable Parquet file ({_short(e)}).") from None
    closers.insert(0, pf.close)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from rechunk(pf.iter_batches(batch_size=chunk_rows), chunk_rows)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{name}: Parquet data is corrupt or truncated ({_short(e)}).") from None

    return Reader(name, formats.PARQUET, pf.schema_arrow, pf.metadata.num_rows, batches(), _closers=closers)


def read_lines(name: str, stream: IO[bytes], *, chunk_rows: int, encoding: str, **_: Any) -> Reader:
    """formats.LINES's reader: one text per line, as a `text` column: every line is a row (an empty
    one has no text), the line break (\\n or \\r\\n) is not part of the text."""
    schema = pa.schema([pa.field("text", pa.string())])

    def batches() -> Iterator[pa.RecordBatch]:
        texts: list[str] = []
        for lineno, raw in _bounded_lines(stream, name):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            texts.append(_decode_or_fail(raw, encoding, name, f"line {lineno}").removesuffix("\n").removesuffix("\r"))
            if len(texts) >= chunk_rows:
                yield pa.RecordBatch.from_arrays([pa.array(texts, pa.string())], schema=schema)
                texts = []
        if texts:
            yield pa.RecordBatch.from_arrays([pa.array(texts, pa.string())], schema=schema)

    return Reader(name, formats.LINES, schema, None, batches())


def _decode_or_fail(data: bytes, encoding: str, name: str, where: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{name}, {where}: byte {data[e.start:e.start + 1]!r} is not valid {encoding}. "
            "If the file is Latin-1 or Windows-1252, pass `encoding` latin-1 (or cp1252)."
        ) from None
    except LookupError:
        raise InputError(f"Unknown `encoding` {encoding!r}.") from None


def _bounded_lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) with a bound: a line longer than CSV_BLOCK is an error naming it, not
    unbounded memory (/dev/zero, a binary file)."""
    lineno = 0
    while line := stream.readline(CSV_BLOCK + 1):
        lineno += 1
        if len(line) > CSV_BLOCK:
            raise InputError(f"{name}, line {lineno} is longer than {CSV_BLOCK >> 20} MB; split such texts first "
                             "(or is this a binary file?).")
        yield lineno, line


def _lines(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Regroup record batches into batches of `rows` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    n = 0
    for b in batches:
        pending.append(b)
        n += b.num_rows
        while n >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]  # copies only this chunk
            rest = table.slice(rows)
            pending = rest.to_batches()  # zero-copy views: the rest is not re-copied for every chunk
            n = rest.num_rows
    if n:
        t = pa.Table.from_batches(pending).combine_chunks()
        yield from t.to_batches()


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
