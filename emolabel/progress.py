"""What the CLI's live displays share: ProgressBar (tag's, finetune's, eval's progress: on only
when stderr is a terminal and not --quiet, stopped on the way out) and warnings_shown (the
library's warnings as one line each, in the CLI's words)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def warnings_shown(console: Any, flags: dict[str, str] | None = None) -> Iterator[None]:
    """The library's EmolabelWarnings as one yellow line each on `console`, in the CLI's words
    (`flags`: the command's option names that are not a field's name with dashes)."""
    import warnings

    from rich.markup import escape

    from emolabel.errors import EmolabelWarning, cli_words

    def show(message: Any, *args: Any, **kwargs: Any) -> None:  # a label may hold [brackets]: not markup
        console.print(f"[yellow]Warning[/]: {escape(cli_words(str(message), flags))}", soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", EmolabelWarning)
        warnings.showwarning = show
        yield


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
