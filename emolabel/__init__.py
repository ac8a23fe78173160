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


def tag_file(input: str | list[str], output: str, options: TagOptions | None = None, progress: Any = None,
             engine: Any = "local", **fields: Any) -> Summary:
    """Label every row of `input` (a file, '-' for stdin, or several files or globs) into `output`
    (a file or '-'), as `emolabel tag` does: same formats, resume and atomic output. Options are a
    TagOptions or its fields as keywords (text_column="body", model="weights/my-model",
    resume=True, ...). `engine`: "local", "ray", or an engine such as
    emolabel.ray_engine.RayEngine(workers=4) (then `output` is a folder of part files)."""
    import dataclasses

    from emolabel import engines
    from emolabel.pipeline import TagOptions

    if options is not None and not isinstance(options, TagOptions):
        raise TypeError(f"`options` must be a TagOptions, not {type(options).__name__}; or give its fields as keywords.")
    base = options or TagOptions()
    opts = TagOptions.checked(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)} | fields)
    return engines.run(engines.make(engine) if isinstance(engine, str) else engine, input, output, opts, progress)


def label_frame(frame: Any, text_column: str = "text", model: str | None = None, min_score: float | None = None,
                prefix: str | None = None, labeler: Labeler | None = None, *, columns: list[str] | None = None,
                probabilities: bool = True, score: bool = True, top_k: int = 0) -> Any:
    """A Polars or pandas DataFrame (or pyarrow Table) with `tag`'s label columns added: a new
    frame of the same kind, rows in order. Pass `labeler` (from load()) to reuse a loaded model;
    `prefix` None is `tag`'s ("emotion"). `columns`, `probabilities`, `score`, `top_k`: which
    columns come back, as `tag`'s options of those names. Texts that look non-English are
    counted in an EmolabelWarning."""
    from emolabel.frames import label_frame as run
    from emolabel.labels import DEFAULT_PREFIX

    return run(frame, labeler, text_column, DEFAULT_PREFIX if prefix is None else prefix, min_score, model=model,
               columns=columns, probabilities=probabilities, score=score, top_k=top_k)


__all__ = ["__version__", "label_frame", "load", "tag_file"]
