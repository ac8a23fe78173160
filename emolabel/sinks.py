"""Where an output's bytes go: a stream that takes every byte or fails, and compressed files.

A pipe's reader can go away at any time (`| head`). Python's buffered stdout then loses data
without a word: a write larger than the pipe that the reader leaves half way returns a short
count and no error, so a run "succeeded" after its reader died. Stream writes every byte with
os.write (a short write goes on, the next one fails with EPIPE), and tells whether the reader
is still there without writing (poll), so a run stops within a batch instead of labelling
a whole further chunk for nobody.
"""

from __future__ import annotations

import gzip
import os
import select
from typing import IO, Any

import pyarrow as pa

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}  # output name suffix -> codec; the one list of them
GZIP_LEVEL = 6  # gzip's own default: level 9 is about 3x slower for 1-2% smaller files


def compression_of(path: str) -> str | None:
    """The codec an output name asks for (`x.csv.gz`: gzip), or None."""
    return next((codec for suffix, codec in COMPRESSIONS.items() if path.lower().endswith(suffix)), None)


def strip_compression(path: str) -> str:
    """The name without its compression suffix (`x.csv.gz`: `x.csv`)."""
    suffix = next((s for s in COMPRESSIONS if path.lower().endswith(s)), "")
    return path[: len(path) - len(suffix)]


class Stream:
    """A binary stream (stdout, a FIFO) written with os.write: every byte, or an OSError.

    Also what pyarrow's Parquet writer needs of a file that cannot seek: tell() counts the bytes
    written, so Parquet streams a row group per chunk instead of being spooled to the end."""

    def __init__(self, target: IO[bytes] | int, owned: bool = False):
        self._file = target if not isinstance(target, int) else None
        self._fd: int | None = target if isinstance(target, int) else _fileno(target)
        self._owned = owned  # close the descriptor at close() (a FIFO we opened; never stdout)
        self._poll: Any = None
        if self._fd is not None and _is_pipe(self._fd) and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(self._fd, 0)  # no events asked: POLLERR and POLLHUP come anyway
        self._pos = 0
        self._dropped = False
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self._dropped:
            return size
        while view:
            if self._fd is not None:
                n = os.write(self._fd, view)
            else:  # no descriptor (a test's captured stdout): its own write, its count checked
                n = self._file.write(view)  # type: ignore[union-attr]
                n = len(view) if n is None else n
            view = view[n:]
        self._pos += size
        return size

    def drop_the_rest(self) -> None:
        """After a failure: later writes go nowhere (Parquet's footer, written when its writer is
        closed or collected, would make the rows sent so far look like a whole file)."""
        self._dropped = True

    def reader_gone(self) -> bool:
        """True when the pipe's reader has closed it (Linux: POLLERR on the write end); False
        while it is there, and for anything that is not a pipe or socket."""
        if self._poll is None:
            return False
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in self._poll.poll(0))

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        if self._file is not None and self._fd is None:
            self._file.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed and self._owned and self._fd is not None:
            os.close(self._fd)
        self.closed = True


def _fileno(file: IO[bytes]) -> int | None:
    try:
        return file.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None


def _is_pipe(fd: int) -> bool:
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _KeepOpen:
    """A file whose close() only flushes: pyarrow's compressed stream closes what it wraps, and
    the Writer still has to fsync the temporary file before renaming it."""

    def __init__(self, file: IO[bytes]):
        self._file = file
        self.closed = False

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        self.closed = True


def compressed(file: IO[bytes], codec: str) -> Any:
    """`file` behind a compressor; its close() ends the compressed stream and leaves `file` open.
    gzip: the standard library's, level 6, no time or name in the header (the same rows give the
    same bytes); zstd: pyarrow's."""
    if codec == "gzip":
        return gzip.GzipFile(filename="", mode="wb", fileobj=file, compresslevel=GZIP_LEVEL, mtime=0)
    return pa.CompressedOutputStream(_KeepOpen(file), codec)
