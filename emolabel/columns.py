"""The column checks of a run, before any work: the text column exists and holds text, the added
columns do not clash with kept ones (a wrong `text_column` or `prefix` is an
InputOptionError: a usage error); and a bytes text column read as UTF-8, naming the bad row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from emolabel.errors import InputError, InputOptionError
from emolabel.selection import Selection


def check_text_column(schema: pa.Schema, name: str, text_column: str, warn: bool = True, file: bool = True) -> None:
    """The text column exists in `schema` of input `name` (else the nearest names are offered, and
    for a `file` the reading options that may be wrong) and holds text (numbers are labelled as
    their text, with a warning unless `warn` is off)."""
    import difflib

    names = schema.names
    if text_column not in names:
        near = [n for n in names if n.lower() == text_column.lower()]
        near += [n for n in difflib.get_close_matches(text_column, names, n=3, cutoff=0.6) if n not in near]
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        if len(names) == 1 and file:
            sep = next((c for c in ";\t|," if c in names[0]), None)
            if sep:
                hint = (f" The header is one column, {names[0]!r}: if the file is separated by {sep!r}, pass "
                        f"`delimiter` {sep!r}.")
            elif not near:
                hint = " If the input is plain text, one text per line with no header, use `input_format` lines."
        raise InputOptionError(
            f"Column {text_column!r} not found in {name}.{hint} Available columns: "
            f"{', '.join(names)}. Use `text_column` to choose."
        )
    typ = schema.field(text_column).type
    if pa.types.is_nested(typ):
        raise InputOptionError(f"Column {text_column!r} of {name} holds {typ} values, not text. Use `text_column` to choose "
                         f"a text column ({', '.join(f.name for f in schema if pa.types.is_string(f.type)) or 'none'}).")
    if warn and not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
                     or pa.types.is_null(typ)):
        import warnings

        from emolabel.errors import EmolabelWarning

        text_like = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        binary = "binary" in str(typ)
        how = "read as UTF-8 text" if binary else 'labelled as their text ("42")'
        warnings.warn(EmolabelWarning(
            f"column {text_column!r} of {name} holds {typ} values, not text: they are {how}. "
            f"Text columns: {', '.join(text_like) or 'none'}; use `text_column` to choose."),
            stacklevel=2)


def as_text(texts: pa.Array, name: str, text_column: str, first_row: int | None = 0) -> pa.Array:
    """A bytes column as UTF-8 text (other columns as they are: prepare() reads numbers as their
    text); bytes that are not UTF-8 are an error naming the row (1-based, `first_row` rows before
    these; None where that is not known: Ray's blocks)."""
    if not (pa.types.is_binary(texts.type) or pa.types.is_large_binary(texts.type)
            or pa.types.is_binary_view(texts.type) or pa.types.is_fixed_size_binary(texts.type)):
        return texts
    try:
        return pc.cast(texts, pa.string())
    except pa.ArrowInvalid:
        bad = next(i for i, v in enumerate(texts.to_pylist()) if v is not None and not _utf8(v))
        where = f"{name}, row {first_row + bad + 1:,}" if first_row is not None else name
        raise InputError(f"{where}: column {text_column!r} holds bytes that are not "
                         "UTF-8 text. Decode the column first (from its real encoding), or choose another "
                         "`text_column`.") from None


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_columns(schema: pa.Schema, name: str, text_column: str, selection: Selection,
                  added: tuple[str, ...] = (), warn: bool = True, file: bool = True,
                  always: tuple[str, ...] = ()) -> pa.Schema:
    """Fail before any work if the text column or a `columns` entry is missing or a new column
    would clash with a kept one; returns the output schema. `added`: columns an engine adds
    besides the labels (Ray's row id); `always`: input columns kept whatever `columns` says."""
    check_text_column(schema, name, text_column, warn, file)
    kept = selection.kept(schema.names, name, always)
    clash = [c for c in [*selection.added(), *added] if c in kept]
    if clash:
        raise InputOptionError(
            f"{name} already has column(s) {', '.join(clash)}, which tag would add. "
            "Use `prefix` to name the new columns differently (e.g. `prefix` predicted), or leave "
            "the old ones out with `columns`."
        )
    return selection.output_schema(schema, name, always)
