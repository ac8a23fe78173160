"""Reading choices told from the input or its options: CSV column types (`detect_types`), delimiter
names, and text encodings that are not ASCII-compatible (UTF-16/32, read as UTF-8).

Types: every CSV column is read as text, and with `detect_types` a column gets a type only if each
value of its first TYPE_ROWS rows is held by it exactly (its text is that type's form of the
value): `007`, `+5`, `0x1F`, a 20-digit id or `1.00000000000000001` keep the column text, 0/1 stay
numbers (only true/false are booleans). A later value that does not fit the column's type is an
error naming its row and column, never a changed value.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from emolabel.errors import InputError

TYPE_ROWS = 50_000  # a CSV column's type comes from this many rows (a constant: never from --chunk-rows)

# --------------------------------------------------------------------------------------------
# Delimiters

DELIMITER_NAMES = {"\\t": "\t", "tab": "\t"}  # `--delimiter '\t'` (the shell passes backslash-t) and `tab`


def delimiter(value: str | None) -> str | None:
    """A delimiter as given, with its names (`\\t`, `tab`) read as the character."""
    return DELIMITER_NAMES.get(value.lower() if value.lower() == "tab" else value, value) if value else value


# --------------------------------------------------------------------------------------------
# Encodings


def ascii_compatible(encoding: str) -> bool:
    """Whether line breaks, quotes and braces are their ASCII bytes (UTF-8, Latin-1, cp1252: the
    readers split lines on bytes); UTF-16 and UTF-32 are not, and are read through utf8_stream."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InputError(f"Unknown `encoding` {encoding!r}.") from None
    probe = '\n\r",;{}:'
    try:
        return codecs.encode(probe, encoding) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        return False


class _Utf8(io.RawIOBase):
    """A byte stream in `encoding` handed out as UTF-8, without a leading BOM; bytes that are not
    `encoding` are an error naming the line."""

    def __init__(self, raw: IO[bytes], encoding: str, name: str):
        self._raw, self._encoding, self._name = raw, encoding, name
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._buf = b""
        self._eof = self._started = False
        self._lines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._eof:
            data = self._raw.read(1 << 16)
            try:
                text = self._decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                line = self._lines + data[: max(e.start, 0)].decode(self._encoding, "ignore").count("\n") + 1
                raise InputError(f"{self._name}, line {line}: the bytes are not valid {self._encoding}. Check "
                                 "the file's encoding and pass it as `encoding`.") from None
            if text and not self._started:
                self._started, text = True, text.removeprefix("\ufeff")
            self._lines += text.count("\n")
            self._buf, self._eof = text.encode("utf-8", "surrogatepass"), not data
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        super().close()
        self._raw.close()


def utf8_stream(raw: IO[bytes], encoding: str, name: str) -> IO[bytes]:
    """`raw` (UTF-16, UTF-32, ... with or without a BOM) as a buffered UTF-8 stream."""
    return io.BufferedReader(_Utf8(raw, encoding, name), 1 << 20)


# --------------------------------------------------------------------------------------------
# CSV column types

_INT = r"^(0|-?[1-9][0-9]*)$"
_FLOAT = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_STAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
_ZONE = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"
_UNITS = ((0, "s"), (3, "ms"), (6, "us"), (9, "ns"))


def _fits(col: pa.Array, typ: pa.DataType) -> pa.Array:
    """Per value, whether `typ` holds it exactly (nulls fit)."""
    if pa.types.is_boolean(typ):
        ok = pc.is_in(col, pa.array(["true", "false", "True", "False", "TRUE", "FALSE"]))
    elif pa.types.is_integer(typ):
        ok = pc.and_(pc.match_substring_regex(col, _INT), pc.less_equal(pc.utf8_length(col), 19))
        ok = pc.and_(ok, pc.invert(_overflows(col, ok)))
    elif pa.types.is_floating(typ):
        ok = pc.match_substring_regex(col, _FLOAT)
        long = pc.and_(ok, pc.greater(pc.count_substring_regex(col, "[0-9]"), 15)).to_pylist()
        if any(long):  # over 15 significant digits: exact only if the float gives them back
            exact = [not x or _exact_float(v) for x, v in zip(long, col.to_pylist())]
            ok = pc.and_(ok, pa.array(exact))
    elif pa.types.is_date(typ):
        ok = pc.match_substring_regex(col, _DATE)
    else:
        digits = {"s": 0, "ms": 3, "us": 6, "ns": 9}[typ.unit]
        frac = r"" if digits == 0 else rf"(\.[0-9]{{1,{digits}}})?"
        zone = _ZONE if typ.tz else "$"
        ok = pc.match_substring_regex(col, _STAMP + frac + zone)
    return pc.or_(pc.is_null(col), pc.fill_null(ok, False))


def _overflows(col: pa.Array, ok: pa.Array) -> pa.Array:
    """19-digit values past int64 (the regex lets them through)."""
    big = pc.and_(ok, pc.equal(pc.utf8_length(pc.ascii_ltrim(col, "-")), 19)).to_pylist()
    if not any(big):
        return pa.array([False] * len(col), pa.bool_())
    values = col.to_pylist()
    return pa.array([bool(b) and not -(2**63) <= int(v) < 2**63 for b, v in zip(big, values)], pa.bool_())


def _exact_float(text: str) -> bool:
    try:
        return Decimal(repr(float(text))) == Decimal(text)
    except (InvalidOperation, ValueError, OverflowError):
        return False


def _candidates(col: pa.Array) -> list[pa.DataType]:
    """The types to try for a column, narrowest first."""
    found = [pa.bool_(), pa.int64(), pa.float64(), pa.date32()]
    frac = pc.max(pc.utf8_length(pc.extract_regex(col, r"\.(?P<f>[0-9]+)").field("f"))).as_py() or 0
    unit = next(u for d, u in _UNITS if frac <= d) if frac <= 9 else "ns"
    return [*found, pa.timestamp(unit), pa.timestamp(unit, "UTC")]


def infer(col: pa.Array) -> pa.DataType:
    """The narrowest type that holds every value of `col` exactly (text if none)."""
    if col.null_count == len(col):
        return pa.string()
    for typ in _candidates(col):
        if pc.all(_fits(col, typ)).as_py():
            try:
                convert(col, typ)
            except (pa.ArrowException, ValueError):  # 2024-02-30: the form of a date, not a date
                continue
            return typ
    return pa.string()


def convert(col: pa.Array, typ: pa.DataType) -> pa.Array:
    if pa.types.is_boolean(typ):
        return pc.equal(pc.utf8_lower(col), "true")
    return pc.cast(col, typ)


def typed(name: str, batches: Iterator[pa.RecordBatch], schema: pa.Schema, keep: set[str]
          ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """CSV batches read as text, typed: the types come from the first TYPE_ROWS rows (read now),
    except the columns in `keep` (text); later rows that do not fit are an error naming them."""
    head = _first_rows(batches, TYPE_ROWS)
    sample = pa.Table.from_batches(head, schema=schema).slice(0, TYPE_ROWS)
    types = [pa.string() if f.name in keep else infer(sample.column(f.name).combine_chunks()) for f in schema]
    out = pa.schema([pa.field(f.name, t) for f, t in zip(schema, types)])

    def gen() -> Iterator[pa.RecordBatch]:
        done = 0
        for batch in _chain(head, batches):
            cols = []
            for f, col in zip(out, batch.columns):
                if not pa.types.is_string(f.type):
                    col = _checked(name, f, col, done)
                cols.append(col)
            done += batch.num_rows
            yield pa.RecordBatch.from_arrays(cols, schema=out)

    return out, gen()


def _first_rows(batches: Iterator[pa.RecordBatch], rows: int) -> list[pa.RecordBatch]:
    """The batches from `batches` that hold its first `rows` rows (all of them, if fewer)."""
    head: list[pa.RecordBatch] = []
    while sum(b.num_rows for b in head) < rows and (batch := next(batches, None)) is not None:
        head.append(batch)
    return head


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _checked(name: str, field: pa.Field, col: pa.Array, before: int) -> pa.Array:
    ok = _fits(col, field.type)
    bad = None if pc.all(ok).as_py() else pc.index(ok, False).as_py()
    if bad is None:
        try:
            return convert(col, field.type)
        except (pa.ArrowException, ValueError):
            bad = next(i for i in range(len(col)) if not _converts(col.slice(i, 1), field.type))
    raise InputError(f"{name}, data row {before + bad + 1:,}: column {field.name!r} is {field.type} in the first "
                     f"{TYPE_ROWS:,} rows, and {col[bad].as_py()!r} does not fit it exactly. Fix the value, keep "
                     f"the column as text with `text_columns` {field.name}, or leave `detect_types` out (every "
                     "column is then read as text).")


def _converts(col: pa.Array, typ: pa.DataType) -> bool:
    try:
        convert(col, typ)
    except (pa.ArrowException, ValueError):
        return False
    return True
