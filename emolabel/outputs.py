"""Outputs: checks before any work, one writer per format, and atomic files and folders.

Writers write to a temporary file (or folder) beside the target and rename it into place only on
success: a failed or interrupted run never leaves a partial output at the target path; what a
killed run leaves (its process id in the name) is removed by the next run to the same output.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from emolabel import csv_text, formats, sinks
from emolabel.config import PARQUET_COMPRESSION
from emolabel.errors import OutputError, OutputIsInputError
from emolabel.files import STDIO, display_name, is_uri
from emolabel.formats import Format
from emolabel.inputs import _short
from emolabel.safe_write import check_file_target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def resolve_output(target: str) -> str:
    """'-' for stdout under another name; a symbolic link's file (the link is kept, its file is
    written); any other path as given."""
    if target in STDOUT_NAMES:
        return STDIO
    if target != STDIO and os.path.islink(target):
        return os.path.realpath(target)
    return target


def is_stream(target: str) -> bool:
    """An output that is written as a stream, never replaced: stdout, a FIFO, a character device."""
    import stat

    if target == STDIO:
        return True
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def check_output(target: str, source: str, overwrite: bool) -> None:
    """Refuse up front what would fail or destroy data later; names the path and the fix."""
    if is_stream(target):
        return
    p = Path(target)
    if not p.parent.exists():
        raise OutputError(f"Cannot write {target}: folder {p.parent} does not exist. Create it first.")
    if p.is_dir():
        raise OutputError(f"Cannot write {target}: it is a folder. Give a file name.")
    check_file_target(target, [] if source == STDIO else [source], overwrite)  # the rules every write follows
    if not os.access(p.parent, os.W_OK):
        raise OutputError(f"Cannot write {target}: folder {p.parent} is not writable.")


def output_format(target: str, option: str | None) -> Format | None:
    """The format `target` is written in: `option` (an output_format), else its name's suffix
    (`x.csv.gz`: CSV, gzipped); None for stdout without `option` (the caller uses the input's).
    A suffix that names another format than `option` is refused (Parquet under a .csv name), as
    is a compressed name for a format that takes no such compression (Parquet, compressed
    inside); a name with no known suffix takes `option`."""
    from emolabel.errors import OptionError

    fmt = formats.for_writing(option) if option else None
    named = None if target == STDIO else formats.from_suffix(sinks.strip_compression(target))
    if fmt is None and named is not None and not named.writable:
        formats.for_writing(named.name)  # refused: "Text lines (.txt) is an input format only; write ..."
    if fmt is not None and named is not None and named is not fmt:
        suffix = Path(sinks.strip_compression(target)).suffix
        raise OptionError(f"{display_name(target)} is named {suffix} ({named.name}) but `output_format` is "
                          f"{fmt.name}: name the file for {fmt.name} (or with no suffix), or leave `output_format` out.")
    fmt = fmt or named
    if fmt is None and target != STDIO:
        raise OptionError(f"Cannot tell the output format from {target!r}; use a "
                          f"{formats.suffixes(formats.writable())} name ({' or '.join(sinks.COMPRESSIONS)} after it to compress), "
                          "or `output_format`.")
    codec = None if target == STDIO else sinks.compression_of(target)
    if fmt is not None and codec is not None and codec not in fmt.compressions:
        plain = display_name(sinks.strip_compression(target))
        if fmt.codec_option:
            raise OptionError(f"{display_name(target)}: {fmt.title} is compressed inside the file, not as a whole "
                              f"({codec}); write {plain} and choose the codec with `{fmt.codec_option}`.")
        raise OptionError(f"{display_name(target)}: {fmt.title} is not compressed as a whole ({codec}); write {plain}.")
    return fmt


@dataclass(frozen=True)
class WriteOptions:
    """What a writer decides that the format leaves open (the local Writer and Ray's parts alike)."""

    parquet_compression: str = PARQUET_COMPRESSION  # the codec inside a Parquet file ("none": none)
    quote_empty: bool = True  # CSV: "" written as "" so that it is not a null (an empty field)

    @classmethod
    def for_run(cls, input_format: Format, parquet_compression: str | None) -> WriteOptions:
        """A run's: CSV read in gives each empty cell one meaning ("", or null with empty_null), so
        an empty cell is written back as an empty cell (CSV in, the same CSV out); other inputs
        can hold both "" and null, which CSV keeps apart by quoting ""."""
        return cls(parquet_compression=parquet_compression or PARQUET_COMPRESSION,
                   quote_empty=input_format is not formats.CSV)


def _nested(typ: pa.DataType) -> bool:
    t = pa.types
    return t.is_list(typ) or t.is_large_list(typ) or t.is_fixed_size_list(typ) or t.is_struct(typ) or (
        t.is_map(typ) or t.is_union(typ) or getattr(t, "is_list_view", lambda _: False)(typ))


def _binary(typ: pa.DataType) -> bool:
    t = pa.types
    return t.is_binary(typ) or t.is_large_binary(typ) or t.is_fixed_size_binary(typ) or t.is_binary_view(typ)


# The column kinds a format's record may say it cannot hold (formats.Format.cannot_hold)
KINDS = {"nested": _nested, "binary": _binary, "binary_view": pa.types.is_binary_view,
         "string_view": pa.types.is_string_view}
REPEATED_NAMES = "repeated_names"  # a kind of schema, not of column: two columns of one name


def check_writable(schema: pa.Schema, fmt: Format, target: str) -> None:
    """Refuse, before any labelling, columns the output format cannot hold (each writer would fail
    at the first row otherwise, after the input was read); the formats that can hold them are named."""
    if REPEATED_NAMES in fmt.cannot_hold:
        dup = sorted({n for n in schema.names if schema.names.count(n) > 1})
        if dup:
            raise OutputError(f"Cannot write {display_name(target)}: column(s) {', '.join(map(repr, dup))} appear "
                              f"more than once, and a JSON object has one value a key. Write "
                              f"{_holding(fmt, [REPEATED_NAMES])}.")
    kinds = [k for k in fmt.cannot_hold if k in KINDS]
    bad = [f for f in schema if any(KINDS[k](f.type) for k in kinds)]
    if bad:
        found = [k for k in kinds if any(KINDS[k](f.type) for f in bad)]
        raise OutputError(f"Cannot write {display_name(target)}: column(s) "
                          f"{', '.join(f'{f.name!r} ({f.type})' for f in bad)}: {fmt.holds}: write "
                          f"{_holding(fmt, found)}.")


def _holding(fmt: Format, kinds: list[str]) -> str:
    """The other writable formats that hold every one of `kinds`, for a message: "Parquet or CSV"."""
    names = tuple(n for n in formats.writable() if n != fmt.name
                  and not set(kinds) & set(formats.REGISTRY[n].cannot_hold))
    return formats.titles(names)


class CsvTableWriter:
    """formats.CSV's writer: the header now, then each batch as CSV text (csv_text.py)."""

    def __init__(self, file: Any, schema: pa.Schema, delimiter: str, options: WriteOptions):
        self.file, self.delimiter, self.options = file, delimiter, options
        file.write(csv_text.header(schema.names, delimiter, options.quote_empty))

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.file.write(csv_text.encode(batch, self.delimiter, self.options.quote_empty))

    def close(self) -> None:
        pass


class ParquetTableWriter:
    """formats.PARQUET's writer: a row group per write (a stream's reader gets each chunk as it
    is labelled), the footer at close."""

    def __init__(self, file: Any, schema: pa.Schema, delimiter: str, options: WriteOptions):
        self._writer = pq.ParquetWriter(file, schema, compression=options.parquet_compression)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.Table):
            self._writer.write_table(batch)
        else:
            self._writer.write(batch)

    def close(self) -> None:
        self._writer.close()


class JsonLinesTableWriter:
    """formats.JSONL's writer: how JSON Lines objects are written is jsonl.JsonLinesWriter's."""

    def __init__(self, file: Any, schema: pa.Schema, delimiter: str, options: WriteOptions):
        from emolabel.jsonl import JsonLinesWriter

        self.file, self._json = file, JsonLinesWriter()

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.file.write(self._json.dumps(batch))

    def close(self) -> None:
        pass


class TableWriter:
    """One format's incremental writer on an open binary file: write(batch)... then close().
    The one place a format is written (the local Writer and Ray's part files both use it): the
    writer its record names (formats.py)."""

    def __init__(self, file: Any, fmt: Format, schema: pa.Schema, delimiter: str = ",",
                 options: WriteOptions | None = None):
        if not fmt.writable:
            raise OutputError(f"{fmt.name} is an input format only; write {', '.join(formats.writable())}.")
        self.file, self.format, self.delimiter = file, fmt, delimiter
        self.options = options or WriteOptions()
        self._writer = fmt.writer_class()(file, schema, delimiter, self.options)  # CSV writes its header now

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self._writer.write(batch)

    def close(self) -> None:
        """Finish the format (Parquet's footer); the file itself stays open."""
        self._writer.close()


def _remove_stale_temps(target: Path) -> None:
    """Temporary files of runs to `target` that were killed (kill -9, power loss) before cleaning
    up: their process on this host (HOST-PID in the name) is gone, so nobody will finish them."""
    for stray in target.parent.glob(f".{target.name}.*.emolabel-tmp"):
        if _owner_gone(stray.name[len(target.name) + 2 :]):
            stray.unlink(missing_ok=True)


def _owner_gone(owner: str) -> bool:
    """`owner` starts HOST-PID (then '.' or '-'): a temporary file's or folder's name past its
    target's. True if that process ran on this host and is gone (another host's: never)."""
    m = re.match(r"([^-]+)-(\d+)[.-]", owner)
    return m is not None and m.group(1) == _host() and not process_alive(int(m.group(2)))


def process_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (the owner of a temporary file or folder)."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe there: never take a file for a dead run's
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process (PermissionError), or no way to tell
        return True
    return True


def appeared(target: str) -> OutputError:
    """The target did not exist when the run started and exists now: another run wrote it."""
    return OutputError(f"{target} was created by someone else while this run was labelling (another emolabel "
                       "run?); it was not replaced. Pass `overwrite` to replace it, or write to another file.")


class Writer:
    """Writes batches incrementally to a temporary file and renames it into place on commit();
    a stream (stdout, a FIFO) is written as the batches come, every byte or an error. A name
    ending .gz or .zst is compressed on the way (sinks.COMPRESSIONS)."""

    def __init__(self, target: str, fmt: Format, schema: pa.Schema, overwrite: bool = True,
                 options: WriteOptions | None = None):
        self.target = target
        self.format = fmt
        self.schema = schema
        self.overwrite = overwrite  # False: a file that appears at the target meanwhile is not replaced
        self.tmp: Path | None = None
        self._out: sinks.Stream | None = None  # a stream target: where the rows go (stdout, a FIFO)
        self._raw: IO[bytes] | None = None  # a file target: the temporary file under any compressor
        if is_stream(target):
            self._out = self._file = _open_stream(target)
        else:
            self._raw = self._file = self._open_temp(target)
            codec = sinks.compression_of(target)
            if codec is not None:
                self._file = sinks.compressed(self._raw, codec)
        self._writer: Any = None
        try:  # CSV writes its header now
            self._writer = TableWriter(self._file, fmt, schema, formats.default_delimiter(sinks.strip_compression(target)),
                                       options)
        except OSError as e:
            raise self._os_error(e) from None

    def _open_temp(self, target: str) -> IO[bytes]:
        from emolabel.safe_write import temp_file_for  # the one way a temporary file is named and made

        self.tmp = temp_file_for(target)
        return open(self.tmp, "wb")  # noqa: SIM115 - closed by _finish_file / abort

    @property
    def stream(self) -> bool:
        """Written as it goes to a reader (stdout, a FIFO), not renamed into place."""
        return self._out is not None

    def reader_gone(self) -> bool:
        """A stream's reader closed it (`| head` had enough): nobody wants more rows."""
        return self._out is not None and self._out.reader_gone()

    def write(self, batch: pa.RecordBatch, stats: dict | None = None) -> None:
        """Append a batch (`stats` is for CheckpointWriter's interface and unused here)."""
        try:
            self._writer.write(batch)
        except OSError as e:
            raise self._os_error(e) from None
        except pa.ArrowException as e:
            if "Broken pipe" in str(e):
                raise BrokenPipeError(str(e)) from None
            raise OutputError(f"Cannot write {self.target}: {_short(e)}") from None

    def commit(self) -> None:
        """Finish the file and move it to the target path."""
        try:
            self._writer.close()
            if self._raw is not None:
                self._finish_file()
            else:  # a stream
                assert self._out is not None
                self._out.close()
        except OSError as e:
            self.abort()
            if isinstance(e, BrokenPipeError):
                raise
            raise self._os_error(e) from None
        except pa.ArrowException as e:
            self.abort()
            if "Broken pipe" in str(e):
                raise BrokenPipeError(str(e)) from None
            raise OutputError(f"Cannot write {self.target}: {_short(e)}") from None
        except OutputError:
            self.abort()
            raise

    def _finish_file(self) -> None:
        """End the compressed stream, if any, then fsync and rename the temporary file into place."""
        assert self._raw is not None and self.tmp is not None
        if self._file is not self._raw:
            self._file.close()  # the compressor's trailer; the file stays open
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a new file gets the usual mode
        if not self.overwrite and os.path.lexists(self.target):
            raise appeared(self.target)
        os.replace(self.tmp, self.target)
        self.tmp = None

    def abort(self, keep: bool = False) -> None:
        """Drop everything written so far; the target path is left as it was (`keep`: unused).
        A stream gets nothing more (no Parquet footer that would make its rows look whole)."""
        if self._out is not None:
            self._out.drop_the_rest()
        for close in (getattr(self._writer, "close", None), self._file.close,
                      self._raw.close if self._raw is not None else None,
                      self._out.close if self._out is not None else None):
            try:
                if close is not None:
                    close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    def _os_error(self, e: OSError) -> Exception:
        if isinstance(e, BrokenPipeError):
            return e
        self.abort()
        import errno

        where = "stdout" if self.target == STDIO else self.target
        if e.errno == errno.ENOSPC:
            return OutputError(f"Disk full while writing {where}; nothing was written there.")
        return OutputError(f"Cannot write {where}: {e.strerror or e}. Nothing was written there.")


def _open_stream(target: str) -> sinks.Stream:
    """stdout or a FIFO/device path as a Stream (stdout is never closed: the CLI exits after)."""
    if target == STDIO:
        if sys.stdout is None:
            raise OutputError("stdout is closed, so the rows have nowhere to go; give `output` FILE.")
        sys.stdout.flush()  # anything printed before stays before the rows
        return sinks.Stream(sys.stdout.buffer)
    try:
        return sinks.Stream(os.open(target, os.O_WRONLY), owned=True)
    except OSError as e:
        raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from None


# ---------------------------------------------------------------------------------------------
# Folder outputs (an engine's part files)


def check_output_folder(output_dir: str, overwrite: bool, inputs: list[str]) -> None:
    """check_output for an output folder of part files (an engine's): replaced whole, so it must hold
    no input. Object-store URIs are checked further by prepare_uri_folder."""
    out = output_dir.rstrip("/") if is_uri(output_dir) else str(Path(output_dir).resolve())
    for path in inputs:
        if is_uri(path) != is_uri(output_dir):
            continue
        src = path.rstrip("/") if is_uri(path) else str(Path(path).resolve())
        if src == out or src.startswith(out + "/"):
            raise OutputIsInputError(f"{output_dir} holds the input {path}; replacing it would delete the input. "
                              "Write to another folder.")
    if is_uri(output_dir):
        return  # the rest is checked with the object store's filesystem in _prepare_uri_output
    p = Path(output_dir)
    if not p.parent.exists():
        raise OutputError(f"Cannot write {output_dir}: folder {p.parent} does not exist. Create it first.")
    if p.exists() and not overwrite:
        raise OutputError(f"{output_dir} already exists. Pass `overwrite` to replace it.")
    if not os.access(p.parent, os.W_OK):
        raise OutputError(f"Cannot write {output_dir}: folder {p.parent} is not writable.")


def prepare_uri_folder(output_dir: str, overwrite: bool, marker: str) -> tuple[Any, str]:
    """An object-store output folder made ready: (filesystem, path); an old one (with `overwrite`)
    loses its `marker` first, then its parts, as object stores cannot rename a folder."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(output_dir)
        info = fs.get_file_info(path)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise OutputError(f"Cannot write {output_dir}: {e}") from None
    if info.type != pafs.FileType.NotFound:
        is_dir = info.type == pafs.FileType.Directory
        listing = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)) if is_dir else [info]
        if listing and not overwrite:
            raise OutputError(f"{output_dir} already exists. Pass `overwrite` to replace it.")
        if listing:  # no rename on object stores: drop the marker first, then the old parts
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(f"{path.rstrip('/')}/{marker}")
            if is_dir:
                fs.delete_dir_contents(path, missing_dir_ok=True)
            else:
                fs.delete_file(path)
    return fs, path


TEMP_FOLDER_MARK = "emolabel-tmp-"  # OUTPUT.emolabel-tmp-HOST-PID-RANDOM: see temp_folder


def temp_folder(output: str) -> str:
    """The sibling a local output is written to: OUTPUT.emolabel-tmp-HOST-PID-RANDOM (the owner, so
    that a later run can tell a folder left by a killed run from one still being written)."""
    parent, base = os.path.split(os.path.abspath(output))
    return os.path.join(parent, f"{base}.{TEMP_FOLDER_MARK}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temp_folders(output: str) -> list[str]:
    """Delete the temporary siblings of `output` left by runs on this host that are dead (kill -9,
    a power cut); a live run's folder, another host's and an unreadable name are left alone."""
    parent, base = os.path.split(os.path.abspath(output))
    removed = []
    head = f"{base}.{TEMP_FOLDER_MARK}"
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if not name.startswith(head) or not _owner_gone(name[len(head) :]):
                continue
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())  # the output may be on a shared disk


def move_folder_into_place(tmp: str, output_dir: str) -> None:
    """Rename the finished temporary folder to `output_dir`, replacing an old one only now."""
    old = None
    if os.path.lexists(output_dir):
        old = f"{output_dir.rstrip('/')}.emolabel-old-{uuid.uuid4().hex[:12]}"
        os.rename(output_dir, old)
    try:
        os.rename(tmp, output_dir)
    except OSError as e:
        if old is not None:
            os.rename(old, output_dir)
        raise OutputError(f"Cannot move the finished output to {output_dir}: {e.strerror or e}.") from None
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
