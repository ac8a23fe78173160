"""Every touch of Ray's internals, in one place (Ray 2.60). Imported only by ray_engine, inside
functions, so `import emolabel` never needs Ray.

Each piece says what it relies on and why; when Ray is upgraded, this module is what to re-check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
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


def start(ray: Any, ray_address: str | None, num_cpus: int, signals: Signals) -> bool:
    """Start or join Ray unless this process already did; True if started here. A SIGINT or
    SIGTERM meanwhile is acted on once ray.init has returned (Signals.through_init)."""
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
    try:
        with signals.through_init(ray):
            ray.init(**kwargs)
        signals.check()
    except BaseException as e:
        with contextlib.suppress(Exception):  # what a half-done or interrupted start left running
            ray.shutdown()
        signals.check()
        if not isinstance(e, Exception):
            raise
        where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
        raise EmolabelError(f"Cannot start or join {where}: {e}") from None
    return True


class Signals:
    """SIGINT and SIGTERM stay the caller's while Ray runs in this process: the CLI's handlers
    raise an exception that ends in exit 130/143 and one line, after the cleanup.

    Ray 2.60's ray.init takes SIGTERM over twice: in Python (`sys.exit(15)`, and the head node's
    kill-and-`sys.exit(1)`, both set through `ray._private.utils.set_sigterm_handler`) and in C++
    (making `ray._raylet.CoreWorker` sets absl's failure-signal handler, which prints a stack dump
    before it passes the signal on; ray.shutdown() then leaves SIGTERM at SIG_DFL). And Ray
    catches `Exception` in places (Ray Data re-raises it from a `SystemException`; start-up code
    logs it and carries on), which the CLI's exception is. So, in the main thread (the only one
    where Python runs handlers, and may set them):

    * each handler is wrapped to remember what it raised (`raised`); check() raises it again
      wherever Ray may have caught it, so the caller gets it back and not a job failure;
    * through_init(): Ray's Python SIGTERM handlers are not set where the caller has a handler of
      its own, and a first signal waits until ray.init returns (a second acts at once), so that
      ray.shutdown() finds a whole Ray to stop (an interrupted start left Ray's agents running);
    * right after the CoreWorker is made, after ray.init and on exit the handlers are set again,
      which puts Python's C-level handler back in front of absl's for SIGINT and SIGTERM (the
      other fatal signals keep absl's). A SIGTERM while the CoreWorker is being made (about a
      second) still meets absl's first: its dump is printed, then it is handled as any other.

    Where the caller has no handler (SIG_DFL), Ray's own is kept, wrapped. On exit the caller's
    handlers are put back, unless its handler replaced itself meanwhile (the CLI's ignores a second
    signal while it cleans up).

    Ctrl-C reaches only the driver (Ray's processes block SIGINT). A SIGTERM to the whole process
    group or cgroup also stops Ray's raylet, and the driver's Ray core then may end the process at
    once (exit 1, "connection to the plasma store is failed") before the cleanup: a race. After
    that, or a kill -9, Ray's processes stop by themselves (fate sharing; its agents within about
    a minute) and the next run to the same output removes the temporary folder.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.saved: dict[int, Any] = {s: signal.getsignal(s) for s in self.SIGNALS} if self.active else {}
        self.raised: BaseException | None = None
        self.pending: int | None = None  # a signal that came during ray.init
        self.mine: list[Callable[[int, Any], Any]] = []  # the wrappers set here

    def __enter__(self) -> Signals:
        self._install()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, saved in self.saved.items():
            now = signal.getsignal(s)
            handler = saved if now in self.mine else now
            if handler is not None:
                signal.signal(s, handler)

    def check(self) -> None:
        """Act on a signal held back during ray.init; raise again what a handler raised."""
        if self.pending is not None and self.raised is None:
            signum, self.pending = self.pending, None
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)
        if self.raised is not None:
            raise self.raised

    @contextlib.contextmanager
    def through_init(self, ray: Any) -> Iterator[None]:
        """ray.init with the caller's handlers holding a first signal back (see the class)."""
        if not self.active:
            yield
            return
        own = [s for s, h in self.saved.items() if callable(h)]

        def core_worker(*args: Any, **kwargs: Any) -> Any:
            worker = make_core_worker(*args, **kwargs)  # its C++ side has just set absl's handler
            for s in own:
                signal.signal(s, signal.getsignal(s))  # Python's C-level handler in front again
            return worker

        raylet = getattr(ray, "_raylet", None)
        utils = getattr(getattr(ray, "_private", None), "utils", None)
        make_core_worker = getattr(raylet, "CoreWorker", None)
        patches = [(raylet, "CoreWorker", core_worker)] if make_core_worker else []
        if signal.SIGTERM in own and hasattr(utils, "set_sigterm_handler"):  # Ray's would exit 15 or 1
            patches.append((utils, "set_sigterm_handler", lambda handler: None))
        for s in own:
            signal.signal(s, self._held(self.saved[s]))
        with contextlib.ExitStack() as stack:
            for obj, name, value in patches:
                stack.enter_context(_replaced(obj, name, value))
            stack.callback(self._install)
            yield

    def _install(self) -> None:
        """The caller's handlers, wrapped (unless its handler has put another in place, which is
        kept); where it has none (SIG_DFL), whatever Ray put there, wrapped."""
        for s, saved in self.saved.items():
            now = signal.getsignal(s)
            if callable(saved):
                handler = self._relay(saved) if now is saved or now in self.mine else now
            elif saved == signal.SIG_IGN:
                handler = saved
            else:
                handler = self._relay(now) if callable(now) and now not in self.mine else now
            if handler is not None:
                signal.signal(s, handler)

    def _relay(self, handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        def on_signal(signum: int, frame: Any) -> Any:
            try:
                return handler(signum, frame)
            except BaseException as e:
                self.raised = e
                raise

        self.mine.append(on_signal)
        return on_signal

    def _held(self, handler: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        relay = self._relay(handler)

        def on_signal(signum: int, frame: Any) -> Any:
            if self.pending is None:
                self.pending = signum
                return None
            return relay(signum, frame)

        self.mine.append(on_signal)
        return on_signal


@contextlib.contextmanager
def _replaced(obj: Any, name: str, value: Any) -> Iterator[None]:
    """`obj.name` is `value` inside the block (a Ray internal, only while ray.init runs)."""
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


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
