"""The local engine: a plan run in this process, rows in input order, into one file or stdout.

A file-to-file run commits its progress chunk by chunk beside the output (checkpoint), so an
interrupted run continues with `resume`; nothing appears at the output until every row is
written (outputs.Writer). The work itself is pipeline.label_stream's threaded loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from emolabel.errors import InputError
from emolabel.pipeline import label_stream
from emolabel.plan import TagPlan
from emolabel.summary import Summary


@dataclass(frozen=True)
class LocalEngine:
    """This process: rows in input order, resume, stdin and stdout."""

    name: ClassVar[str] = "local"
    unsupported: ClassVar[dict[str, str]] = {}
    writes_folder: ClassVar[bool] = False

    def check_settings(self) -> None:
        """No settings of its own."""

    def execute(self, plan: TagPlan, progress: Any = None) -> Summary:
        """Label every row of the plan's input into its output. `progress`, if given, has
        start(total_rows or None, rows_already_done, total_bytes or None) and advance(rows,
        bytes_read or None): bytes for CSV and JSON Lines files, whose row count is not known up
        front."""
        from emolabel import checkpoint, outputs

        opts, reader = plan.options, plan.reader
        assert reader is not None and plan.schema is not None  # plan._file_plan opened and checked it
        writer: Any = None
        try:
            labeler = plan.labeler()
            done = None
            if plan.checkpointed:
                writer = checkpoint.CheckpointWriter(plan.output, plan.output_format, plan.schema, plan.fingerprint(labeler.invariant),
                                                     opts.resume, overwrite=opts.overwrite, options=plan.write_options)
                done = writer.stats if writer.rows_done else None
            else:
                writer = outputs.Writer(plan.output, plan.output_format, plan.schema, overwrite=opts.overwrite,
                                        options=plan.write_options)
            advance = _progress(plan, progress, done["rows"] if done else 0)
            startup = time.perf_counter() - plan.started
            summary = label_stream(reader, writer, labeler, opts.text_column, plan.selection, plan.schema, advance,
                                   resume_from=done, limit=opts.limit)
            writer.commit()
            writer = None
            summary.output, summary.startup = plan.output, startup
            summary.precision = f"{labeler.precision} ({plan.precision_reason or labeler.precision_reason})"
            summary.seconds = time.perf_counter() - plan.started
            return summary
        except (BrokenPipeError, InputError):
            if writer is not None:  # a bad row: fixing the input changes it, so its progress is no use
                writer.abort()
            raise
        except BaseException:
            if writer is not None:  # interrupted, disk full in the final copy, a crash: resume goes on
                writer.abort(keep=True)
            raise
        finally:
            plan.close()


def _progress(plan: TagPlan, progress: Any, done: int) -> Callable[[int], None] | None:
    """`progress` started for the plan's input (rows, else bytes read), as label_stream's callback."""
    if progress is None:
        return None
    reader, limit = plan.reader, plan.options.limit
    assert reader is not None
    total = reader.total_rows if limit is None else min(reader.total_rows or limit, limit)
    by_bytes = reader.bytes_read if total is None else None
    progress.start(total, done, reader.total_bytes if by_bytes else None)

    def advance(rows: int) -> None:
        progress.advance(rows, _safe(by_bytes) if by_bytes else None)

    return advance


def _safe(position: Callable[[], int]) -> int | None:
    """A reader's byte position read from another thread: None if the file just closed."""
    try:
        return position()
    except (OSError, ValueError):
        return None
