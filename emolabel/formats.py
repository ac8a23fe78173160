"""One record per table format, and the registry every list of formats is derived from.

A Format says everything the rest of emolabel knows about a format: its names, the file names
that imply it, its reader and writer (named as "module:function", so that this module, and
the CLI that reads its choices from it, need no pyarrow), the column kinds it cannot hold and
the whole-file compression its outputs take. The CLI's choices, the library's option checks,
suffix detection and the messages that list formats all read REGISTRY.

To add a format: a record here (`register` it), its reader (inputs.py, or a module of its own
like jsonl.py) and/or its writer (outputs.py).
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolabel.errors import OptionError
from emolabel.files import STDIO


@dataclass(frozen=True)
class Format:
    """A table format: what it is called, how it is found, read and written, and what it cannot hold."""

    name: str  # as `input_format` / `output_format` (--input-format, --output-format) say it
    title: str  # in messages: "CSV", "JSON Lines"
    suffixes: tuple[str, ...]  # file names that imply it (lower case); an input may add .gz after any
    reader: str | None = None  # "module:function" opening a stream as an inputs.Reader (None: never read)
    writer: str | None = None  # "module:class" writing batches to a binary file (None: never written)
    cannot_hold: tuple[str, ...] = ()  # column kinds its writer refuses up front (outputs.KINDS names them)
    holds: str = ""  # why, in messages: "CSV holds flat values only"
    compressions: tuple[str, ...] = ()  # whole-file codecs (sinks.COMPRESSIONS) an output of it may have
    codec_option: str | None = None  # the option that picks a codec inside the file (Parquet's)
    seekable: bool = False  # read from a path or a seekable file, not a text stream (stdin is spooled)

    @property
    def readable(self) -> bool:
        return self.reader is not None

    @property
    def writable(self) -> bool:
        return self.writer is not None

    def read(self, name: str, source: Any, **options: Any) -> Any:
        """Open `source` with this format's reader (an inputs.Reader); see inputs.open_stream."""
        return _resolve(self.reader)(name, source, **options)  # type: ignore[arg-type]

    def writer_class(self) -> Any:
        """The class that writes this format: Class(file, schema, delimiter, options) with write and close."""
        return _resolve(self.writer)  # type: ignore[arg-type]

    def __reduce__(self) -> Any:
        """Pickled by name when it is the registered record, so an engine's workers get the very
        same object (`fmt is formats.CSV` holds there too); a record not registered, by value."""
        if REGISTRY.get(self.name) is self:
            return get, (self.name,)
        return Format, tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def _resolve(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


CSV = Format("csv", "CSV", (".csv", ".tsv"), "emolabel.csv_reader:read_csv", "emolabel.outputs:CsvTableWriter",
             cannot_hold=("nested", "binary_view", "string_view"), holds="CSV holds flat values only",
             compressions=("gzip", "zstd"))  # and TSV: CSV with a tab (default_delimiter)
PARQUET = Format("parquet", "Parquet", (".parquet", ".pq"), "emolabel.inputs:read_parquet",
                 "emolabel.outputs:ParquetTableWriter", codec_option="parquet_compression", seekable=True)
JSONL = Format("jsonl", "JSON Lines", (".jsonl", ".ndjson", ".json"), "emolabel.jsonl:read_jsonl",
               "emolabel.outputs:JsonLinesTableWriter", cannot_hold=("binary", "repeated_names"),
               holds="JSON has no bytes", compressions=("gzip", "zstd"))
LINES = Format("lines", "text lines", (".txt",), "emolabel.inputs:read_lines")  # one text per line, as a `text` column

REGISTRY: dict[str, Format] = {f.name: f for f in (CSV, PARQUET, JSONL, LINES)}


def register(fmt: Format) -> Format:
    """Add (or replace) a format: from then on every choice, check and suffix knows it."""
    REGISTRY[fmt.name] = fmt
    return fmt


def readable() -> tuple[str, ...]:
    """Names of the formats that can be read: `input_format`'s choices."""
    return tuple(f.name for f in REGISTRY.values() if f.readable)


def writable() -> tuple[str, ...]:
    """Names of the formats that can be written: `output_format`'s choices."""
    return tuple(f.name for f in REGISTRY.values() if f.writable)


def tables() -> tuple[str, ...]:
    """Names of the formats both read and written: labelled tables (finetune, eval, check-bf16)."""
    return tuple(f.name for f in REGISTRY.values() if f.readable and f.writable)


def suffixes(names: tuple[str, ...]) -> str:
    """The file name suffixes of formats `names`, for a message: ".csv, .tsv, .parquet or .jsonl"."""
    found = [s for n in names for s in REGISTRY[n].suffixes]
    return ", ".join(found[:-1]) + " or " + found[-1] if len(found) > 1 else "".join(found)


def titles(names: tuple[str, ...]) -> str:
    """The titles of formats `names`, for a message: "CSV, Parquet or JSON Lines"."""
    found = [REGISTRY[n].title for n in names]
    return ", ".join(found[:-1]) + " or " + found[-1] if len(found) > 1 else "".join(found)


def for_reading(name: str | Format) -> Format:
    """The readable format called `name` (or `name` itself, a record, if it is readable); an
    OptionError naming the readable ones otherwise (an unknown name, or one that is written only)."""
    fmt = name if isinstance(name, Format) else REGISTRY.get(name)
    if fmt is None:
        raise OptionError(f"Unknown `input_format` {name!r}: use {', '.join(readable())}.")
    if not fmt.readable:
        raise OptionError(f"`input_format` {fmt.name!r} is an output format only: read {', '.join(readable())}.")
    return fmt


def for_writing(name: str) -> Format:
    """The writable format called `name`; an OptionError naming the writable ones otherwise."""
    fmt = REGISTRY.get(name)
    if fmt is None:
        raise OptionError(f"Unknown `output_format` {name!r}: use {', '.join(writable())}.")
    if not fmt.writable:
        raise OptionError(f"{fmt.title[:1].upper()}{fmt.title[1:]} ({', '.join(fmt.suffixes)}) is an input format only; write "
                          f"{', '.join(writable())}.")
    return fmt


def get(name: str) -> Format:
    """The format called `name` (readable or not); an OptionError naming them all otherwise."""
    if name not in REGISTRY:
        raise OptionError(f"Unknown format {name!r}: use {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def from_suffix(path: str) -> Format | None:
    """The format a file name implies (`x.csv`, `x.csv.gz`, ...), or None."""
    names = [s.lower() for s in Path(path).suffixes]
    if names and names[-1] == ".gz":
        names = names[:-1]
    if not names:
        return None
    return next((f for f in REGISTRY.values() if names[-1] in f.suffixes), None)


def default_delimiter(path: str) -> str:
    """A tab for a .tsv name (.tsv.gz too), else a comma."""
    names = [x.lower() for x in Path(path).suffixes if x.lower() != ".gz"]
    return "\t" if names[-1:] == [".tsv"] else ","


def sniff(head: bytes, encoding: str = "utf-8") -> Format:
    """Tell a stream's format from its first bytes: Parquet's magic, a '{' for JSON Lines, else CSV."""
    from emolabel.detect import ascii_compatible

    if head.startswith(b"PAR1"):
        return PARQUET
    if not ascii_compatible(encoding):  # UTF-16 or UTF-32: look at the characters
        return JSONL if head.decode(encoding, "ignore").lstrip("\ufeff \t\r\n")[:1] == "{" else CSV
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    if head.lstrip()[:1] == b"{":
        return JSONL
    return CSV


def format_of(paths: list[str], input_format: str | None = None) -> Format | None:
    """The one format of `paths`: `input_format` if given, else from their names (None for stdin)."""
    from emolabel.errors import InputError

    if input_format is not None:
        return for_reading(input_format)
    if paths == [STDIO]:
        return None
    found: dict[Format, str] = {}
    for p in paths:
        fmt = from_suffix(p.rstrip("/"))
        if fmt is None:
            raise InputError(f"Cannot tell the format of {p} from its name; use `input_format` "
                             f"({', '.join(readable())}).")
        found.setdefault(fmt, p)
    if len(found) > 1:
        raise InputError(f"Inputs mix formats ({', '.join(f'{f.name}: {p}' for f, p in found.items())}); "
                         "label one format per run.")
    return next(iter(found))
