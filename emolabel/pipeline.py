"""The local engine's loop: read -> prepare (tokenize) -> model -> label columns -> write, overlapped
in threads; and label_chunk, the one labelling step of every engine.

Reading and tokenizing run in a background thread, the model on the calling thread, and
writing in another background thread, so on a GPU the card is not idle while Python parses
CSV or compresses Parquet. Every input row comes out, in input order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa

from emolabel.columns import as_text
from emolabel.config import available_cpus
from emolabel.errors import OutputError
from emolabel.inference import Labeler, Prepared, release_free_memory
from emolabel.inputs import Reader
from emolabel.language import count_non_english
from emolabel.outputs import Writer  # or checkpoint.CheckpointWriter: the same write()/commit()
from emolabel.selection import Selection
from emolabel.summary import Summary

T = TypeVar("T")
_DONE = object()


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



def label_stream(
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

    `schema`: the output schema from check_columns (the plan checked the columns before any work),
    of the columns `selection` writes.
    `resume_from`: the counts of rows an interrupted run already committed (a CheckpointWriter's
    stats); that many input rows are skipped, a whole chunk at a time.
    """
    if workers is None:  # on a GPU the CPU side is the bottleneck; on the CPU the model is
        workers = max(1, min(4, available_cpus() // 4)) if labeler.device.type == "cuda" else 1
    summary = Summary.from_stats(resume_from) if resume_from else Summary()
    summary.resumed = skip = summary.rows
    start = time.perf_counter()

    def prepare(texts: pa.Array) -> tuple[Prepared, int]:
        return labeler.prepare(texts), count_non_english(texts)

    def prepared() -> Iterator[tuple[pa.RecordBatch, tuple[Prepared, int]]]:
        # Several chunks are normalized, tokenized and checked for their language at once (pyarrow
        # and the Rust tokenizer release the GIL); results are taken in input order.
        with ThreadPoolExecutor(workers, thread_name_prefix="emolabel-prepare") as pool:
            pending: deque = deque()
            row = skip
            for batch in _unread(reader, skip, limit):
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


def _unread(reader: Reader, skip: int, limit: int | None) -> Iterator[pa.RecordBatch]:
    """The chunks to label: the first `limit` rows only (the rest is never read), less the `skip`
    rows an interrupted run committed (whole chunks: the cut is the same on every run)."""
    seen, left = 0, skip
    for batch in _small_first(reader):
        if limit is not None:
            if seen >= limit:
                return
            batch = batch.slice(0, limit - seen)
        seen += batch.num_rows
        if left >= batch.num_rows:  # committed by the interrupted run
            left -= batch.num_rows
            continue
        if left:
            raise OutputError("The saved progress does not end on a chunk boundary of this input; "
                              "delete the .emolabel-resume folder and start over.")
        yield batch


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

