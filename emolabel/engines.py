"""The engine seam: what runs a tag job, and how one is chosen.

An engine executes a plan.TagPlan (every check made, every default resolved) and returns a
Summary:

* `local` (local_engine.LocalEngine): this process: rows in input order, resume, stdin/stdout.
* `ray` (ray_engine.RayEngine): a Ray Data actor pool over many files or an object store, into a
  folder of part files.

Both read with inputs.open_stream, label with pipeline.label_chunk and the plan's Labeler, write
with outputs.TableWriter and count with Summary.add. An option an engine cannot honour is in its
`unsupported` map with the reason, and plan.make_plan refuses it (OptionError: exit 2 on the
command line) before any work starts: nothing is silently dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from emolabel.config import ENGINES
from emolabel.errors import OptionError

if TYPE_CHECKING:
    from emolabel.options import TagOptions
    from emolabel.plan import TagPlan
    from emolabel.summary import Summary


class Engine(Protocol):
    name: ClassVar[str]
    unsupported: ClassVar[dict[str, str]]  # TagOptions fields it cannot honour -> why
    writes_folder: ClassVar[bool]  # a folder of part files (plan._folder_plan), else a file or stdout

    def check_settings(self) -> None: ...  # its own settings (OptionError)

    def execute(self, plan: TagPlan, progress: Any = None) -> Summary: ...


def make(name: str, **settings: Any) -> Engine:
    """The engine called `name`; `settings` are its own (Ray: workers, cpus_per_worker, ...), and
    None means "not given"."""
    given = {k: v for k, v in settings.items() if v is not None}
    if name == "local":
        if given:
            raise OptionError(f"{', '.join(f'`{k}`' for k in given)} only apply with `engine` ray.")
        from emolabel.local_engine import LocalEngine

        return LocalEngine()
    if name == "ray":
        from emolabel.ray_engine import RayEngine

        return RayEngine(**given)
    raise OptionError(f"Unknown `engine` {name!r}: use {', '.join(ENGINES)}.")


def refuse_unsupported(engine: Engine, options: TagOptions) -> None:
    """Refuse the options `engine` cannot honour (given with another value than the default)."""
    from emolabel.options import TagOptions

    default = TagOptions()
    used = [f"`{k}` ({why})" for k, why in engine.unsupported.items() if getattr(options, k) != getattr(default, k)]
    if used:
        raise OptionError(f"{'; '.join(used)}: not possible with `engine` {engine.name}. Leave "
                          f"{'it' if len(used) == 1 else 'them'} out, or use the local engine.")
