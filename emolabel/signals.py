"""SIGINT and SIGTERM as an exception on the main thread: every command (tag, eval, Ray jobs)
stops the same way, cleans up, and exits 128 + the signal's number."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop, clean up, exit 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into an Interrupted exception on the main thread."""

    def later(signum: int, frame: Any) -> None:
        pass  # a second Ctrl-C while the first one cleans up: the clean-up finishes (no traceback)

    def handler(signum: int, frame: Any) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, later)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
