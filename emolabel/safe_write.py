"""The rules for every file and folder emolabel writes (tag, eval, finetune): never an input, never
an existing one unless asked, and whole or not at all.

- An output that is (or, for a folder, holds) one of the run's inputs is refused even with
  `overwrite`: that is a mistake in the command, not a wish (OutputIsInputError, exit 2).
- An output that exists is refused without `overwrite` (OutputError, exit 1), before any work.
- Files are written to a temporary file in the target's folder, fsynced and renamed into place;
  folders are built in a temporary sibling and renamed into place (outputs.move_folder_into_place).
  A failed run leaves nothing at the target, and an old target is replaced only at the very end.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from emolabel.errors import OutputError, OutputIsInputError

TEMP_SUFFIX = ".emolabel-tmp"  # .NAME.HOST-PID.RANDOM.emolabel-tmp: outputs' stale-file clean-up knows it


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.realpath(path)))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: resolved paths (links followed), or one inode (hard links)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_file_target(target: str | os.PathLike, inputs: Iterable[str | os.PathLike], overwrite: bool,
                      what: str = "output") -> None:
    """Refuse a file target that is one of `inputs` (always) or exists (without `overwrite`)."""
    for src in inputs:
        if same_file(target, src):
            raise OutputIsInputError(f"{target} is also the input {src}: write the {what} to another file.")
    if os.path.lexists(target) and not overwrite:
        raise OutputError(f"{target} already exists. Pass `overwrite` to replace it.")
    if os.path.isdir(target):
        raise OutputError(f"Cannot write {target}: it is a folder. Give a file name.")


def check_folder_target(target: str | os.PathLike, inputs: Iterable[str | os.PathLike], overwrite: bool,
                        what: str = "output") -> None:
    """Refuse a folder target that is or holds one of `inputs`, or this process's working folder (it is
    replaced whole), or one that exists and is not empty without `overwrite`. An empty folder is free,
    and missing parent folders are made when it is written."""
    out = _resolved(target)
    for src in [*inputs, os.getcwd()]:
        p = _resolved(src)
        if p == out or out in p.parents:
            held = "the current folder" if src == os.getcwd() else f"the input {src}"
            raise OutputIsInputError(f"{target} holds {held}; the {what} folder is replaced whole, which would "
                                     f"delete it. Write the {what} to another folder.")
    if os.path.exists(target) and not os.path.isdir(target):
        raise OutputError(f"Cannot write {target}: it is a file, and the {what} is a folder. Give a folder name.")
    if not overwrite and os.path.isdir(target) and any(os.scandir(target)):
        raise OutputError(f"{target} already exists and is not empty. Pass `overwrite` to replace it.")


def temp_file_for(target: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """A new empty temporary file for `target`, in `folder` (default: the target's own, so that the
    rename is atomic; another is for a target whose folder is made later, and is named after both),
    named after its owner so that a later run can remove it if this one is killed."""
    from emolabel.outputs import _host, _remove_stale_temps

    p = Path(target)
    where = Path(folder) if folder is not None else p.parent
    name = p.name if folder is None else f"{p.parent.name}-{p.name}"
    _remove_stale_temps(where / name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{_host()}-{os.getpid()}.", suffix=TEMP_SUFFIX, dir=where)
    except OSError as e:
        raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from None
    os.close(fd)
    return Path(tmp)


def commit_file(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """fsync `tmp`, give it the usual mode (mkstemp makes 0600) and rename it to `target`."""
    from emolabel.outputs import _umask

    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `target`'s contents to (by any library); renamed into place when
    the block ends, removed if it raises."""
    tmp = temp_file_for(target)
    try:
        yield tmp
        commit_file(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicFile:
    """A text file written as it goes (a log) to a temporary file, and renamed to its target by
    commit(); `append`: it starts as a copy of the target's current contents (a resumed run's log).
    `folder`: where the temporary file lives, when the target's folder does not exist yet. Missing
    folders are made."""

    def __init__(self, target: str | os.PathLike, append: bool = False, folder: str | os.PathLike | None = None):
        self.target = Path(target)
        Path(folder if folder is not None else self.target.parent).mkdir(parents=True, exist_ok=True)
        self.tmp = temp_file_for(target, folder)
        if append and self.target.is_file():
            import shutil

            shutil.copyfile(self.target, self.tmp)
        self.file: IO[str] = open(self.tmp, "a", encoding="utf-8")  # noqa: SIM115 - closed by commit/abort

    def write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()

    def commit(self) -> None:
        self.file.close()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        commit_file(self.tmp, self.target)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to build `target` in; it replaces `target` (an old folder is
    removed only then) when the block ends, and is removed if the block raises."""
    import shutil

    from emolabel.outputs import move_folder_into_place, remove_stale_temp_folders, temp_folder

    Path(target).absolute().parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_folders(str(target))
    tmp = Path(temp_folder(str(target)))
    tmp.mkdir()
    try:
        yield tmp
        move_folder_into_place(str(tmp), str(target))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

