"""Committed progress for `emolabel tag` to a file, so an interrupted run can be resumed.

Each chunk of labelled rows is committed as an Arrow IPC part file in a folder beside the
target (`.NAME.emolabel-resume/`), then recorded in `progress.json` (written atomically). When
every chunk is in, the parts are copied into the target format through the ordinary atomic
Writer (compressed there for a .gz or .zst name, so resume is the same for those), and the
folder is removed. After Ctrl-C, SIGTERM, kill -9 or a power cut, the same
command with --resume skips the committed chunks and goes on; chunk boundaries are the same as
in an uninterrupted run, so the output is the same, row for row.

The progress records a fingerprint of the input, the model and every option that changes the
output; --resume refuses when any of them changed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from emolabel.errors import OutputError
from emolabel.files import file_sha256
from emolabel.formats import Format
from emolabel.outputs import WriteOptions, Writer, appeared

PROGRESS = "progress.json"


def resume_dir(target: str) -> Path:
    p = Path(target)
    return p.parent / f".{p.name}.emolabel-resume"


def _file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of the whole file: any edit, wherever it is, and whatever its mtime says,
    changes it."""
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}


def fingerprint(inputs: str | list[str], model_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """What --resume must find unchanged: the input, every file of the model folder, the options
    that change output (options.TagOptions.output_options) and emolabel's version."""
    from emolabel import __version__

    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    return {
        "input": _file_digest(Path(inputs)) if isinstance(inputs, str) else [_file_digest(Path(p)) for p in inputs],
        "model": {p.name: file_sha256(p) for p in files},
        "options": options,
        "emolabel": __version__,
    }


def _changes(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{where}{k}.")
        elif a != b:
            out.append(f"{where}{k}")
    return out


LOCK = ".lock"

# Options that do not change a label yet are in the fingerprint, and why a resume refuses them.
_SHAPE = ("this run's forward pads batches (a GPU, int8, or an encoder that is not plain BERT), where a row's "
          "probabilities move with the shape of its batch, so the resumed file would not be byte-identical to an "
          "uninterrupted run's; on the CPU in fp32 or bf16 emolabel's models may change it.")
WHY_REFUSED = {"options.batch_size": f"(`batch_size`: {_SHAPE})", "options.max_tokens": f"(`max_tokens`: {_SHAPE})",
               "options.chunk_rows": f"(`chunk_rows`: {_SHAPE})"}


def _lock(folder: Path, target: str) -> int:
    """Hold an exclusive lock on the progress folder for this run (released when the process ends,
    however it ends); refuse at once if another run holds it."""
    import fcntl

    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"Another emolabel run is writing {target} (its progress is in {folder}); wait for it "
                          "to finish, or write to another file.") from None
    return fd


def read_progress(path: Path) -> dict[str, Any] | None:
    """The saved progress, or None where there is none to use (missing, empty or torn: progress.json
    is replaced atomically, so a damaged one can only come from outside; its parts are not trusted)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("parts"), list) else None


def saved_rows(target: str) -> int:
    """Rows an interrupted run to `target` left committed for resume (0: none, or stdout)."""
    if target == "-":
        return 0
    data = read_progress(resume_dir(target) / PROGRESS)
    return int(data.get("rows", 0)) if data else 0


class CheckpointWriter:
    """A Writer whose progress survives the process: one committed part per chunk."""

    def __init__(self, target: str, fmt: Format, schema: pa.Schema, fp: dict[str, Any], resume: bool,
                 overwrite: bool = True, options: WriteOptions | None = None):
        self.target = target
        self.format = fmt
        self.schema = schema
        self.overwrite = overwrite
        self.options = options  # how the final copy writes the format (Parquet's codec, CSV's empty strings)
        self.dir = resume_dir(target)
        self.progress: dict[str, Any] = {"fingerprint": fp, "parts": [], "rows": 0, "stats": {}}
        self._lock = _lock(self.dir, target)  # one writer per output: a second run is refused, not mixed in
        old = read_progress(self.dir / PROGRESS)
        if not overwrite and os.path.lexists(target):
            # The target was checked before the lock: a run that held the lock then may have finished
            # it since (its last act under the lock). Looked at again now that the lock is ours.
            if old is None:
                shutil.rmtree(self.dir, ignore_errors=True)
            self._unlock()
            raise appeared(target)
        try:
            self._check_resume(old, fp, resume)
        except OutputError:  # refused: the lock goes with it, so this process can try again (a library caller)
            self._unlock()
            raise
        if resume and old is not None:
            self.progress = old
        try:
            for stray in self.dir.glob("*.tmp"):  # a part that was being written when the process died
                stray.unlink()
        except OSError as e:
            raise OutputError(f"Cannot write {target}: {e.strerror or e}.") from None
        self._save()

    def _check_resume(self, old: dict[str, Any] | None, fp: dict[str, Any], resume: bool) -> None:
        """Refuse progress left without `resume`, and a resume whose fingerprint changed."""
        target = self.target
        if old is not None and not resume and old.get("rows", 0):
            raise OutputError(
                f"An interrupted run left {old.get('rows', 0):,} labelled rows for {target} in {self.dir}. "
                f"Pass `resume` to continue it, or delete {self.dir} to start over."
            )
        if resume and old is None:
            import warnings

            from emolabel.errors import EmolabelWarning

            warnings.warn(EmolabelWarning(f"Nothing to resume for {target} (no progress in {self.dir}): "
                                          "labelling from the first row."), stacklevel=3)
        if resume and old is not None:
            changed = _changes(old.get("fingerprint", {}), fp)
            if changed:
                why = "".join(f" {WHY_REFUSED[c]}" for c in changed if c in WHY_REFUSED)
                raise OutputError(
                    f"Cannot resume {target}: {', '.join(changed)} changed since the interrupted run.{why} "
                    f"Run with the same input, model and options, or delete {self.dir} to start over."
                )

    @property
    def rows_done(self) -> int:
        return int(self.progress["rows"])

    @property
    def stats(self) -> dict[str, Any]:
        """Counts of the committed rows (empty, truncated, labels), kept for the final summary."""
        return self.progress["stats"]

    def write(self, batch: pa.RecordBatch, stats: dict[str, Any] | None = None) -> None:
        """Commit one chunk: its part file first, then the progress that names it."""
        name = f"part-{len(self.progress['parts']):06d}.arrow"
        tmp = self.dir / (name + ".tmp")
        try:
            # Python's open, not pa.OSFile: pyarrow cannot encode a file name that is not UTF-8
            with open(tmp, "wb") as sink:
                with pa.ipc.new_file(sink, self.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
                    w.write_batch(batch)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(tmp, self.dir / name)
        except (OSError, pa.ArrowException) as e:
            tmp.unlink(missing_ok=True)
            raise self._error(e) from None
        self.progress["parts"].append(name)
        self.progress["rows"] += batch.num_rows
        if stats:
            self.progress["stats"] = stats
        self._save()

    def _save(self) -> None:
        tmp = self.dir / (PROGRESS + ".tmp")
        try:
            tmp.write_text(json.dumps(self.progress, indent=1))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / PROGRESS)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> OutputError:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e):
            return OutputError(f"Disk full while writing {self.target}; nothing was written there. {self._kept()}")
        return OutputError(f"Cannot save progress in {self.dir}: {getattr(e, 'strerror', None) or e}.")

    def _kept(self) -> str:
        """Where the committed rows are, what they hold on the disk, and the two ways on."""
        try:
            size = sum(p.stat().st_size for p in self.dir.iterdir() if p.is_file())
        except OSError:
            size = 0
        return (f"The {self.progress['rows']:,} labelled rows so far are kept in {self.dir} ({size / 1e6:,.1f} MB): "
                "free some space and run the same command with --resume, or delete that folder to give the "
                "space back.")

    def commit(self) -> None:
        """Copy the parts, in order, into the target (atomically), then drop the progress."""
        out = Writer(self.target, self.format, self.schema, overwrite=self.overwrite, options=self.options)
        try:
            for name in self.progress["parts"]:
                with open(self.dir / name, "rb") as source:
                    reader = pa.ipc.open_file(source)
                    for i in range(reader.num_record_batches):
                        out.write(reader.get_batch(i))
            out.commit()
        except OutputError as e:
            out.abort()
            if str(e).startswith("Disk full"):  # the parts stay (abort(keep=True)): say where, and the fix
                raise OutputError(f"{e} {self._kept()}") from None
            raise
        except BaseException:
            out.abort()
            raise
        shutil.rmtree(self.dir, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = -1

    def abort(self, keep: bool = False) -> None:
        """keep=True (any failure after a commit: an interruption, a full disk during the final
        copy, a bad row): leave the committed parts for --resume."""
        if not keep or not self.progress["parts"]:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._unlock()
