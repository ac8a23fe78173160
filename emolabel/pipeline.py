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

import pyarrow as pa
import pyarrow.compute as pc

from emolabel.config import available_cpus
from emolabel.errors import InputError, OutputError
from emolabel.inference import Labeler, Prepared, release_free_memory
from emolabel.inputs import Reader
from emolabel.labels import DEFAULT_PREFIX
from emolabel.language import count_non_english
from emolabel.outputs import Writer  # or checkpoint.CheckpointWriter: the same write()/commit()
from emolabel.selection import Selection

T = TypeVar("T")
_DONE = object()


@dataclass
class Summary:
    """What a tag run did, whichever engine ran it (one printer renders it: cli._print_summary)."""

    rows: int = 0
    empty: int = 0  # rows with no text: null label and probabilities
    truncated: int = 0  # texts longer than max_length, cut
    uncertain: int = 0  # rows whose top probability is under min_score: no label
    non_english: int = 0  # rows whose text looks like another language (language.looks_non_english)
    seconds: float = 0.0  # from the call to the end, start-up (model load, Ray) included
    startup: float = 0.0  # of `seconds`, the part before labelling began (reading the model, ...)
    label_counts: Counter = field(default_factory=Counter)
    skipped_lines: list = field(default_factory=list)  # on_error skip: line numbers (file:line for several files)
    resumed: int = 0  # rows committed by an interrupted run and not labelled again
    output: str = ""  # where the rows went ("-": stdout)
    files: list[str] = field(default_factory=list)  # an engine that writes a folder: its part files
    engine: str = "local"
    types: dict[str, str] = field(default_factory=dict)  # detect_types: each column's type, as read

    @property
    def rows_per_s(self) -> float:
        """The labelling rate: rows labelled in this run per second after start-up."""
        busy = self.seconds - self.startup
        return (self.rows - self.resumed) / busy if busy > 0 else 0.0

    def add(self, labelled: pa.RecordBatch | pa.Table, prefix: str, truncated: int = 0, non_english: int = 0) -> None:
        """Count a labelled batch from its label columns (what was written is what is counted):
        without a status column (no min_score) a null label is a row without text."""
        from emolabel.labels import NO_TEXT

        label = labelled.column(prefix)
        status = f"{prefix}_status"
        empty = (pc.sum(pc.equal(labelled.column(status), NO_TEXT)).as_py() or 0
                 if status in labelled.schema.names else label.null_count)
        self.rows += labelled.num_rows
        self.empty += empty
        self.uncertain += label.null_count - empty
        self.truncated += truncated
        self.non_english += non_english
        for item in pc.value_counts(label).to_pylist():
            if item["values"] is not None:
                self.label_counts[item["values"]] += item["counts"]

    def merge(self, other: Summary) -> None:
        for name in ("rows", "empty", "truncated", "uncertain", "non_english"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.label_counts.update(other.label_counts)

    def stats(self) -> dict[str, Any]:
        """The counts a checkpoint keeps beside committed rows (and resume_from reads back)."""
        return {"rows": self.rows, "empty": self.empty, "truncated": self.truncated, "uncertain": self.uncertain,
                "non_english": self.non_english, "labels": dict(self.label_counts)}

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Summary:
        return cls(rows=int(stats.get("rows", 0)), empty=int(stats.get("empty", 0)),
                   truncated=int(stats.get("truncated", 0)), uncertain=int(stats.get("uncertain", 0)),
                   non_english=int(stats.get("non_english", 0)),
                   label_counts=Counter({k: int(v) for k, v in stats.get("labels", {}).items() if v}))


def check_text_column(schema: pa.Schema, name: str, text_column: str, warn: bool = True, file: bool = True) -> None:
    """The text column exists in `schema` of input `name` (else the nearest names are offered, and
    for a `file` the reading options that may be wrong) and holds text (numbers are labelled as
    their text, with a warning unless `warn` is off)."""
    import difflib

    names = schema.names
    if text_column not in names:
        near = [n for n in names if n.lower() == text_column.lower()]
        near += [n for n in difflib.get_close_matches(text_column, names, n=3, cutoff=0.6) if n not in near]
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        if len(names) == 1 and file:
            sep = next((c for c in ";\t|," if c in names[0]), None)
            if sep:
                hint = (f" The header is one column, {names[0]!r}: if the file is separated by {sep!r}, pass "
                        f"`delimiter` {sep!r}.")
            elif not near:
                hint = " If the input is plain text, one text per line with no header, use `input_format` lines."
        raise InputError(
            f"Column {text_column!r} not found in {name}.{hint} Available columns: "
            f"{', '.join(names)}. Use `text_column` to choose."
        )
    typ = schema.field(text_column).type
    if pa.types.is_nested(typ):
        raise InputError(f"Column {text_column!r} of {name} holds {typ} values, not text. Use `text_column` to choose "
                         f"a text column ({', '.join(f.name for f in schema if pa.types.is_string(f.type)) or 'none'}).")
    if warn and not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
                     or pa.types.is_null(typ)):
        import warnings

        from emolabel.errors import EmolabelWarning

        text_like = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        binary = "binary" in str(typ)
        how = "read as UTF-8 text" if binary else 'labelled as their text ("42")'
        warnings.warn(EmolabelWarning(
            f"column {text_column!r} of {name} holds {typ} values, not text: they are {how}. "
            f"Text columns: {', '.join(text_like) or 'none'}; use `text_column` to choose."),
            stacklevel=2)


def as_text(texts: pa.Array, name: str, text_column: str, first_row: int | None = 0) -> pa.Array:
    """A bytes column as UTF-8 text (other columns as they are: prepare() reads numbers as their
    text); bytes that are not UTF-8 are an error naming the row (1-based, `first_row` rows before
    these; None where that is not known: Ray's blocks)."""
    if not (pa.types.is_binary(texts.type) or pa.types.is_large_binary(texts.type)
            or pa.types.is_binary_view(texts.type) or pa.types.is_fixed_size_binary(texts.type)):
        return texts
    try:
        return pc.cast(texts, pa.string())
    except pa.ArrowInvalid:
        bad = next(i for i, v in enumerate(texts.to_pylist()) if v is not None and not _utf8(v))
        where = f"{name}, row {first_row + bad + 1:,}" if first_row is not None else name
        raise InputError(f"{where}: column {text_column!r} holds bytes that are not "
                         "UTF-8 text. Decode the column first (from its real encoding), or choose another "
                         "`text_column`.") from None


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_columns(schema: pa.Schema, name: str, text_column: str, selection: Selection,
                  added: tuple[str, ...] = (), warn: bool = True, file: bool = True,
                  always: tuple[str, ...] = ()) -> pa.Schema:
    """Fail before any work if the text column or a `columns` entry is missing or a new column
    would clash with a kept one; returns the output schema. `added`: columns an engine adds
    besides the labels (Ray's row id); `always`: input columns kept whatever `columns` says."""
    check_text_column(schema, name, text_column, warn, file)
    kept = selection.kept(schema.names, name, always)
    clash = [c for c in [*selection.added(), *added] if c in kept]
    if clash:
        raise InputError(
            f"{name} already has column(s) {', '.join(clash)}, which tag would add. "
            "Use `prefix` to name the new columns differently (e.g. `prefix` predicted), or leave "
            "the old ones out with `columns`."
        )
    return selection.output_schema(schema, name, always)


def label_chunk(labeler: Labeler, batch: pa.RecordBatch, prepared: Prepared, schema: pa.Schema,
                selection: Selection, between: Callable[[int], None] | None = None) -> pa.RecordBatch:
    """The model on a prepared chunk: `batch`'s kept columns with the label columns (`schema`:
    check_columns'). The one labelling step of every engine. `between`, if given, is called
    between model batches (WATCH_BATCHES at a time) and may raise to stop: the same batches, the
    same numbers."""
    step = WATCH_BATCHES[labeler.device.type == "cuda"]
    return selection.label(batch, labeler.run(prepared, between, step), schema)


# Model batches between two looks at a stream's reader: every batch on the CPU; on a GPU each look
# waits for the card (a device sync), so every 8 batches, as eval's progress does.
WATCH_BATCHES = {False: 1, True: 8}



def tag(
    reader: Reader,
    writer: Writer,
    labeler: Labeler,
    text_column: str,
    selection: Selection,
    schema: pa.Schema,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    resume_from: dict[str, Any] | None = None,
    limit: int | None = None,
) -> Summary:
    """Label every row of `reader` into `writer` (not committed here); returns counts.

    `schema`: the output schema from check_columns (tag_file checked the columns before any work),
    of the columns `selection` writes.
    `resume_from`: the counts of rows an interrupted run already committed (a CheckpointWriter's
    stats); that many input rows are skipped, a whole chunk at a time.
    """
    if workers is None:  # on a GPU the CPU side is the bottleneck; on the CPU the model is
        workers = max(1, min(4, available_cpus() // 4)) if labeler.device.type == "cuda" else 1
    summary = Summary.from_stats(resume_from) if resume_from else Summary()
    summary.resumed = skip = summary.rows
    start = time.perf_counter()

    def limited() -> Iterator[pa.RecordBatch]:
        seen = 0
        for batch in _small_first(reader):
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

    def prepare(texts: pa.Array) -> tuple[Prepared, int]:
        return labeler.prepare(texts), count_non_english(texts)

    def prepared() -> Iterator[tuple[pa.RecordBatch, tuple[Prepared, int]]]:
        # Several chunks are normalized, tokenized and checked for their language at once (pyarrow
        # and the Rust tokenizer release the GIL); results are taken in input order.
        with ThreadPoolExecutor(workers, thread_name_prefix="emolabel-prepare") as pool:
            pending: deque = deque()
            row = skip
            for batch in unread():
                texts = as_text(batch.column(text_column), reader.name, text_column, row)
                row += batch.num_rows
                pending.append((batch, pool.submit(prepare, texts)))
                if len(pending) > workers:
                    b, job = pending.popleft()
                    yield b, job.result()
            while pending:
                b, job = pending.popleft()
                yield b, job.result()

    with _BackgroundWriter(writer) as out:
        def wanted(rows: int) -> None:
            """A stream's reader that went away (`| head`) stops the labelling within a batch, not
            a chunk (8,192 rows) later, when the next write would have failed."""
            out.check()  # a write that failed meanwhile
            if writer.reader_gone():
                raise BrokenPipeError("the output's reader closed it")

        watch = wanted if getattr(writer, "stream", False) else None
        for batch, (prep, foreign) in _background(prepared(), depth=2):
            labelled = label_chunk(labeler, batch, prep, schema, selection, watch)
            release_free_memory()  # memory stays flat over millions of rows
            summary.add(labelled, selection.prefix, prep.truncated, foreign)
            out.submit(labelled, summary.stats())
            if progress is not None:
                progress(batch.num_rows)
    summary.seconds = time.perf_counter() - start
    summary.skipped_lines = list(reader.skipped)
    summary.types = dict(reader.types or {})
    return summary


FIRST_CHUNK = 256  # rows: the first output (a progress bar, `| head`) comes within seconds, not a chunk's time


def _small_first(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The first chunk split after FIRST_CHUNK rows; the same cut on every run (resume relies on it)."""
    it = iter(batches)
    for first in it:
        if first.num_rows > FIRST_CHUNK:
            yield first.slice(0, FIRST_CHUNK)
            yield first.slice(FIRST_CHUNK)
        else:
            yield first
        break
    yield from it


def _start(thread: threading.Thread) -> None:
    """Start a thread with SIGINT/SIGTERM held back meanwhile: a Ctrl-C that raises in the middle of
    Thread.start() leaves threading's bookkeeping half done ("Exception ignored in thread started
    by ... KeyError" at exit). The signal is delivered right after, and the thread never takes it."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        thread.start()
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
    _start(thread)
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
        _start(self.thread)
        return self

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue  # after an error, drain: a put() on the main thread must never wait on a dead writer
            try:
                self.writer.write(*item)
            except BaseException as e:  # noqa: BLE001 - raised on the main thread
                self.error = e

    def check(self) -> None:
        """Raise the error of a write that failed (on the writer's thread) since."""
        if self.error is not None:
            raise self.error

    def submit(self, batch: pa.RecordBatch, stats: dict[str, Any] | None = None) -> None:
        self.check()
        while True:
            try:
                self.q.put((batch, stats), timeout=0.1)
                return
            except queue.Full:
                self.check()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.error = self.error or OutputError("stopped")
            while self.thread.is_alive():  # the writer drains the queue, so _DONE gets in
                try:
                    self.q.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self.thread.join(timeout=5)  # let a write in progress end before the file is dropped
            return
        self.q.put(_DONE)
        while self.thread.is_alive():
            self.thread.join(timeout=0.1)
        self.check()


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
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 or a checked bf16 on the CPU (inference.resolve_precision)
    threads: int | None = None  # CPU threads for the model; None: all cores
    encoding: str = "utf-8"  # of CSV / JSON Lines / lines input
    on_error: str = "fail"  # a malformed row: "fail", or "skip" it and report its line
    delimiter: str | None = None  # of CSV input; None: a tab for .tsv, else a comma
    detect_types: bool = False  # CSV input: numbers, booleans, ISO dates typed where exact (else every column is text)
    text_columns: tuple[str, ...] = ()  # with detect_types: columns kept as text (ids, codes)
    empty_null: bool = False  # CSV input: an empty cell is null (else "")
    min_score: float | None = None  # rows whose top probability is lower get no label, status "uncertain";
    # a multi-label model: the score a label must reach (labels.MULTI_LABEL_THRESHOLD when None)
    # What is written (selection.Selection reads these): the defaults write what tag always wrote
    columns: tuple[str, ...] | None = None  # input columns written, in this order; None: all of them
    probabilities: bool = True  # {prefix}_<label>: one probability per label
    score: bool = True  # {prefix}_score: the chosen label's probability
    top_k: int = 0  # {prefix}_top1 .. _topK with their _score: the K best labels, best first; 0: none
    limit: int | None = None  # label only the first N rows (a quick try on a big file)
    overwrite: bool = False  # replace an existing output file
    resume: bool = False  # continue an interrupted run from its committed chunks
    parquet_compression: str | None = None  # the codec inside a Parquet output; None: zstd (config)

    # Fields that cannot change a labelled row: kept out of the --resume fingerprint.
    NOT_OUTPUT: ClassVar[dict[str, str]] = {
        "model": "fingerprinted by content (every file of the folder), not by its path",
        "threads": "the same numbers on any thread count",
        "overwrite": "only whether an existing file may be replaced",
        "resume": "only whether committed progress is used",
        "parquet_compression": "the same rows, encoded otherwise: applied when the committed rows are copied "
                               "into the file, so a resumed run writes every row with the codec it is given",
    }

    def __post_init__(self) -> None:
        from emolabel.detect import delimiter

        for name in ("columns", "text_columns"):  # lists of names are kept as tuples (frozen: set once, here)
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.delimiter, str):  # `\\t` and `tab` are a tab: one place reads them
            object.__setattr__(self, "delimiter", delimiter(self.delimiter))

    def resolve(self, device_type: str) -> TagOptions:
        """The read chunk's default for the device filled in (the Labeler fills in its own batch
        defaults; tag_file takes them from it for the fingerprint)."""
        return dataclasses.replace(self, chunk_rows=self.chunk_rows or (65536 if device_type == "cuda" else 8192))

    @classmethod
    def checked(cls, **fields: Any) -> TagOptions:
        """These options (the rest at their defaults), checked: every entry point that takes some
        of them (tag_file, label_frame, Labeler, predict) checks them here, with the same words."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in fields if k not in names]
        if unknown:
            import difflib

            near = [m for k in unknown for m in difflib.get_close_matches(k, names, n=1)]
            hint = f" Did you mean {', '.join(f'`{m}`' for m in near)}?" if near else ""
            raise TypeError(f"Unknown option(s) {', '.join(f'`{k}`' for k in unknown)}.{hint} The options: "
                            f"{', '.join(names)}.")
        options = cls(**fields)
        options.check()
        return options

    def check(self) -> None:
        """Values no run can use (the Labeler checks the model's own: `max_tokens` >= its length,
        and resolve_device / resolve_precision the device's)."""
        from emolabel.errors import OptionError

        self._check_types()
        if self.max_length is not None and self.max_length < 2:
            raise OptionError("`max_length` must be at least 2 (room for [CLS] and [SEP]).")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"`limit` must be at least 1, not {self.limit}.")
        if not self.prefix or not self.prefix.strip():
            raise OptionError("`prefix` cannot be empty: the new columns would be named '', '_score', ...")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise OptionError(f"`min_score` must be between 0 and 1, not {self.min_score}.")
        if self.top_k < 0:
            raise OptionError(f"`top_k` must be 0 (none) or more, not {self.top_k}.")
        for name in ("chunk_rows", "batch_size", "max_tokens", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OptionError(f"`{name}` must be at least 1, not {getattr(self, name)}.")
        from emolabel import formats
        from emolabel.config import PARQUET_COMPRESSIONS

        if self.input_format is not None:
            formats.for_reading(self.input_format)  # an unknown or write-only format names the readable ones
        if self.output_format is not None:
            formats.for_writing(self.output_format)
        if self.parquet_compression not in (None, *PARQUET_COMPRESSIONS):
            raise OptionError(f"Unknown `parquet_compression` {self.parquet_compression!r}: use "
                              f"{', '.join(PARQUET_COMPRESSIONS)}.")
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in "\"\r\n"):
            raise OptionError(f"`delimiter` must be one character (not a quote or a line break), not {self.delimiter!r}.")
        if self.on_error not in ("fail", "skip"):
            raise OptionError(f"Unknown `on_error` {self.on_error!r}: use fail or skip.")
        if self.text_columns and not self.detect_types:
            raise OptionError("`text_columns` only applies with `detect_types` (without it every column is text).")

    def _check_types(self) -> None:
        """Each field of the type its annotation names (a number for a float, a path for `model`):
        a TypeError naming the option, not a comparison failing deep inside a run."""
        import numbers
        import os
        import typing

        kinds = {int: ("an int", numbers.Integral), float: ("a number", numbers.Real), bool: ("True or False", bool),
                 str: ("a str", str)}
        hints = typing.get_type_hints(type(self))
        for name in (f.name for f in dataclasses.fields(self)):
            value, hint = getattr(self, name), hints[name]
            allowed = (hint,) if typing.get_origin(hint) is tuple else typing.get_args(hint) or (hint,)
            if value is None and type(None) in allowed:
                continue
            base = next(t for t in allowed if t is not type(None))
            if typing.get_origin(base) is tuple:  # a tuple of names
                if not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                    none = " or None" if type(None) in allowed else ""
                    raise TypeError(f"`{name}` must be a list of column names (e.g. ['id', 'text']){none}, not "
                                    f"{type(value).__name__} {value!r}.")
                continue
            what, cls = kinds[base]
            if name == "model":
                what, cls = "a folder path (str or Path)", (str, os.PathLike)
            if not isinstance(value, cls) or base is not bool and isinstance(value, bool):
                none = " or None" if type(None) in allowed else ""
                got = "None" if value is None else f"{type(value).__name__} {value!r}"
                raise TypeError(f"`{name}` must be {what}{none}, not {got}.")

    def check_input(self, fmt: Any) -> None:
        """CSV's reading options given for another input format would do nothing: refused."""
        csv_only = [f"`{n}`" for n in ("delimiter", "detect_types", "empty_null", "text_columns") if getattr(self, n)]
        if csv_only and fmt.name != "csv":
            from emolabel.errors import OptionError

            raise OptionError(f"{', '.join(csv_only)} only apply to CSV input, and the input is {fmt.name}.")

    def check_output(self, fmt: Any) -> None:
        """Parquet's writing option given for another output format would do nothing: refused."""
        if self.parquet_compression is not None and fmt.name != "parquet":
            from emolabel import formats, sinks
            from emolabel.errors import OptionError

            whole = formats.titles(tuple(f.name for f in formats.REGISTRY.values() if f.compressions))
            raise OptionError(f"`parquet_compression` only applies to Parquet output, and the output is {fmt.name} "
                              f"(a {' or '.join(sinks.COMPRESSIONS)} name compresses {whole}).")

    def write_options(self, input_format: Any) -> Any:
        """outputs.WriteOptions for a run from `input_format`."""
        from emolabel.outputs import WriteOptions

        return WriteOptions.for_run(input_format, self.parquet_compression)

    def read_options(self, json_out: bool = False, reserved: tuple[str, ...] = ()) -> dict[str, Any]:
        """inputs.open_input / open_stream's options for this run: `json_out` when JSON Lines are
        written (JSON Lines input is then kept as read, unless `columns` picks keys: those are written
        from the typed table, as for Parquet), `reserved` the columns the run adds."""
        return dict(encoding=self.encoding, on_error=self.on_error, delimiter=self.delimiter,
                    detect_types=self.detect_types, empty_null=self.empty_null, text_column=self.text_column,
                    text_columns=self.text_columns, keep_json=json_out and self.columns is None, reserved=reserved)

    def output_options(self) -> dict[str, Any]:
        """The fields that change the output: what --resume must find unchanged (as JSON keeps
        them: a tuple of columns is a list)."""
        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self.NOT_OUTPUT}


def as_paths(input: Any, output: Any) -> tuple[list[str], str]:
    """tag_file's `input` (a path or '-', or a list of them) and `output` (a path or '-'), each a
    str or a Path, as str; anything else is a TypeError naming the argument."""
    import os

    def path(value: Any, name: str) -> str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a path (a str or Path, '-' for std{'in' if name == 'input' else 'out'}"
                            f"{', or a list of them' if name == 'input' else ''}), not {type(value).__name__} {value!r}.")
        return value

    many = not isinstance(input, str | os.PathLike) and isinstance(input, list | tuple)
    return [path(p, "input") for p in input] if many else [path(input, "input")], path(output, "output")


def tag_file(input: str | list[str], output: str, options: TagOptions | None = None, progress: Any = None) -> Summary:
    """Label every row of `input` (a path, '-' for stdin, or several paths or globs read one after
    another, with a `{prefix}_source` column naming each row's file) into `output` (a path, or '-').

    A file-to-file run commits its progress chunk by chunk beside the output, so an interrupted
    run continues with resume=True; nothing appears at `output` until every row is written.
    `progress`, if given, has start(total_rows or None, rows_already_done, total_bytes or None)
    and advance(rows, bytes_read or None): bytes for CSV and JSON Lines files, whose row count is
    not known up front.
    """
    from emolabel import checkpoint, formats, outputs
    from emolabel.classifier import spec
    from emolabel.config import default_model_dir
    from emolabel.errors import OptionError
    from emolabel.files import STDIO, expand_inputs, is_regular_file
    from emolabel.inference import resolve_device
    from emolabel.inputs import open_inputs

    started = time.perf_counter()
    input, output = as_paths(input, output)
    opts = options or TagOptions()
    opts.check()
    output = outputs.resolve_output(output)
    inputs = expand_inputs(input)
    in_fmt = formats.format_of(inputs, opts.input_format)
    out_fmt = outputs.output_format(output, opts.output_format)  # None: stdout, in the input's format
    if out_fmt is not None:
        opts.check_output(out_fmt)
    # Progress can be committed and resumed only between regular files: a pipe or FIFO given as a
    # path cannot be read twice (fingerprinting it would steal rows from the reader).
    checkpointed = not outputs.is_stream(output) and all(p != STDIO and is_regular_file(p) for p in inputs)
    if opts.resume and not checkpointed:
        raise OptionError("`resume` needs an input file and an output file (not stdin/stdout, a pipe or a FIFO).")
    for path in inputs:
        outputs.check_output(output, path, opts.overwrite)
    if output == STDIO and sys.stdout is not None and sys.stdout.isatty() and out_fmt is formats.PARQUET:
        raise OptionError("Refusing to write Parquet to a terminal; write to a file.")

    dev = resolve_device(opts.device)
    opts = opts.resolve(dev.type)
    source = f"{opts.prefix}_source" if len(inputs) > 1 else None
    folder = Path(opts.model) if opts.model else default_model_dir()
    model = spec(folder)  # emolabel's own folder or a transformers classifier
    selection = Selection.of(opts, model.labels, model.multi_label)
    added = (*selection.added(), *([source] if source else []))
    reader = open_inputs(inputs, in_fmt, source_column=source, chunk_rows=opts.chunk_rows,
                         **opts.read_options(out_fmt in (None, formats.JSONL), added))
    writer: Any = None
    try:
        if out_fmt is None:  # stdout: the input's format unless told (lines in: CSV out)
            out_fmt = reader.format if reader.format.writable else formats.CSV
            if sys.stdout is not None and sys.stdout.isatty() and out_fmt is formats.PARQUET:
                raise OptionError("Refusing to write Parquet to a terminal; give another `output_format`.")
        opts.check_input(reader.format)
        opts.check_output(out_fmt)
        written = opts.write_options(reader.format)
        check_text_column(reader.schema, reader.name, opts.text_column)  # before the model loads: fail fast
        schema = check_columns(reader.schema, reader.name, opts.text_column, selection, warn=False,
                               always=(source,) if source else ())
        outputs.check_writable(schema, out_fmt, output)
        if out_fmt is formats.CSV and len(schema) == 1:
            raise OptionError(f"A CSV of the {schema.names[0]!r} column alone would write each row without text as a "
                              "blank line, which CSV readers skip; keep an input column (`columns`), or write "
                              "Parquet or JSON Lines.")
        labeler = Labeler(folder, device=opts.device, precision=opts.precision, batch_size=opts.batch_size,
                          max_tokens=opts.max_tokens, max_length=opts.max_length, threads=opts.threads)
        done = None
        if checkpointed:
            resolved = dataclasses.replace(opts, max_length=labeler.max_length, precision=labeler.precision,
                                           device=labeler.device.type, batch_size=labeler.batch_size,
                                           max_tokens=labeler.max_tokens, input_format=reader.format.name,
                                           output_format=out_fmt.name)
            writer = checkpoint.CheckpointWriter(output, out_fmt, schema,
                                                 checkpoint.fingerprint(inputs[0] if len(inputs) == 1 else inputs, folder,
                                                                       resolved.output_options()),
                                                 opts.resume, overwrite=opts.overwrite, options=written)
            done = writer.stats if writer.rows_done else None
        else:
            writer = outputs.Writer(output, out_fmt, schema, overwrite=opts.overwrite, options=written)
        advance = None
        if progress is not None:
            total = reader.total_rows if opts.limit is None else min(reader.total_rows or opts.limit, opts.limit)
            by_bytes = reader.bytes_read if total is None else None
            progress.start(total, done["rows"] if done else 0, reader.total_bytes if by_bytes else None)

            def advance(rows: int) -> None:
                progress.advance(rows, _safe(by_bytes) if by_bytes else None)

        startup = time.perf_counter() - started
        summary = tag(reader, writer, labeler, opts.text_column, selection, schema, advance, resume_from=done,
                      limit=opts.limit)
        writer.commit()
        writer = None
        summary.output, summary.startup = output, startup
        summary.seconds = time.perf_counter() - started
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


def _safe(position: Callable[[], int]) -> int | None:
    """A reader's byte position read from another thread: None if the file just closed."""
    try:
        return position()
    except (OSError, ValueError):
        return None
