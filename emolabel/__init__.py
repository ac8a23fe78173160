"""emolabel: label the emotion of text in bulk with a BERT encoder and a custom head.

The public API is import-light: torch loads only when a model does.

    >>> import emolabel
    >>> labeler = emolabel.load()            # the shipped model, on the best device
    >>> labeler.predict(["i feel wonderful today"])
    ['joy']
    >>> labeler.predict_proba(["i feel wonderful today"])   # (n, 6) float32, labeler.labels order
    >>> emolabel.tag_file("posts.csv", "posts.parquet", text_column="body")  # what `emolabel tag` does
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from emolabel.inference import Labeler
    from emolabel.pipeline import Summary, TagOptions


def load(model_dir: str | None = None, device: str = "auto", precision: str = "auto", **kwargs: Any) -> Labeler:
    """Load a model folder (default: the shipped model) as a Labeler."""
    from emolabel.config import default_model_dir
    from emolabel.inference import Labeler

    return Labeler(model_dir or default_model_dir(), device=device, precision=precision, **kwargs)


def tag_file(input: str, output: str, options: TagOptions | None = None, progress: Any = None,
             **fields: Any) -> Summary:
    """Label every row of the file `input` into the file `output` (or '-' for stdin/stdout), as
    `emolabel tag` does: same formats, resume and atomic output. Options are a TagOptions or its
    fields as keywords (text_column="body", model="weights/my-model", resume=True, ...)."""
    import dataclasses

    from emolabel.pipeline import TagOptions
    from emolabel.pipeline import tag_file as run

    opts = dataclasses.replace(options or TagOptions(), **fields)
    return run(input, output, opts, progress=progress)


__all__ = ["__version__", "load", "tag_file"]
