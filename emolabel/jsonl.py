"""JSON Lines in and out: objects kept as read, or typed over the whole file; one serializer.

Two ways to read, chosen by what is written (TagOptions.read_options, for both engines):

* As read (`keep_json`, JSON Lines to JSON Lines): each object's text is kept in a hidden RAW
  column beside the text column, and the writer splices the added columns into it, so numbers keep
  their JSON form, absent keys stay absent and key order is the input's. Nothing is typed.
* Typed (to Parquet or CSV, and for finetune/eval): one schema for the whole input, whatever the
  chunk size. A file that can be opened again (`reopen`) is read twice: the first pass types every
  key over every line. A stream is typed from its first TYPE_LINES lines, and a later value that
  does not fit (a new key, an int in a text column, 1.5 in an int column) is refused, naming the
  line and key.

Typing: bools, ints (int64), floats (ints and floats together: float64, when every int is exact
as a float), text, lists and objects (their types unified); a key with values of several kinds,
or ints past int64, is text, each value as its JSON text ("1", "true", "[1, 2]"): no value is
rounded or changed without a word.
"""

from __future__ import annotations

import codecs
import io
import json
import warnings
from collections.abc import Callable, Iterator
from itertools import islice
from typing import IO, Any

import pyarrow as pa

from emolabel import formats
from emolabel.errors import EmolabelWarning, InputError, InputOptionError
from emolabel.inputs import Reader, _bounded_lines, _decode_or_fail, _lines

RAW = "\x00emolabel-json\x00"  # a row's object as read; columns before it are views of it, after it are added
TYPE_LINES = 50_000  # a stream's types come from this many lines (a constant: never from --chunk-rows)
EMPTY_KEY = "\x00emolabel-empty-key\x00"  # polars renames a column "" to column_0: written under this, then put back
_INT64 = (-(2**63), 2**63 - 1)
_EXACT = 2**53  # an int with a larger magnitude is not exact as a float64


def read_jsonl(name: str, stream: IO[bytes], *, chunk_rows: int, encoding: str, on_error: str,
               keep_json: bool = False, text_column: str | None = None, reserved: tuple[str, ...] = (),
               reopen: Callable[[], IO[bytes]] | None = None, **_: Any) -> Reader:
    """formats.JSONL's reader (see the module docstring; CSV's options are not its own); `reserved`:
    keys the run adds (refused in a row as read), `reopen`: a fresh stream of the same bytes, to
    type a file over all its lines."""
    skipped: list[int] = []
    objects = _objects(_bounded_lines(stream, name), name, encoding, on_error, skipped, keep_json)
    if keep_json:
        return _as_read(name, objects, skipped, chunk_rows, text_column or "text", frozenset(reserved))
    typing_skipped = skipped
    if reopen is not None:
        typing_skipped = []  # the second pass, which labels, reports them
        with reopen() as again:
            columns = _infer(_objects(_bounded_lines(again, name), name, encoding, on_error, typing_skipped, False))
        head: list[tuple[int, dict, str]] = []
    else:
        head = list(islice(objects, TYPE_LINES))
        columns = _infer(iter(head))
    if not columns:
        _empty(name, typing_skipped)
    schema = pa.schema([pa.field(k, c.arrow_type()) for k, c in columns.items()])
    typed_to = head[-1][0] if head else 0  # a stream's later lines are checked (a file's fit by construction)

    def batches() -> Iterator[pa.RecordBatch]:
        for chunk in _chunks(_chain(head, objects), chunk_rows):
            if reopen is None and chunk[-1][0] > typed_to:
                _check_fits(name, [item for item in chunk if item[0] > typed_to], columns)
            yield _to_batch(name, chunk, schema, columns)

    return Reader(name, formats.JSONL, schema, None, batches(), skipped)


def _as_read(name: str, objects: Iterator[tuple[int, dict, str]], skipped: list[int], chunk_rows: int,
             text_column: str, reserved: frozenset[str]) -> Reader:
    """Rows as read: the text column (for the model) and each object's text (RAW, for the writer)."""
    head = list(islice(objects, TYPE_LINES))
    if not head:
        _empty(name, skipped)
    keys = list(dict.fromkeys(k for _, obj, _ in head for k in obj))
    if text_column not in keys:
        import difflib

        near = difflib.get_close_matches(text_column, keys, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise InputError(f"Column {text_column!r} not found in {name} (the keys of its first {len(head):,} "
                         f"lines).{hint} Available columns: {', '.join(keys)}. Use `text_column` to choose.")
    schema = pa.schema([pa.field(text_column, pa.string()), pa.field(RAW, pa.string())])
    warned: list[bool] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for chunk in _chunks(_chain(head, objects), chunk_rows):
            texts, raws = [], []
            for lineno, obj, text in chunk:
                if reserved and not reserved.isdisjoint(obj):
                    raise InputOptionError(f"{name}, line {lineno} already has key(s) "
                                     f"{', '.join(sorted(reserved.intersection(obj)))}, which tag would add. Use "
                                     "`prefix` to name the new columns differently (e.g. `prefix` predicted).")
                value = obj.get(text_column)
                if value is not None and not isinstance(value, str):
                    if not warned:
                        warned.append(True)
                        warnings.warn(EmolabelWarning(
                            f"{name}, line {lineno}: {text_column!r} holds {type(value).__name__} {value!r}, not "
                            "text: such values are labelled as their JSON text."), stacklevel=2)
                    value = json.dumps(value, ensure_ascii=False)
                texts.append(value)
                raws.append(text)
            yield pa.RecordBatch.from_arrays([pa.array(texts, pa.string()), pa.array(raws, pa.string())],
                                             schema=schema)

    reader = Reader(name, formats.JSONL, schema, None, batches(), skipped)
    reader.keys = keys
    return reader


def _empty(name: str, skipped: list[int]) -> None:
    if not skipped:
        raise InputError(f"{name} is empty: expected JSON Lines, one object per line.")
    raise InputError(f"{name}: no line could be read (skipped lines {_lines(skipped)}).")


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _objects(lines: Iterator[tuple[int, bytes]], name: str, encoding: str, on_error: str, skipped: list[int],
             keep_json: bool) -> Iterator[tuple[int, dict, str]]:
    """(line number, object, its text) for each line that holds an object; blank lines are no rows.
    Kept as read, NaN and Infinity (not JSON) are written as null, with a warning."""
    constants: list[str] = []
    hook = constants.append if keep_json else None
    warned = False
    for lineno, raw in lines:
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if not raw.strip():
            continue
        try:
            text = _decode_or_fail(raw, encoding, name, f"line {lineno}").strip()
            obj = json.loads(text, parse_constant=hook) if hook else json.loads(text)
            _check_object(obj, raw, name, lineno)
        except (json.JSONDecodeError, InputError) as e:
            if on_error == "skip":
                skipped.append(lineno)
                continue
            if isinstance(e, InputError):
                raise
            raise InputError(f"{name}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                             "Fix the line, or pass `on_error` skip to leave broken lines out.") from None
        if constants:  # NaN or Infinity in this line (said once a file)
            if not warned:
                warned = True
                warnings.warn(EmolabelWarning(
                    f"{name}, line {lineno} holds NaN or Infinity ({constants[0]}), which JSON cannot: written as "
                    "null (such lines are written again from their values). Write Parquet or CSV to keep them."),
                    stacklevel=2)
            constants.clear()
            text = json.dumps(json.loads(text, parse_constant=lambda _: None), ensure_ascii=False)
        yield lineno, obj, text


def _check_object(obj: Any, raw: bytes, name: str, lineno: int) -> None:
    if b"\\ud" in raw.lower():  # maybe a lone surrogate: half a character, which UTF-8 cannot hold
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{name}, line {lineno}: a \\uD800-\\uDFFF escape is half of a character pair (a lone "
                             "surrogate), which text cannot hold. Fix the escape, or pass `on_error` skip to leave "
                             "such lines out.") from None
    if not isinstance(obj, dict):
        raise InputError(f"{name}, line {lineno}: expected a JSON object per line, found a {type(obj).__name__}. "
                         "emolabel reads JSON Lines: one {...} object on each line.")


# ---------------------------------------------------------------------------------------------
# Typing


class _Column:
    """What one key holds, over the lines seen: kinds of values, the range of its ints, the arrow
    type of its lists or objects."""

    __slots__ = ("kinds", "lo", "hi", "nested", "pending")

    def __init__(self) -> None:
        self.kinds: set[type] = set()
        self.lo, self.hi = 0, 0
        self.nested: pa.DataType | None | bool = None  # False: lists/objects that no one type holds
        self.pending: list[Any] = []

    def add(self, value: Any) -> None:
        kind = type(value)
        self.kinds.add(kind)
        if kind is int:
            self.lo, self.hi = min(self.lo, value), max(self.hi, value)
        elif kind is list or kind is dict:
            self.pending.append(value)
            if len(self.pending) >= 4096:
                self.flush()

    def flush(self) -> None:
        if self.pending and self.nested is not False:
            try:
                self.nested = _unify(self.nested, pa.array(self.pending).type)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                self.nested = False
        self.pending = []

    def text(self) -> bool:
        """Values of several kinds (or ints past int64, or past 2**53 beside floats): their JSON text."""
        self.flush()
        kinds = self.kinds - {type(None)}
        if kinds <= {bool} or kinds == {str}:
            return False
        if kinds == {int}:
            return not (_INT64[0] <= self.lo and self.hi <= _INT64[1])
        if kinds <= {int, float}:
            return int in kinds and not (-_EXACT <= self.lo and self.hi <= _EXACT)
        return not (kinds in ({list}, {dict}) and self.nested)

    def arrow_type(self) -> pa.DataType:
        kinds = self.kinds - {type(None)}
        if self.text() or not kinds or kinds == {str}:
            return pa.string()
        if kinds == {bool}:
            return pa.bool_()
        if kinds == {int}:
            return pa.int64()
        if kinds <= {int, float}:
            return pa.float64()
        assert isinstance(self.nested, pa.DataType)
        return self.nested


def _unify(a: pa.DataType | None, b: pa.DataType) -> pa.DataType:
    if a is None or a == b:
        return b
    return pa.unify_schemas([pa.schema([("v", a)]), pa.schema([("v", b)])], promote_options="permissive").field(0).type


def _infer(objects: Iterator[tuple[int, dict, str]]) -> dict[str, _Column]:
    """Each key's _Column over `objects`, keys in the order first seen; absent is null."""
    columns: dict[str, _Column] = {}
    for _, obj, _ in objects:
        for k, v in obj.items():
            col = columns.get(k)
            if col is None:
                col = columns[k] = _Column()
            col.add(v)
    return columns


def _to_batch(name: str, chunk: list[tuple[int, dict, str]], schema: pa.Schema, columns: dict[str, _Column]) -> pa.RecordBatch:
    arrays = []
    for f in schema:
        values = [obj.get(f.name) for _, obj, _ in chunk]
        if columns[f.name].text():
            values = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
        try:
            arrays.append(pa.array(values, f.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:  # the file changed between passes
            raise InputError(f"{name}: key {f.name!r} does not fit its type {f.type} ({e}); did the file change "
                             "while it was read?") from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _check_fits(name: str, chunk: list[tuple[int, dict, str]], columns: dict[str, _Column]) -> None:
    """A stream's later lines against the types of its first TYPE_LINES lines: the first value
    that does not fit is an error naming its line and key."""
    for lineno, obj, _ in chunk:
        for k, v in obj.items():
            col = columns.get(k)
            if col is None:
                raise InputError(f"{name}, line {lineno}: key {k!r} first appears here, after the first "
                                 f"{TYPE_LINES:,} lines, which set the columns of a stream. {_FIX}")
            if v is None or col.text():
                continue
            one = _Column()
            one.add(v)
            typ = col.arrow_type()
            inexact = type(v) is int and pa.types.is_floating(typ) and abs(v) > _EXACT
            if one.text() or inexact or typ != _unify_or_none(typ, one.arrow_type()):
                shown = json.dumps(v, ensure_ascii=False)
                raise InputError(f"{name}, line {lineno}: key {k!r} holds {shown[:60]}, which does not fit its "
                                 f"type {_kind(col)} (from the first {TYPE_LINES:,} lines of a stream). {_FIX}")


_FIX = ("A stream cannot be read twice to type it: give the file's path instead of stdin (a file is typed over "
        "all its lines), write JSON Lines (kept as read), or make the key one type (quote values to keep text).")


def _unify_or_none(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_floating(a) and pa.types.is_integer(b):
        return a  # an int exact as a float (text() said so) fits a float column
    try:
        return _unify(a, b)
    except (pa.ArrowException, TypeError, ValueError):
        return None


def _kind(col: _Column) -> str:
    kinds = col.kinds - {type(None)}
    return "text (null in every line)" if not kinds else str(col.arrow_type())


# ---------------------------------------------------------------------------------------------
# Writing


class JsonLinesWriter:
    """Record batches as JSON Lines bytes: rows read as read get the added columns spliced into
    their own text; other rows are polars' JSON Lines (integers with nulls stay integers), with
    timestamps in one ISO 8601 form (a T, and the offset where there is a time zone), a key ""
    kept as "", and a warning where JSON cannot hold a value (NaN, Infinity: null)."""

    def __init__(self) -> None:
        self._warned = False

    def dumps(self, batch: pa.RecordBatch | pa.Table) -> bytes:
        names = batch.schema.names
        if RAW not in names:
            return self._polars(batch)
        at = names.index(RAW)
        added = self._polars(batch.select(range(at + 1, len(names)))).decode("utf-8").split("\n")
        out = []
        for obj, extra in zip(batch.column(at).to_pylist(), added):
            head = obj[:-1].rstrip()  # the object without its closing brace
            out.append(f"{head}{'' if head.endswith('{') else ','}{extra[1:]}")
        out.append("")
        return "\n".join(out).encode("utf-8")

    def _polars(self, batch: pa.RecordBatch | pa.Table) -> bytes:
        import polars as pl

        self._warn_not_finite(batch)
        empty = "" in batch.schema.names
        if empty:
            batch = batch.rename_columns([EMPTY_KEY if n == "" else n for n in batch.schema.names])
        frame = pl.from_arrow(batch)
        naive = [n for n, t in frame.schema.items() if isinstance(t, pl.Datetime) and t.time_zone is None]
        if naive:  # polars writes "2024-01-05 12:00:00" without a zone and "...T12:00:00+01:00" with one
            frame = frame.with_columns(pl.col(n).cast(pl.String).str.replace(" ", "T", literal=True, n=1)
                                       for n in naive)
        buf = io.BytesIO()
        frame.write_ndjson(buf)  # type: ignore[union-attr]
        data = buf.getvalue()
        if empty:  # only a key is followed by ':' right after its closing quote, so values are untouched
            data = data.replace(b'"\\u0000emolabel-empty-key\\u0000":', b'"":')
        return data

    def _warn_not_finite(self, batch: pa.RecordBatch | pa.Table) -> None:
        import pyarrow.compute as pc

        if self._warned:
            return
        odd = [f.name for f, col in zip(batch.schema, batch.columns) if pa.types.is_floating(f.type)
               and pc.any(pc.invert(pc.is_finite(col))).as_py()]
        if odd:
            self._warned = True
            warnings.warn(EmolabelWarning(
                f"column(s) {', '.join(map(repr, odd))} hold NaN or Infinity, which JSON cannot: written as "
                "null. Write Parquet or CSV to keep them."), stacklevel=3)
