"""Ray's start (signals left to the caller) and every touch of Ray's internals, in one place
(Ray 2.60). Imported only by ray_engine, inside functions, so `import emolabel` never needs Ray.

Each piece says what it relies on and why; when Ray is upgraded, this module is what to re-check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from emolabel.errors import EmolabelError

RAY_MISSING = "The Ray engine needs Ray: pip install 'emolabel[ray]'"
# Read, split and write tasks reserve no CPU: the actors may hold every CPU of a node, and a task
# waiting for a CPU then starves the whole job (ray-project/ray#44687, measured here: 2 actors of
# 1 CPU on 2 CPUs hung). Their concurrency is capped instead, and parsing is light next to the model.
READ_WRITE_CPUS = 0


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EmolabelError(RAY_MISSING) from None
    return ray


def is_local(ray_address: str | None) -> bool:
    """A new Ray of this machine only (not a cluster to join)."""
    return ray_address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def start(ray: Any, ray_address: str | None, num_cpus: int) -> bool:
    """Start or join Ray unless this process already did; True if started here. ray.init runs in a
    helper thread while this one waits, so a signal's exception is raised here (see signals_kept)."""
    if ray.is_initialized():
        return False
    local = is_local(ray_address)
    if local:  # Ray 2.60 turns on token auth for new clusters; a private local one needs none
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(address=ray_address, include_dashboard=False, log_to_driver=False,
                                  logging_level=logging.WARNING, configure_logging=True)
    if local:
        kwargs["num_cpus"] = num_cpus
    done, failed = threading.Event(), []

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failed.append(e)
        done.set()
        # Ray's processes get SIGKILL when the thread that started them ends (PR_SET_PDEATHSIG)
        while ray.is_initialized():
            time.sleep(0.5)

    worker_log = logging.getLogger("ray._private.worker")
    worker_log.addFilter(_off_main_thread_note)
    try:
        threading.Thread(target=init, name="emolabel-ray-init", daemon=True).start()
        done.wait()
    except BaseException:  # a signal: let ray.init finish, so that ray.shutdown() stops all it started
        done.wait()
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
    finally:
        worker_log.removeFilter(_off_main_thread_note)
        _rearm()  # ray.init's core worker put its C++ SIGTERM handler (a stack dump) in front of Python's
    if failed:
        with contextlib.suppress(Exception):  # what a half-done start left running
            ray.shutdown()
        where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
        raise EmolabelError(f"Cannot start or join {where}: {failed[0]}") from None
    return True


@contextlib.contextmanager
def signals_kept() -> Iterator[None]:
    """SIGINT and SIGTERM stay with the caller's handlers while Ray starts, runs and stops here
    (the CLI's raise emolabel.signals.Interrupted: exit 130/143 after the cleanup; Python's
    defaults: KeyboardInterrupt, and SIGTERM ends the process uncleaned). Public API only:
    ray.init runs in a helper thread (start), so Ray sets no Python handler and a signal's
    exception is raised in the waiting main thread, not in Ray's start-up code (which catches
    Exception); setting each handler again after ray.init and here on exit removes Ray's C++
    SIGTERM handler (a stack dump) and the SIG_DFL that ray.shutdown() leaves.

    Accepted differences (a private patch could avoid them): a SIGTERM in the second between Ray's
    core worker starting and ray.init returning prints Ray's stack dump before it is handled; an
    exception from a handler that Ray's code catches during the job is lost (the job finishes); a
    handler raising an Exception other than Interrupted reads as a failed job. A SIGTERM to the
    whole process group also stops Ray's raylet, which may end the driver at once (exit 1): a race.
    Then, or after a kill -9, Ray's processes stop by themselves (fate sharing, within about a
    minute) and the next run to the same output removes the temporary folder.
    """
    try:
        yield
    finally:
        _rearm()


def _rearm() -> None:
    """Each SIGINT/SIGTERM handler set again (main thread only): Python's C handler back in front."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(s)
        if handler is not None:
            signal.signal(s, handler)


def _off_main_thread_note(record: logging.LogRecord) -> bool:
    """Not Ray's warning that ray.init, off the main thread, sets no SIGTERM handler: the point here."""
    return not record.getMessage().startswith("SIGTERM handler is not set")


def check_fits(ray: Any, workers: int, cpus: float, gpus: float) -> None:
    """The smallest pool fits this machine's Ray (else the job would wait forever for resources)."""
    have = ray.cluster_resources()
    for what, each in (("CPU", cpus), ("GPU", gpus)):
        if each and workers * each > have.get(what, 0):
            raise EmolabelError(f"{workers} worker(s) x {each:g} {what}(s) each need more than the "
                                f"{have.get(what, 0):g} {what}(s) of this machine; use fewer workers "
                                f"or fewer {what}s per worker.")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No Ray Data progress bars or start-up lines, and no tracebacks on the console: Ray 2.60
    logs every task failure in full on stderr, where the EmolabelError raised says it once,
    plainly (Ray's session log under /tmp/ray/session_latest/logs/ray-data/ keeps everything)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, getattr(ctx, "print_on_execution_start", None))
    ctx.enable_progress_bars = False
    if saved[1] is not None:
        ctx.print_on_execution_start = False
    console = [h for h in logging.getLogger("ray.data").handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in console]
    for h in console:
        h.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ctx.enable_progress_bars = saved[0]
        if saved[1] is not None:
            ctx.print_on_execution_start = saved[1]
        for h, level in zip(console, levels):
            h.setLevel(level)


def zero_cpu(ds: Any) -> None:
    """Let the last logical operator (the streaming repartition) run without reserving a CPU.

    `repartition()` has no resource arguments and its tasks ask for 1 CPU; with actors holding
    every CPU they would never start and the job would hang (ray-project/ray#44687). Ray 2.60
    keeps the task options in the operator's `ray_remote_args` dict (`ds._logical_plan.dag`).
    """
    op = ds._logical_plan.dag
    args = getattr(op, "ray_remote_args", None)
    if isinstance(args, dict):
        args["num_cpus"] = READ_WRITE_CPUS


def files_datasource(paths: list[str], read: Callable[[Any, str], Iterator[pa.Table]], parquet: bool) -> Any:
    """A FileBasedDatasource (Ray's documented way to add a file format) whose `_read_stream`
    calls `read(file, path)` once per file, from its first byte, in one task.

    Private touch: `_open_input_source` is overridden so that Parquet gets a random-access file
    (its footer is at the end); Ray 2.60 opens every file as a forward-only stream.
    """
    from ray.data.datasource import FileBasedDatasource

    class Files(FileBasedDatasource):
        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            if parquet:
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            yield from read(f, path)

    return Files(paths, file_extensions=None)


def parts_sink(path: str, extension: str, write: Callable[[pa.Table, Any], None],
               count: Callable[[pa.Table], tuple[pa.Table, dict]]) -> Any:
    """A BlockBasedFileDatasink that writes each task's rows to one part file with `write(table,
    file)`, after `count(table)` took its counts (and any internal columns) off. Every successful
    task's counts come back in `results` (Ray 2.60: `Datasink.write`'s return values reach the
    driver's sink object in `on_write_complete`), so nothing re-reads the parts to count them."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import BlockBasedFileDatasink

    class Parts(BlockBasedFileDatasink):
        results: list[dict] = []

        def write(self, blocks: Any, ctx: Any) -> list[dict]:
            kept, stats = [], []
            for block in blocks:
                table, counts = count(BlockAccessor.for_block(block).to_arrow())
                kept.append(table)
                stats.append(counts)
            super().write(kept, ctx)
            return stats

        def write_block_to_file(self, block: Any, file: Any) -> None:
            write(block.to_arrow(), file)

        def on_write_complete(self, write_result: Any) -> None:
            super().on_write_complete(write_result)
            self.results = [s for task in write_result.write_returns if task for s in task]

    return Parts(path, file_format=extension)


def emolabel_error(exc: BaseException) -> EmolabelError | None:
    """Our error inside a Ray exception (RayTaskError's `cause`, exception chains), as a plain
    emolabel error: same class, our message without the retry note Ray 2.60 appends to it."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    found: EmolabelError | None = None
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EmolabelError):
            found = found or e
            if type(e).__module__ == EmolabelError.__module__:  # not Ray's RayTaskError(InputError)
                found = e
                break
        stack += [e.__context__, e.__cause__, getattr(e, "cause", None)]
    if found is None:
        return None
    cls = next(c for c in type(found).__mro__ if c.__module__ == EmolabelError.__module__)
    msg = str(found.args[0]) if found.args else str(found)
    return cls(re.sub(r"\nFailed to .*? after \d+/\d+ attempts.*", "", msg, flags=re.S))
