"""tag(): read -> prepare (tokenize) -> model -> label columns -> write, overlapped in threads.

Reading and tokenizing run in a background thread, the model on the calling thread, and
writing in another background thread, so on a GPU the card is not idle while Python parses
CSV or compresses Parquet. Every input row comes out, in input order.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from emolabel.config import available_cpus
from emolabel.errors import InputError, OutputError
from emolabel.inference import Labeler, Prepared
from emolabel.labels import DEFAULT_PREFIX, append_columns, column_names, output_schema
from emolabel.tables import Reader, Writer  # or checkpoint.CheckpointWriter: the same write()/commit()

T = TypeVar("T")
_DONE = object()


@dataclass
class Summary:
    rows: int = 0
    empty: int = 0  # rows with no text: null label and probabilities
    truncated: int = 0  # texts longer than --max-length, cut
    uncertain: int = 0  # rows whose top probability is under min_score: no label
    seconds: float = 0.0
    label_counts: Counter = field(default_factory=Counter)
    skipped_lines: list[int] = field(default_factory=list)  # --on-error skip
    resumed: int = 0  # rows committed by an interrupted run and not labelled again

    @property
    def rows_per_s(self) -> float:
        return (self.rows - self.resumed) / self.seconds if self.seconds > 0 else 0.0


def check_text_column(reader: Reader, text_column: str) -> None:
    """The text column exists (else the nearest names are offered) and holds text."""
    import difflib

    names = reader.schema.names
    if text_column not in names:
        near = [n for n in names if n.lower() == text_column.lower()]
        near += [n for n in difflib.get_close_matches(text_column, names, n=3, cutoff=0.6) if n not in near]
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise InputError(
            f"Column {text_column!r} not found in {reader.name}.{hint} Available columns: "
            f"{', '.join(names)}. Use `text_column` to choose."
        )
    typ = reader.schema.field(text_column).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)):
        import warnings

        from emolabel.errors import EmolabelWarning

        text_like = [f.name for f in reader.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        warnings.warn(EmolabelWarning(
            f"column {text_column!r} of {reader.name} holds {typ} values, not text: they are labelled as their "
            f"text (\"42\"). Text columns: {', '.join(text_like) or 'none'}; use `text_column` to choose."),
            stacklevel=2)


def check_columns(reader: Reader, text_column: str, labels: list[str], prefix: str,
                  status: bool = False) -> pa.Schema:
    """Fail before any work if the text column is missing or a new column would clash."""
    check_text_column(reader, text_column)
    names = reader.schema.names
    clash = [c for c in column_names(labels, prefix, status) if c in names]
    if clash:
        raise InputError(
            f"{reader.name} already has column(s) {', '.join(clash)}, which tag would add. "
            "Use `prefix` to name the new columns differently (e.g. `prefix` predicted)."
        )
    return output_schema(reader.schema, labels, prefix, status)


def tag(
    reader: Reader,
    writer: Writer,
    labeler: Labeler,
    text_column: str,
    prefix: str,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    resume_from: dict[str, Any] | None = None,
    min_score: float | None = None,
    limit: int | None = None,
) -> Summary:
    """Label every row of `reader` into `writer` (not committed here); returns counts.

    `resume_from`: the counts of rows an interrupted run already committed (a CheckpointWriter's
    stats); that many input rows are skipped, a whole chunk at a time.
    """
    schema = check_columns(reader, text_column, labeler.labels, prefix, status=min_score is not None)
    if workers is None:  # on a GPU the CPU side is the bottleneck; on the CPU the model is
        workers = max(1, min(4, available_cpus() // 4)) if labeler.device.type == "cuda" else 1
    summary = Summary()
    start = time.perf_counter()
    counts = np.zeros(len(labeler.labels), dtype=np.int64)
    skip = 0
    if resume_from:
        skip = summary.resumed = int(resume_from.get("rows", 0))
        summary.rows, summary.empty = skip, int(resume_from.get("empty", 0))
        summary.truncated = int(resume_from.get("truncated", 0))
        summary.uncertain = int(resume_from.get("uncertain", 0))
        counts += np.array([resume_from.get("labels", {}).get(n, 0) for n in labeler.labels], dtype=np.int64)

    def limited() -> Iterator[pa.RecordBatch]:
        seen = 0
        for batch in reader:
            if limit is not None:
                if seen >= limit:
                    return  # the first `limit` rows only: the rest is never read
                batch = batch.slice(0, limit - seen)
            seen += batch.num_rows
            yield batch

    def unread() -> Iterator[pa.RecordBatch]:
        left = skip
        for batch in limited():
            if left >= batch.num_rows:  # committed by the interrupted run
                left -= batch.num_rows
                continue
            if left:
                raise OutputError("The saved progress does not end on a chunk boundary of this input; "
                                  "delete the .emolabel-resume folder and start over.")
            yield batch

    def prepared() -> Iterator[tuple[pa.RecordBatch, Prepared]]:
        # Several chunks are normalized and tokenized at once (pyarrow and the Rust tokenizer
        # release the GIL); results are taken in input order.
        with ThreadPoolExecutor(workers, thread_name_prefix="emolabel-prepare") as pool:
            pending: deque = deque()
            for batch in unread():
                pending.append((batch, pool.submit(labeler.prepare, batch.column(text_column))))
                if len(pending) > workers:
                    b, job = pending.popleft()
                    yield b, job.result()
            while pending:
                b, job = pending.popleft()
                yield b, job.result()

    with _BackgroundWriter(writer) as out:
        for batch, prep in _background(prepared(), depth=2):
            probs = labeler.run(prep)
            summary.rows += batch.num_rows
            summary.empty += prep.empty
            summary.truncated += prep.truncated
            valid = probs[~np.isnan(probs[:, 0])]
            if min_score is not None:  # uncertain rows get no label and are counted apart
                sure = valid.max(axis=1) >= min_score
                summary.uncertain += int((~sure).sum())
                valid = valid[sure]
            counts += np.bincount(valid.argmax(axis=1), minlength=len(counts))
            stats = {"rows": summary.rows, "empty": summary.empty, "truncated": summary.truncated,
                     "uncertain": summary.uncertain, "labels": {n: int(c) for n, c in zip(labeler.labels, counts)}}
            out.submit(append_columns(batch, probs, labeler.labels, schema, min_score), stats)
            if progress is not None:
                progress(batch.num_rows)
    summary.seconds = time.perf_counter() - start
    summary.label_counts = Counter({name: int(c) for name, c in zip(labeler.labels, counts) if c})
    summary.skipped_lines = list(reader.skipped)
    return summary


def _background(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run an iterator in a daemon thread, `depth` items ahead; its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _DONE))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((False, e))

    thread = threading.Thread(target=work, name="emolabel-read", daemon=True)
    thread.start()
    try:
        while True:
            try:
                ok, item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()


class _BackgroundWriter:
    """Writes submitted batches in order on a daemon thread; errors surface on the next call."""

    def __init__(self, writer: Writer):
        self.writer = writer
        self.q: queue.Queue = queue.Queue(2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="emolabel-write", daemon=True)

    def __enter__(self) -> _BackgroundWriter:
        self.thread.start()
        return self

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is _DONE or self.error is not None:
                return
            try:
                self.writer.write(*item)
            except BaseException as e:  # noqa: BLE001 - raised on the main thread
                self.error = e

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, batch: pa.RecordBatch, stats: dict[str, Any] | None = None) -> None:
        self._check()
        while True:
            try:
                self.q.put((batch, stats), timeout=0.1)
                return
            except queue.Full:
                self._check()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.error = self.error or OutputError("stopped")
            try:
                self.q.put_nowait(_DONE)
            except queue.Full:
                pass
            self.thread.join(timeout=5)  # let a write in progress end before the file is dropped
            return
        self.q.put(_DONE)
        while self.thread.is_alive():
            self.thread.join(timeout=0.1)
        self._check()


# -- tagging a file into a file: the library call behind `emolabel tag` -----------------------


@dataclass(frozen=True)
class TagOptions:
    """Everything a tag run can be told; None means "the default for the device" (see resolve()).

    Every field either changes the output (and so goes into the --resume fingerprint) or is
    named in NOT_OUTPUT with the reason it does not.
    """

    text_column: str = "text"
    model: str | None = None  # a model folder; None: the shipped model (EMOLABEL_MODEL overrides)
    prefix: str = DEFAULT_PREFIX  # of the added columns
    input_format: str | None = None  # None: from the extension (stdin: sniffed)
    output_format: str | None = None  # None: from the extension (stdout: the input's)
    batch_size: int | None = None  # rows per model batch; None: the Labeler's default for the device
    max_tokens: int | None = None  # padded tokens per batch; None: the Labeler's default for the device
    max_length: int | None = None  # truncate texts to this many tokens; None: the model's (128)
    chunk_rows: int | None = None  # rows read and written at a time; None: 65536 on a GPU, 8192 on the CPU
    device: str = "auto"  # auto: the first CUDA GPU, else the CPU
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 on the CPU (inference.resolve_precision)
    threads: int | None = None  # CPU threads for the model; None: all cores
    encoding: str = "utf-8"  # of CSV / JSON Lines input
    on_error: str = "fail"  # a malformed row: "fail", or "skip" it and report its line
    min_score: float | None = None  # rows whose top probability is lower get no label, status "uncertain"
    limit: int | None = None  # label only the first N rows (a quick try on a big file)
    overwrite: bool = False  # replace an existing output file
    resume: bool = False  # continue an interrupted run from its committed chunks

    # Fields that cannot change a labelled row: kept out of the --resume fingerprint.
    NOT_OUTPUT: ClassVar[dict[str, str]] = {
        "model": "fingerprinted by content (every file of the folder), not by its path",
        "threads": "the same numbers on any thread count",
        "overwrite": "only whether an existing file may be replaced",
        "resume": "only whether committed progress is used",
    }

    def resolve(self, device_type: str) -> TagOptions:
        """The read chunk's default for the device filled in (the Labeler fills in its own batch
        defaults; tag_file takes them from it for the fingerprint)."""
        return dataclasses.replace(self, chunk_rows=self.chunk_rows or (65536 if device_type == "cuda" else 8192))

    def output_options(self) -> dict[str, Any]:
        """The fields that change the output: what --resume must find unchanged."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.NOT_OUTPUT}


def tag_file(input: str, output: str, options: TagOptions | None = None, progress: Any = None) -> Summary:
    """Label every row of `input` (a path, or '-' for stdin) into `output` (a path, or '-').

    A file-to-file run commits its progress chunk by chunk beside the output, so an interrupted
    run continues with resume=True; nothing appears at `output` until every row is written.
    `progress`, if given, has start(total_rows or None, rows_already_done) and advance(rows).
    """
    from emolabel import checkpoint, tables
    from emolabel.config import ModelConfig, default_model_dir
    from emolabel.errors import OptionError
    from emolabel.inference import resolve_device

    opts = options or TagOptions()
    in_fmt = tables.Format(opts.input_format) if opts.input_format else None
    out_fmt = tables.Format(opts.output_format) if opts.output_format else None
    if output != tables.STDIO and out_fmt is None:
        out_fmt = tables.format_from_suffix(output)
        if out_fmt is None:
            raise OptionError(f"Cannot tell the output format from {output!r}; use a .csv, .parquet or .jsonl "
                              "name, or `output_format`.")
    # Progress can be committed and resumed only between regular files: a pipe or FIFO given as a
    # path cannot be read twice (fingerprinting it would steal rows from the reader).
    checkpointed = output != tables.STDIO and input != tables.STDIO and tables.is_regular_file(input)
    if opts.resume and not checkpointed:
        raise OptionError("`resume` needs an input file and an output file (not stdin/stdout, a pipe or a FIFO).")
    tables.check_output(output, input, opts.overwrite)
    if output == tables.STDIO and sys.stdout.isatty() and out_fmt is tables.Format.PARQUET:
        raise OptionError("Refusing to write Parquet to a terminal; write to a file.")

    dev = resolve_device(opts.device)
    opts = opts.resolve(dev.type)
    reader = tables.open_input(input, in_fmt, chunk_rows=opts.chunk_rows, encoding=opts.encoding,  # type: ignore[arg-type]
                               on_error=opts.on_error)
    writer: Any = None
    try:
        if out_fmt is None:  # stdout: the input's format unless told
            out_fmt = reader.format
            if sys.stdout.isatty() and out_fmt is tables.Format.PARQUET:
                raise OptionError("Refusing to write Parquet to a terminal; give another `output_format`.")
        check_text_column(reader, opts.text_column)  # before the model loads: fail fast
        folder = Path(opts.model) if opts.model else default_model_dir()
        labels = ModelConfig.load(folder).labels
        if opts.limit is not None and opts.limit < 1:
            raise OptionError(f"`limit` must be at least 1, not {opts.limit}.")
        if not opts.prefix or not opts.prefix.strip():
            raise OptionError("`prefix` cannot be empty: the new columns would be named '', '_score', ...")
        if opts.min_score is not None and not 0 <= opts.min_score <= 1:
            raise OptionError(f"`min_score` must be between 0 and 1, not {opts.min_score}.")
        schema = check_columns(reader, opts.text_column, labels, opts.prefix, status=opts.min_score is not None)
        labeler = Labeler(folder, device=opts.device, precision=opts.precision, batch_size=opts.batch_size,
                          max_tokens=opts.max_tokens, max_length=opts.max_length, threads=opts.threads)
        done = None
        if checkpointed:
            resolved = dataclasses.replace(opts, max_length=labeler.max_length, precision=labeler.precision,
                                           device=labeler.device.type, batch_size=labeler.batch_size,
                                           max_tokens=labeler.max_tokens, input_format=reader.format.value,
                                           output_format=out_fmt.value)
            writer = checkpoint.CheckpointWriter(output, out_fmt, schema,
                                                 checkpoint.fingerprint(input, folder, resolved.output_options()),
                                                 opts.resume)
            done = writer.stats if writer.rows_done else None
        else:
            writer = tables.Writer(output, out_fmt, schema)
        if progress is not None:
            total = reader.total_rows if opts.limit is None else min(reader.total_rows or opts.limit, opts.limit)
            progress.start(total, done["rows"] if done else 0)
        summary = tag(reader, writer, labeler, opts.text_column, opts.prefix,
                      progress.advance if progress is not None else None, resume_from=done, min_score=opts.min_score, limit=opts.limit)
        writer.commit()
        writer = None
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
        reader.close()
