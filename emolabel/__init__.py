"""emolabel: label the emotion of text in bulk with a BERT encoder and a custom head.

The public API is import-light: torch loads only when a model does.

    >>> import emolabel
    >>> labeler = emolabel.load()            # the shipped model, on the best device
    >>> labeler.predict(["i feel wonderful today"])
    ['joy']
    >>> labeler.predict_proba(["i feel wonderful today"])   # (n, 6) float32, labeler.labels order
    >>> emolabel.tag_file("posts.csv", "posts.parquet", text_column="body")  # what `emolabel tag` does
    >>> emolabel.label_frame(df, text_column="body")  # a Polars/pandas frame with the label columns
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# How long torch's OpenMP threads (GNU libgomp) spin at a barrier before they sleep. The CPU forward
# runs many short parallel steps (fixed tiles: emolabel/invariant.py), and libgomp's default
# (300,000 spins) made a thread spin through its whole time slice waiting for one the scheduler had
# put aside: two `emolabel tag` runs side by side took 34 s each for what one does in 3.5 s alone.
# 1,000 keeps the speed alone (3.5 s) and 6.5 s for two side by side (bench/contention.py). Read when
# libgomp loads, so set before torch is imported; a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

if TYPE_CHECKING:
    from emolabel.inference import Labeler
    from emolabel.options import TagOptions
    from emolabel.summary import Summary


def load(model_dir: str | None = None, device: str = "auto", precision: str = "auto", **kwargs: Any) -> Labeler:
    """Load a model folder (default: the shipped model) as a Labeler."""
    from emolabel.config import default_model_dir
    from emolabel.inference import Labeler

    return Labeler(model_dir or default_model_dir(), device=device, precision=precision, **kwargs)


def tag_file(input: str | list[str], output: str, options: TagOptions | None = None, progress: Any = None,
             engine: Any = "local", **fields: Any) -> Summary:
    """Label every row of `input` (a file, '-' for stdin, or several files or globs, read in order
    with a `{prefix}_source` column naming each row's file) into `output` (a file or '-'): the one
    way to tag a file, and what `emolabel tag` calls. Same formats, resume and atomic output.
    Options are a TagOptions or its fields as keywords (text_column="body",
    model="weights/my-model", resume=True, ...). `engine`: "local", "ray", or an engine such as
    emolabel.ray_engine.RayEngine(workers=4) (then `output` is a folder of part files).
    `progress`, if given, has start(total_rows or None, rows_already_done, total_bytes or None)
    and advance(rows, bytes_read or None). Raises EmolabelError (OptionError for a misused
    option) for anything the user can fix, before any work where it can be known then."""
    import dataclasses

    from emolabel import engines
    from emolabel.options import TagOptions
    from emolabel.plan import make_plan

    if options is not None and not isinstance(options, TagOptions):
        raise TypeError(f"`options` must be a TagOptions, not {type(options).__name__}; or give its fields as keywords.")
    base = options or TagOptions()
    opts = TagOptions.checked(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)} | fields)
    runner = engines.make(engine) if isinstance(engine, str) else engine
    with make_plan(input, output, opts, runner) as plan:
        return runner.execute(plan, progress)


def __getattr__(name: str) -> Any:
    """label_frame is frames.label_frame itself, imported when first used (it loads pyarrow and torch)."""
    if name == "label_frame":
        from emolabel.frames import label_frame

        return label_frame
    raise AttributeError(f"module 'emolabel' has no attribute {name!r}")


__all__ = ["__version__", "label_frame", "load", "tag_file"]
