"""ProgressBar: what the CLI's progress displays share (tag's, finetune's, eval's): on only when
stderr is a terminal and not --quiet, a context manager that stops its Rich display on the way out."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """The base of a Rich progress display on `console` (stderr); `_progress` is set when it starts."""

    def __init__(self, console: Any, quiet: bool = False):
        self.console = console
        self.on = not quiet and console.is_terminal
        self._progress: Any = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Take the display off the terminal (it is transient); again is nothing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
