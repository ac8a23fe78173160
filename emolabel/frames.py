"""label_frame: `tag`'s label columns added to a Polars or pandas DataFrame or a pyarrow Table in memory.

The same checks (options.TagOptions, columns.check_columns, as_text) and the same columns
(selection.Selection) as a tag run, without a file: the frame's text column is labelled in
chunks and a new frame of the same kind comes back. Texts that look non-English are counted in
a warning (EmolabelWarning), as a tag run counts them in its summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from emolabel.classifier import spec
from emolabel.columns import as_text, check_columns
from emolabel.config import default_model_dir
from emolabel.errors import EmolabelWarning, InputError, OptionError
from emolabel.inference import Labeler, text_array
from emolabel.labels import DEFAULT_PREFIX, label_columns
from emolabel.language import count_non_english
from emolabel.options import TagOptions
from emolabel.selection import Selection


def label_frame(frame: Any, text_column: str = "text", model: str | None = None, min_score: float | None = None,
                prefix: str | None = None, labeler: Labeler | None = None, *, columns: list[str] | None = None,
                probabilities: bool = True, score: bool = True, top_k: int = 0, chunk_rows: int = 8192) -> Any:
    """A Polars or pandas DataFrame (or pyarrow Table) with `tag`'s label columns added after its
    own: a new frame of the same kind, rows in order (the input is not changed). Pass `labeler`
    (from load()) to reuse a loaded model; else the `model` folder (None: the shipped model) is
    loaded once the frame and the options are checked. `prefix` None is `tag`'s ("emotion").
    `columns`, `probabilities`, `score`, `top_k`: which columns come back, as `tag`'s options of
    those names. Texts that look non-English are counted in an EmolabelWarning."""
    prefix = DEFAULT_PREFIX if prefix is None else prefix
    opts = TagOptions.checked(text_column=text_column, prefix=prefix, min_score=min_score, chunk_rows=chunk_rows,
                              model=model, columns=columns, probabilities=probabilities, score=score, top_k=top_k)
    if labeler is not None and not isinstance(labeler, Labeler):
        raise TypeError(f"`labeler` must be a Labeler (from emolabel.load()), not {type(labeler).__name__}.")
    if labeler is not None and model is not None:
        raise OptionError("Give `labeler` or `model`, not both: a labeler's model is already loaded.")
    module, names, texts = _frame_texts(frame, text_column)
    folder = Path(model) if model else default_model_dir()
    sel = Selection.of(opts, labeler.labels if labeler is not None else spec(folder).labels)
    schema = pa.schema([pa.field(n, texts.type if n == text_column and texts is not None else pa.null())
                        for n in names])
    check_columns(schema, "the frame", text_column, sel, file=False)
    assert texts is not None  # check_columns refused a missing column
    texts = as_text(texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts, "the frame", text_column)
    _warn_non_english(count_non_english(texts), len(texts))
    labeler = labeler or Labeler(folder)
    parts = [label_columns(labeler.run(labeler.prepare(texts.slice(i, chunk_rows))), labeler.labels, prefix,
                           min_score, labeler.multi_label, **sel.which()) for i in range(0, len(texts), chunk_rows)] or [
        label_columns(labeler.run(labeler.prepare(texts)), labeler.labels, prefix, min_score, labeler.multi_label, **sel.which())]
    added = pa.table({name: pa.chunked_array([part[name] for part in parts]) for name in parts[0]})
    return _with_columns(frame, module, sel.columns, added)


def _with_columns(frame: Any, module: str, columns: tuple[str, ...] | None, added: pa.Table) -> Any:
    """`frame` (only `columns`, in their order, if given) with the `added` columns after its own."""
    if module == "polars":
        import polars as pl

        kept = frame if columns is None else frame.select(list(columns))
        return kept.hstack(pl.from_arrow(added).get_columns())
    if module == "pandas":
        new = added.to_pandas()
        new.index = frame.index
        kept = frame if columns is None else frame[list(columns)]
        return kept.assign(**{name: new[name] for name in added.column_names})
    out = frame if columns is None else frame.select(list(columns))
    for name in added.column_names:
        out = out.append_column(name, added.column(name))
    return out


def _warn_non_english(count: int, rows: int) -> None:
    """The run summary's line about other languages, for a frame (which has no summary)."""
    if count:
        import warnings

        warnings.warn(EmolabelWarning(f"{count:,} of {rows:,} texts look non-English; labels there are unreliable "
                                      "(the model knows English only)."), stacklevel=4)


def _frame_texts(frame: Any, text_column: str) -> tuple[str, list[str], pa.Array | pa.ChunkedArray | None]:
    """The kind of `frame` (polars, pandas, pyarrow), its column names and its text column (None
    if it has none); anything else, or a text column named twice, is refused."""
    module, kind = type(frame).__module__.split(".")[0], type(frame).__name__
    if module == "polars" and kind == "LazyFrame":
        raise TypeError("label_frame takes a DataFrame, not a polars LazyFrame: pass frame.collect().")
    if module in ("polars", "pandas") and kind == "Series":
        raise TypeError(f"label_frame takes a DataFrame, not a {module} Series: pass series.to_frame('text'), or "
                        "labeler.predict(series.to_list()) for the labels alone.")
    if isinstance(frame, pa.Table):
        names = frame.column_names
    elif module in ("polars", "pandas") and kind == "DataFrame":
        names = [str(c) for c in frame.columns]
    else:
        raise TypeError(f"label_frame takes a Polars or pandas DataFrame or a pyarrow Table, not {kind}.")
    if names.count(text_column) > 1:
        raise InputError(f"The frame has {names.count(text_column)} columns named {text_column!r}: rename them "
                         "apart, or choose another `text_column`.")
    if text_column not in names:
        return module, names, None
    if isinstance(frame, pa.Table):
        return "pyarrow", names, frame.column(text_column)
    if module == "polars":
        return module, names, frame.get_column(text_column).to_arrow()
    column = frame[text_column]
    try:
        return module, names, pa.array(column, from_pandas=True)  # numbers too: labelled as their text
    except (pa.ArrowTypeError, pa.ArrowInvalid, UnicodeEncodeError):  # mixed: the first odd row, named
        return module, names, text_array(column.to_list(), lambda i: f"Column {text_column!r} of the frame, row "
                                         f"{i + 1} (index {column.index.tolist()[i]!r}),", from_pandas=True)
