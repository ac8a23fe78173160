"""CSV text from Arrow batches, each field quoted only where a reader needs it.

pyarrow's CSV writer quotes every string ("1","i am happy",...), so a CSV in was not the same
CSV out. Here a field is quoted only if it holds the separator, a quote or a line break (RFC
4180, Python's csv.QUOTE_MINIMAL), or, with `quote_empty`, if it is the empty string (to keep it
apart from a null, which is an empty field). Values are turned into text by pyarrow's cast, as
its CSV writer does, so numbers, dates and booleans read exactly as before. Every step is an
Arrow compute kernel over a whole column, never a Python loop over rows.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUOTE = '"'
EOL = "\n"


def header(names: list[str], delimiter: str, quote_empty: bool) -> bytes:
    """The header line: column names quoted as values are."""
    return encode(pa.record_batch([pa.array([n], pa.large_string()) for n in names], names=names),
                  delimiter, quote_empty)


def encode(batch: pa.RecordBatch | pa.Table, delimiter: str, quote_empty: bool) -> bytes | pa.Buffer:
    """The rows of `batch` as CSV lines, each ended by EOL (a buffer: no copy of the text)."""
    if batch.num_rows == 0:
        return b""
    if batch.num_columns == 0:
        return EOL.encode() * batch.num_rows
    special = re.compile(f"[{re.escape(delimiter + QUOTE)}\r\n]").pattern
    plain = not delimiter.isalnum() and delimiter not in ".-+"  # no number or boolean can hold it
    fields = [_field(column, special, quote_empty, plain and _numeric(column.type)) for column in batch.columns]
    rows = pc.binary_join_element_wise(*fields, _s(delimiter))
    lines = pc.binary_join_element_wise(rows, _s(""), _s(EOL))  # row + EOL + ""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], np.int64)
    first, last = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return lines.buffers()[2].slice(first, last - first)


def _field(column: pa.Array | pa.ChunkedArray, special: str, quote_empty: bool, plain: bool) -> pa.Array:
    """One column as CSV fields: text, quoted where needed, a null as the empty field (`plain`:
    no value can need quotes, so none is looked for: numbers, half the time of a batch)."""
    text = _text(column)
    if plain:
        return pc.fill_null(text, _s(""))
    needs = pc.match_substring_regex(text, special)
    if quote_empty:
        needs = pc.or_(needs, pc.equal(pc.binary_length(text), 0))
    if pc.any(needs).as_py():  # most columns hold no such value: skip building the quoted form
        quoted = pc.binary_join_element_wise(_s(QUOTE), pc.replace_substring(text, QUOTE, QUOTE * 2), _s(QUOTE),
                                             _s(""))
        text = pc.if_else(needs, quoted, text)
    return pc.fill_null(text, _s(""))


def _numeric(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ) or (
        pa.types.is_boolean(typ))


def _text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as large_string, the way pyarrow's CSV writer turns values into text (its cast)."""
    typ = column.type
    if pa.types.is_dictionary(typ):
        column = pc.cast(column, typ.value_type)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.cast(column, pa.large_string())


def _s(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())
