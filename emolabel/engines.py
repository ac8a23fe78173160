"""The engine seam: what runs a tag job.

An engine takes input paths, an output and a TagOptions, and returns a Summary:

* `local` (LocalEngine): this process, pipeline.tag_file: rows in input order, resume, stdin/stdout.
* `ray` (ray_engine.RayEngine): a Ray Data actor pool over many files or an object store, into a
  folder of part files.

Both read with inputs.open_stream, check columns with pipeline.check_columns, label with
pipeline.label_chunk, write with outputs.TableWriter and count with Summary.add. An option an
engine cannot honour is in its `unsupported` map with the reason, and run() refuses it
(OptionError: exit 2 on the command line) before any work starts: nothing is silently dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

from emolabel.config import ENGINES
from emolabel.errors import OptionError
from emolabel.pipeline import Summary, TagOptions, as_paths


class Engine(Protocol):
    name: ClassVar[str]
    unsupported: ClassVar[dict[str, str]]  # TagOptions fields it cannot honour -> why

    def run(self, inputs: list[str], output: str, options: TagOptions, progress: Any = None) -> Summary: ...


@dataclasses.dataclass(frozen=True)
class LocalEngine:
    """This process: rows in input order, resume, stdin and stdout (pipeline.tag_file)."""

    name: ClassVar[str] = "local"
    unsupported: ClassVar[dict[str, str]] = {}

    def run(self, inputs: list[str], output: str, options: TagOptions, progress: Any = None) -> Summary:
        from emolabel.pipeline import tag_file

        return tag_file(inputs, output, options, progress)


def make(name: str, **settings: Any) -> Engine:
    """The engine called `name`; `settings` are its own (Ray: workers, cpus_per_worker, ...), and
    None means "not given"."""
    given = {k: v for k, v in settings.items() if v is not None}
    if name == "local":
        if given:
            raise OptionError(f"{', '.join(f'`{k}`' for k in given)} only apply with `engine` ray.")
        return LocalEngine()
    if name == "ray":
        from emolabel.ray_engine import RayEngine

        return RayEngine(**given)
    raise OptionError(f"Unknown `engine` {name!r}: use {', '.join(ENGINES)}.")


def check(engine: Engine, options: TagOptions) -> None:
    """Refuse the options `engine` cannot honour (given with another value than the default)."""
    default = TagOptions()
    used = [f"`{k}` ({why})" for k, why in engine.unsupported.items() if getattr(options, k) != getattr(default, k)]
    if used:
        raise OptionError(f"{'; '.join(used)}: not possible with `engine` {engine.name}. Leave "
                          f"{'it' if len(used) == 1 else 'them'} out, or use the local engine.")


def run(engine: Engine, inputs: str | list[str], output: str, options: TagOptions | None = None,
        progress: Any = None) -> Summary:
    """Check the options against the engine, then run it (`inputs`, `output`: str or Path)."""
    paths, output = as_paths(inputs, output)
    options = options or TagOptions()
    check(engine, options)
    return engine.run(paths, output, options, progress)
