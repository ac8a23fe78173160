"""Table formats and streaming readers: detection, globs, one stream from one or several files.

Readers yield pyarrow RecordBatches of about `chunk_rows` rows, so memory stays flat whatever
the input size; every problem is an InputError naming the file and line. Writing is in outputs.py.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from emolabel.errors import InputError

STDIO = "-"
CSV_BLOCK = 16 << 20  # the longest CSV row (and JSON line, and text line) that can be read
HEADER_LIMIT = 1 << 20  # a CSV header longer than this is not a header (/dev/zero, a binary file)


class Format(str, Enum):
    CSV = "csv"  # and TSV: CSV with another delimiter
    PARQUET = "parquet"
    JSONL = "jsonl"
    LINES = "lines"  # input only: one text per line, read as a `text` column


SUFFIXES = {
    ".csv": Format.CSV,
    ".parquet": Format.PARQUET,
    ".pq": Format.PARQUET,
    ".jsonl": Format.JSONL,
    ".ndjson": Format.JSONL,
    ".json": Format.JSONL,
    ".tsv": Format.CSV,
    ".txt": Format.LINES,
}
FORMAT_NAMES = [f.value for f in Format]  # config.INPUT_FORMATS names them for the CLI (a test keeps them in step)
WRITABLE = [f for f in Format if f is not Format.LINES]  # config.FORMATS


def default_delimiter(path: str) -> str:
    """A tab for a .tsv name (.tsv.gz too), else a comma."""
    suffixes = [x.lower() for x in Path(path).suffixes if x.lower() != ".gz"]
    return "\t" if suffixes[-1:] == [".tsv"] else ","


def format_from_suffix(path: str) -> Format | None:
    """The format a file name implies (`x.csv`, `x.csv.gz`, ...), or None."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


def sniff_format(head: bytes, encoding: str = "utf-8") -> Format:
    """Tell a stream's format from its first bytes: Parquet's magic, a '{' for JSON Lines, else CSV."""
    from emolabel.detect import ascii_compatible

    if head.startswith(b"PAR1"):
        return Format.PARQUET
    if not ascii_compatible(encoding):  # UTF-16 or UTF-32: look at the characters
        return Format.JSONL if head.decode(encoding, "ignore").lstrip("\ufeff \t\r\n")[:1] == "{" else Format.CSV
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    if head.lstrip()[:1] == b"{":
        return Format.JSONL
    return Format.CSV


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIO else text_name(path)


def text_name(path: str) -> str:
    """A file name as text: a name that is not UTF-8 (Python holds its bytes as surrogates, which
    a text column cannot) keeps them as backslash escapes, caf\\xe9.csv."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------
# Reading


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
    name = display_name(path)
    if path == STDIO:
        raw: IO[bytes] = sys.stdin.buffer
    else:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{path} is a folder; give a file (CSV, Parquet or JSON Lines).")
        try:
            raw = disk = open(p, "rb")  # noqa: SIM115 - closed by the Reader
        except FileNotFoundError:
            raise InputError(f"Input file {path} does not exist.") from None
        except PermissionError:
            raise InputError(f"Input file {path} cannot be read: permission denied.") from None
        except OSError as e:  # a symlink loop, a name too long, ...
            raise InputError(f"Input file {path} cannot be opened: {e.strerror or e}.") from None
    if path != STDIO and path.lower().endswith(".gz"):
        raw = _Gunzip(name, raw)  # type: ignore[assignment]
    stream = io.BufferedReader(raw, buffer_size=1 << 20) if not hasattr(raw, "peek") else raw
    if path == STDIO and stream.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[union-attr]
        # gzip on stdin (`zcat` forgotten): its magic bytes tell, so read through it
        stream = io.BufferedReader(_Gunzip(name, stream), buffer_size=1 << 20)  # type: ignore[arg-type]
    if fmt is None:
        fmt = format_from_suffix(path) if path != STDIO else None
        if fmt is None:
            head = stream.peek(4096)[:4096]  # type: ignore[union-attr]
            if path != STDIO:
                raise InputError(
                    f"Cannot tell the format of {path} from its name; "
                    f"use `input_format` ({', '.join(FORMAT_NAMES)})."
                )
            fmt = sniff_format(head, encoding)
    closers: list[Any] = []
    try:
        source: Any = stream
        if fmt is Format.PARQUET:
            source = path
            if path == STDIO:
                # Parquet keeps its index at the end of the file: spool stdin to disk (not memory).
                try:
                    spool = tempfile.NamedTemporaryFile(prefix="emolabel-stdin-", suffix=".parquet")  # noqa: SIM115
                except OSError as e:
                    raise InputError(f"Parquet on stdin is buffered in {tempfile.gettempdir()}, which cannot be "
                                     f"written ({e.strerror or e}): set TMPDIR to a folder with room, or give "
                                     "the file's path.") from None
                closers.append(spool.close)
                try:
                    shutil.copyfileobj(stream, spool, 1 << 20)
                    spool.flush()
                except OSError as e:
                    raise InputError(f"Parquet on stdin is buffered in {tempfile.gettempdir()}, which ran out of "
                                     f"room ({e.strerror or e}): set TMPDIR to a folder with room, or give the "
                                     "file's path.") from None
                source = spool.name
        if fmt is Format.JSONL and path != STDIO and is_regular_file(path):
            csv_options["reopen"] = lambda: _reopen(path, name)  # typed over all its lines, then read
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
    if path != STDIO and fmt is not Format.PARQUET:  # progress by bytes: where the reader is in the file
        reader.total_bytes = os.fstat(disk.fileno()).st_size if is_regular_file(path) else None
        reader.bytes_read = _position(disk) if reader.total_bytes is not None else None  # of a .gz: its compressed bytes
    return reader


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
    a seekable file. `name` is what messages call it; every reader option is honoured. An
    `encoding` that is not ASCII-compatible (UTF-16, UTF-32) is read as UTF-8 (detect.utf8_stream).

    CSV only: `delimiter` (default: a tab for a .tsv name, else ","; `\\t` and `tab` name a tab);
    `detect_types`: detect.typed, except `text_column` and `text_columns`; `empty_null`: an empty
    cell is null (else ""). JSON Lines: jsonl.open_jsonl's `keep_json`, `reserved` and `reopen`."""
    from emolabel import detect

    if on_error not in ("fail", "skip"):
        raise InputError(f"Unknown `on_error` {on_error!r}: use fail or skip.")
    delimiter = detect.delimiter(delimiter)
    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise InputError(f"`delimiter` must be one character (not a quote or a line break), not {delimiter!r}.")
    if fmt is Format.PARQUET:
        return _open_parquet(name, source, chunk_rows)
    if not detect.ascii_compatible(encoding):
        source = detect.utf8_stream(source, encoding, name)
        if reopen is not None:
            reopen = (lambda again, enc: lambda: detect.utf8_stream(again(), enc, name))(reopen, encoding)
        encoding = "utf-8"
    if fmt is Format.CSV:
        keep = {*(text_columns or ()), *([text_column] if text_column else [])}
        return _open_csv(name, source, chunk_rows, encoding, on_error, delimiter or default_delimiter(name),
                         detect_types, empty_null, keep, tuple(text_columns or ()))
    if fmt is Format.LINES:
        return _open_lines(name, source, chunk_rows, encoding)
    from emolabel.jsonl import open_jsonl

    return open_jsonl(name, source, chunk_rows, encoding, on_error, keep_json=keep_json, text_column=text_column,
                      reserved=reserved, reopen=reopen)


# ---------------------------------------------------------------------------------------------
# Several inputs: globs, one format, one stream


GLOB_CHARS = "*?["


def is_uri(path: str) -> bool:
    return "://" in path


def expand_inputs(inputs: list[str] | str, folders: bool = False, absolute: bool = False) -> list[str]:
    """Expand globs (local or `scheme://` URIs) in file order; plain paths and URIs pass through.

    Names starting with _ or . (markers, hidden files) are left out of glob matches. `folders`: a
    folder may be given (an engine that reads folders whole); otherwise it is an error naming it.
    `absolute`: local paths made absolute (an engine's workers may have another working directory).
    """
    import glob as globlib

    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        raise InputError("No input given: pass one or more files or globs.")
    out: list[str] = []
    globbed: dict[str, bool] = {}  # glob matches may overlap each other and named files: kept once
    for p in inputs:
        if p == STDIO:
            if len(inputs) > 1:
                raise InputError("stdin (-) cannot be one of several inputs; give files only.")
            return [p]
        if not any(c in p for c in GLOB_CHARS):
            if not is_uri(p) and not os.path.exists(p):
                if os.path.islink(p):
                    raise InputError(f"Input file {p} is a symbolic link to nothing (or a loop of links).")
                raise InputError(f"Input file {p} does not exist.")
            if not is_uri(p) and not folders and os.path.isdir(p):
                raise InputError(f"{p} is a folder; give files, or a glob such as '{p.rstrip('/')}/*.csv'.")
            out.append(os.path.abspath(p) if absolute and not is_uri(p) else p)
            continue
        found = [os.path.abspath(m) if absolute else m for m in globlib.glob(p, recursive=True)]
        matches = _glob_uri(p) if is_uri(p) else sorted(found)
        matches = [m for m in matches if not os.path.basename(m.rstrip("/")).startswith(("_", "."))]
        if not folders:
            matches = [m for m in matches if not os.path.isdir(m)]
        if not matches:
            raise InputError(f"No files match {p}.")
        out.extend(matches)
        globbed.update(dict.fromkeys(matches, True))
    seen: dict[str, str] = {}
    for p in out:  # a file given twice would be labelled twice, or (deduplicated) lose its second rows
        key = p if is_uri(p) else os.path.realpath(p)
        if key in seen and not globbed.get(p) and not globbed.get(seen[key]):
            raise InputError(f"{p} is given twice (also as {seen[key]}); give each input once.")
        seen.setdefault(key, p)
    return list(dict.fromkeys(seen.values()))


def _glob_uri(pattern: str) -> list[str]:
    """Expand a glob in an object-store URI by listing below its first glob-free folder.

    `*`, `?` and `[...]` match within one path segment, as a local glob; `**` is not supported.
    """
    from pathlib import PurePosixPath

    import pyarrow.fs as pafs

    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    base = "/".join(parts[:fixed])
    try:
        fs, base_path = pafs.FileSystem.from_uri(f"{scheme}://{base}")
    except (pa.ArrowException, ValueError, OSError) as e:
        raise InputError(f"Cannot list {scheme}://{base}: {e}") from None
    # `rest` and the listed paths are both relative to the filesystem root once the scheme is off
    # (s3://bucket/key lists as bucket/key); keep the pattern in that form.
    pat = (base_path.rstrip("/") + "/" + "/".join(parts[fixed:])) if base_path else "/".join(parts[fixed:])
    infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True, allow_not_found=True))
    want = PurePosixPath(pat)

    def matches(path: str) -> bool:
        p = PurePosixPath(path)
        return len(p.parts) == len(want.parts) and p.match(pat)

    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and matches(i.path))


def format_of(paths: list[str], input_format: str | None = None) -> Format | None:
    """The one format of `paths`: `input_format` if given, else from their names (None for stdin)."""
    if input_format is not None:
        if input_format not in FORMAT_NAMES:
            raise InputError(f"Unknown input format {input_format!r}: use {', '.join(FORMAT_NAMES)}.")
        return Format(input_format)
    if paths == [STDIO]:
        return None
    formats: dict[Format, str] = {}
    for p in paths:
        fmt = format_from_suffix(p.rstrip("/"))
        if fmt is None:
            raise InputError(f"Cannot tell the format of {p} from its name; use `input_format` "
                             f"({', '.join(FORMAT_NAMES)}).")
        formats.setdefault(fmt, p)
    if len(formats) > 1:
        raise InputError(f"Inputs mix formats ({', '.join(f'{f.value}: {p}' for f, p in formats.items())}); "
                         "label one format per run.")
    return next(iter(formats))


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
        source = fs.open_input_file(where) if fmt is Format.PARQUET else io.BufferedReader(fs.open_input_stream(where))
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


def _open_parquet(name: str, source: Any, chunk_rows: int) -> Reader:
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

    return Reader(name, Format.PARQUET, pf.schema_arrow, pf.metadata.num_rows, batches(), _closers=closers)


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


def _open_csv(name: str, stream: IO[bytes], chunk_rows: int, encoding: str, on_error: str, delimiter: str = ",",
              detect_types: bool = False, empty_null: bool = False, keep: set[str] | None = None,
              text_columns: tuple[str, ...] = ()) -> Reader:
    # Read the header ourselves: every column is then read as a string, so values round-trip
    # exactly and a column cannot fail half-way through a file on a type change.
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
    missing = [n for n in text_columns if n not in names]
    if missing:
        raise InputError(f"`text_columns` names {', '.join(map(repr, missing))}, which {name} does not have. "
                         f"Available columns: {', '.join(names)}.")

    invalid: list[Any] = []
    skipped: list[int] = []

    def on_invalid(row: Any) -> str:
        if on_error == "skip":
            skipped.append(row.number)
            return "skip"
        invalid.append(row)
        return "error"

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

    blocks = _RowBlocks(header, stream)
    try:
        reader = pa_csv.open_csv(
            blocks,
            read_options=read_opts,
            parse_options=parse_opts,
            convert_options=convert_opts,
        )
    except pa.ArrowException as e:
        raise explain(e) from None

    def batches() -> Iterator[pa.RecordBatch]:
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
                warned.extend(_rows_in_a_field(batch, delimiter, len(names), name, seen[0]))
            seen[0] += batch.num_rows
            yield batch

    warned: list[bool] = []
    seen = [0]
    schema, rows = reader.schema, batches()
    if detect_types:
        from emolabel.detect import typed

        try:
            schema, rows = typed(name, rows, schema, keep or set())
        except BaseException:
            reader.close()
            raise
    out = Reader(name, Format.CSV, schema, None, rechunk(rows, chunk_rows), skipped)
    out.types = {f.name: str(f.type) for f in schema} if detect_types else None
    out._closers.append(reader.close)
    return out


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


def _open_lines(name: str, stream: IO[bytes], chunk_rows: int, encoding: str) -> Reader:
    """One text per line, as a `text` column: every line is a row (an empty one has no text), the
    line break (\\n or \\r\\n) is not part of the text."""
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

    return Reader(name, Format.LINES, schema, None, batches())


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


# ---------------------------------------------------------------------------------------------
# Files


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a whole file, read in 1 MiB blocks (about 1 s per GB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_regular_file(path: str) -> bool:
    """A plain file (not a pipe, FIFO, /dev/stdin or socket): one that can be read twice."""
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
