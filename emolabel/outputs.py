"""Outputs: checks before any work, one writer per format, and atomic files and folders.

Writers write to a temporary file (or folder) beside the target and rename it into place only on
success: a failed or interrupted run never leaves a partial output at the target path; what a
killed run leaves (its process id in the name) is removed by the next run to the same output.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from emolabel.errors import OutputError, OutputIsInputError
from emolabel.safe_write import check_file_target
from emolabel.tables import STDIO, WRITABLE, Format, _short, default_delimiter, display_name, is_uri


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
    if target.lower().endswith(".gz"):
        raise OutputError(f"Cannot write {target}: compressed output is not supported (it would be plain text "
                          f"under a .gz name). Write {target[:-3]}, or write to stdout and pipe it through gzip.")
    if not p.parent.exists():
        raise OutputError(f"Cannot write {target}: folder {p.parent} does not exist. Create it first.")
    if p.is_dir():
        raise OutputError(f"Cannot write {target}: it is a folder. Give a file name.")
    check_file_target(target, [] if source == STDIO else [source], overwrite)  # the rules every write follows
    if not os.access(p.parent, os.W_OK):
        raise OutputError(f"Cannot write {target}: folder {p.parent} is not writable.")


def check_writable(schema: pa.Schema, fmt: Format, target: str) -> None:
    """Refuse, before any labelling, columns the output format cannot hold (each writer would fail
    at the first row otherwise, after the input was read)."""
    import pyarrow.types as t

    def nested(typ: pa.DataType) -> bool:
        return t.is_list(typ) or t.is_large_list(typ) or t.is_fixed_size_list(typ) or t.is_struct(typ) or (
            t.is_map(typ) or t.is_union(typ) or getattr(t, "is_list_view", lambda _: False)(typ))

    def binary(typ: pa.DataType) -> bool:
        return t.is_binary(typ) or t.is_large_binary(typ) or t.is_fixed_size_binary(typ) or t.is_binary_view(typ)

    if fmt is Format.CSV:
        bad = [f for f in schema if nested(f.type) or t.is_binary_view(f.type) or t.is_string_view(f.type)]
        fix = "CSV holds flat values only: write Parquet or JSON Lines"
    elif fmt is Format.JSONL:
        bad = [f for f in schema if binary(f.type)]
        fix = "JSON has no bytes: write Parquet, or CSV"
        dup = sorted({n for n in schema.names if schema.names.count(n) > 1})
        if dup:
            raise OutputError(f"Cannot write {display_name(target)}: column(s) {', '.join(map(repr, dup))} appear "
                              "more than once, and a JSON object has one value a key. Write Parquet or CSV.")
    else:
        bad = []
    if bad:
        raise OutputError(f"Cannot write {display_name(target)}: column(s) "
                          f"{', '.join(f'{f.name!r} ({f.type})' for f in bad)}: {fix}.")


class TableWriter:
    """One format's incremental writer on an open binary file: write(batch)... then close().
    The one place a format is written (the local Writer and Ray's part files both use it)."""

    def __init__(self, file: Any, fmt: Format, schema: pa.Schema, delimiter: str = ","):
        if fmt not in WRITABLE:
            raise OutputError(f"{fmt.value} is an input format only; write {', '.join(f.value for f in WRITABLE)}.")
        self.file, self.format = file, fmt
        self._writer: Any = None
        if fmt is Format.JSONL:
            from emolabel.jsonl import JsonLinesWriter  # how JSON Lines objects are written: jsonl.py

            self._json = JsonLinesWriter()
        elif fmt is Format.PARQUET:
            self._writer = pq.ParquetWriter(file, schema, compression="zstd")
        elif fmt is Format.CSV:
            self._writer = pa_csv.CSVWriter(file, schema, write_options=pa_csv.WriteOptions(delimiter=delimiter))

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if self.format is Format.JSONL:
            self.file.write(self._json.dumps(batch))
        elif isinstance(batch, pa.Table):
            self._writer.write_table(batch)
        else:
            self._writer.write(batch)

    def close(self) -> None:
        """Finish the format (Parquet's footer); the file itself stays open."""
        if self._writer is not None:
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
    """Writes batches incrementally to a temporary file and renames it into place on commit()."""

    def __init__(self, target: str, fmt: Format, schema: pa.Schema, overwrite: bool = True):
        self.target = target
        self.format = fmt
        self.schema = schema
        self.overwrite = overwrite  # False: a file that appears at the target meanwhile is not replaced
        self.tmp: Path | None = None
        self._out: IO[bytes] | None = None  # a stream target: where the rows go (stdout, a FIFO)
        if is_stream(target):
            if target == STDIO and sys.stdout is None:
                raise OutputError("stdout is closed, so the rows have nowhere to go; give `output` FILE.")
            self._out = sys.stdout.buffer if target == STDIO else open(target, "wb")  # noqa: SIM115
            if fmt is Format.PARQUET:  # Parquet needs a seekable file: spool, copy at the end
                self._file: IO[bytes] = tempfile.TemporaryFile(prefix="emolabel-out-")
            else:
                self._file = self._out
        else:
            p = Path(target)
            _remove_stale_temps(p)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{_host()}-{os.getpid()}.", suffix=".emolabel-tmp",
                                           dir=p.parent)
            except OSError as e:
                raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from None
            self.tmp = Path(tmp)
            self._file = os.fdopen(fd, "wb")
        self._writer: Any = None
        try:
            self._writer = TableWriter(self._file, fmt, schema, default_delimiter(target))  # CSV writes its header now
        except OSError as e:
            raise self._os_error(e) from None

    def write(self, batch: pa.RecordBatch, stats: dict | None = None) -> None:
        """Append a batch (`stats` is for CheckpointWriter's interface and unused here)."""
        try:
            self._writer.write(batch)
            if self._file is self._out:  # `| head` sees rows as soon as they are labelled
                self._file.flush()
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
            self._file.flush()
            if self.tmp is not None:
                os.fsync(self._file.fileno())
                self._file.close()
                os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a new file gets the usual mode
                if not self.overwrite and os.path.lexists(self.target):
                    raise appeared(self.target)
                os.replace(self.tmp, self.target)
                self.tmp = None
            else:  # a stream
                assert self._out is not None
                if self._file is not self._out:  # spooled Parquet
                    self._file.seek(0)
                    shutil.copyfileobj(self._file, self._out, 1 << 20)
                    self._file.close()
                self._out.flush()
                if self._out is not sys.stdout.buffer:
                    self._out.close()
        except OSError as e:
            self.abort()
            if isinstance(e, BrokenPipeError):
                raise
            raise self._os_error(e) from None
        except OutputError:
            self.abort()
            raise

    def abort(self, keep: bool = False) -> None:
        """Drop everything written so far; the target path is left as it was (`keep`: unused)."""
        closers = [getattr(self._writer, "close", None), self._file.close]
        if self._out is not None and self._out is not sys.stdout.buffer:
            closers.append(self._out.close)
        for close in closers:
            try:
                if close is not None and self._file is not sys.stdout.buffer:
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
