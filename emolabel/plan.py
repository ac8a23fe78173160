"""TagPlan: a tag run checked and resolved once, before any work, for whichever engine runs it.

make_plan() is the one place that checks the options (and refuses those the engine cannot
honour), expands the inputs and resolves their format, checks the output and its format, finds
the model folder and its labels, checks the columns and makes the output schema, and resolves
the defaults. Both engines (local_engine, ray_engine) consume the TagPlan it returns and build
their Labeler with TagPlan.labeler, so an option reaches both or is refused up front.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from emolabel import formats, outputs
from emolabel.columns import check_columns, check_text_column
from emolabel.errors import InputError, OptionError
from emolabel.files import STDIO, expand_inputs, is_regular_file, is_uri
from emolabel.inputs import Reader, open_inputs, schema_of
from emolabel.options import LABELER_FIELDS, TagOptions
from emolabel.selection import Selection

if TYPE_CHECKING:
    from emolabel.classifier import Spec
    from emolabel.engines import Engine
    from emolabel.inference import Labeler


@dataclass
class TagPlan:
    """What a tag run will do, every choice made: the engines read it, none checks again."""

    options: TagOptions  # checked; the local engine's with every default resolved (TagOptions.resolve)
    inputs: list[str]  # paths, globs expanded (Ray: folders too, and absolute), or ['-'] for stdin
    output: str  # a file, '-' for stdout, or (an engine that writes a folder) the folder
    input_format: formats.Format
    output_format: formats.Format
    model: Path  # the model folder
    spec: Spec  # its labels and scoring, read without its weights
    selection: Selection  # the columns written
    input_schema: pa.Schema | None  # the first input's columns as read (None: a folder, read by Ray's workers)
    schema: pa.Schema | None  # the output's (check_columns'); None with input_schema
    read_options: dict[str, Any]  # inputs.open_inputs / open_stream's keywords
    write_options: outputs.WriteOptions
    source: str | None = None  # several inputs to one file: the column naming each row's file
    checkpointed: bool = False  # a file to a file: progress committed chunk by chunk, so resume works
    reader: Reader | None = None  # the local engine's input, open (close() closes it)
    started: float = 0.0  # time.perf_counter() when the run was asked for: start-up counts from there
    precision_reason: str = ""  # why the local engine's precision (TagOptions.resolve_with_reason), for the summary

    def labeler(self, threads: int | None = None) -> Labeler:
        """The run's Labeler, built here only: from the options resolved for this machine's device
        (a Ray actor resolves them on its own node). `threads`: an engine's own thread count."""
        from emolabel.inference import Labeler

        resolved = self.options.resolve(self.model)
        settings = {name: getattr(resolved, name) for name in LABELER_FIELDS}
        return Labeler(self.model, **(settings | ({"threads": threads} if threads else {})))

    def fingerprint(self, batch_invariant: bool = False) -> dict[str, Any]:
        """What resume must find unchanged: the inputs, the model's files and the resolved options
        that change output (`max_length` None is the model's own, which its files pin; the batch
        shape not at all where the Labeler's forward is batch-invariant)."""
        from emolabel import checkpoint

        return checkpoint.fingerprint(self.inputs[0] if len(self.inputs) == 1 else self.inputs, self.model,
                                      self.options.output_options(batch_invariant))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def __enter__(self) -> TagPlan:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_plan(input: Any, output: Any, options: TagOptions | None, engine: Engine) -> TagPlan:
    """The plan of a run of `engine` from `input` (a path or '-', or a list of paths and globs) to
    `output`, every check made before any work (OptionError for a misused option). The local
    engine's plan holds its input open: use it in a `with` block."""
    from emolabel import engines

    started = time.perf_counter()
    paths, output = as_paths(input, output)
    opts = options or TagOptions()
    opts.check()
    engines.refuse_unsupported(engine, opts)
    if engine.writes_folder:
        return _folder_plan(paths, output, opts, engine, started)
    return _file_plan(paths, output, opts, started)


def _file_plan(paths: list[str], output: str, opts: TagOptions, started: float) -> TagPlan:
    """A run into one file or stdout: inputs read in order, the first one opened here."""
    output = outputs.resolve_output(output)
    inputs = expand_inputs(paths)
    in_fmt = formats.format_of(inputs, opts.input_format)
    out_fmt = outputs.output_format(output, opts.output_format)  # None: stdout, in the input's format
    if out_fmt is not None:
        opts.check_output(out_fmt)
    # Progress can be committed and resumed only between regular files: a pipe or FIFO given as a
    # path cannot be read twice (fingerprinting it would steal rows from the reader).
    checkpointed = not outputs.is_stream(output) and all(p != STDIO and is_regular_file(p) for p in inputs)
    if opts.resume and not checkpointed:
        raise OptionError("`resume` needs an input file and an output file (not stdin/stdout, a pipe or a FIFO).")
    for path in inputs:
        outputs.check_output(output, path, opts.overwrite)
    _check_terminal(output, out_fmt, "write to a file")
    folder = model_folder(opts.model)
    opts, why = opts.resolve_with_reason(folder)
    spec, selection = _model(folder, opts)
    source = f"{opts.prefix}_source" if len(inputs) > 1 else None
    added = (*selection.added(), *([source] if source else []))
    read = opts.read_options(out_fmt in (None, formats.JSONL), added)
    reader = open_inputs(inputs, in_fmt, source_column=source, chunk_rows=opts.chunk_rows, **read)
    try:
        if out_fmt is None:  # stdout: the input's format unless told (lines in: CSV out)
            out_fmt = reader.format if reader.format.writable else formats.CSV
            _check_terminal(output, out_fmt, "give another `output_format`")
        opts.check_input(reader.format)
        opts.check_output(out_fmt)
        schema = _output_schema(reader.schema, reader.name, opts, selection, out_fmt, output,
                                always=(source,) if source else ())
    except BaseException:
        reader.close()
        raise
    opts = dataclasses.replace(opts, input_format=reader.format.name, output_format=out_fmt.name)
    return TagPlan(opts, inputs, output, reader.format, out_fmt, folder, spec, selection, reader.schema, schema, read,
                   opts.write_options(reader.format), source, checkpointed, reader, started, why)


def _folder_plan(paths: list[str], output: str, opts: TagOptions, engine: Any, started: float) -> TagPlan:
    """A run into a folder of part files (Ray): files read by the engine's workers, each row given
    a join key; the first file's columns checked here."""
    if output == STDIO:
        raise OptionError(f"The {engine.name.capitalize()} engine writes a folder of part files: give `output` FOLDER.")
    engine.check_settings()
    inputs = expand_inputs(paths, folders=True, absolute=True)
    in_fmt = formats.format_of(inputs, opts.input_format)
    if in_fmt is None:
        raise OptionError(f"The {engine.name.capitalize()} engine reads files, not stdin: give file paths, globs or URIs.")
    opts.check_input(in_fmt)
    out_fmt = formats.for_writing(opts.output_format or engine.output_format)
    opts.check_output(out_fmt)
    folder = model_folder(opts.model).resolve()  # the workers may run elsewhere
    spec, selection = _model(folder, opts)
    opts = dataclasses.replace(opts, chunk_rows=opts.chunk_rows or engine.chunk_rows, output_format=out_fmt.name)
    row_id, key, internal = engine.row_columns(opts.prefix)
    added = (*selection.added(), *([row_id] if row_id else []), *internal)
    read = opts.read_options(json_out=out_fmt is formats.JSONL, reserved=added)
    first = schema_of(inputs[0], in_fmt, opts.chunk_rows, **read)  # every file must match it
    schema = None
    if first is not None:
        with_id = first.append(pa.field(row_id, pa.string())) if row_id else first  # the workers add it
        schema = _output_schema(with_id, inputs[0], opts, selection, out_fmt, output, always=(key,), added=internal)
    outputs.check_output_folder(output, opts.overwrite, inputs)
    if len({p.split("://", 1)[0] if is_uri(p) else "" for p in inputs}) > 1:
        raise InputError("Inputs mix filesystems (local paths and URIs, or several schemes); use one per job.")
    return TagPlan(opts, inputs, output, in_fmt, out_fmt, folder, spec, selection, first, schema, read,
                   opts.write_options(in_fmt), started=started)


def model_folder(model: str | None) -> Path:
    """The model folder of a run: `model`, else the shipped one (EMOLABEL_MODEL overrides). A
    `model` that does not exist is a misused option (what a folder holds is checked when read)."""
    from emolabel.config import default_model_dir

    if model is None:
        return default_model_dir()
    if not Path(model).exists():
        raise OptionError(f"Model folder {model} does not exist: give `model` a model folder (emolabel's, or a "
                          "Hugging Face sequence-classification folder).")
    return Path(model)


def _model(folder: Path, opts: TagOptions) -> tuple[Spec, Selection]:
    """The model's labels and scoring (a bad folder fails here, before any work) and the columns
    the options select for it."""
    from emolabel.classifier import spec

    model = spec(folder)  # emolabel's own folder or a transformers classifier
    return model, Selection.of(opts, model.labels, model.multi_label)


def _output_schema(schema: pa.Schema, name: str, opts: TagOptions, selection: Selection, out_fmt: formats.Format,
                   output: str, always: tuple[str, ...] = (), added: tuple[str, ...] = ()) -> pa.Schema:
    """The output schema for an input's `schema`, checked: the text column (before the model
    loads: fail fast), clashes, `columns`, and what the output format can hold."""
    check_text_column(schema, name, opts.text_column)
    out = check_columns(schema, name, opts.text_column, selection, added=added, warn=False, always=always)
    outputs.check_writable(out, out_fmt, output)
    if out_fmt is formats.CSV and len(out) == 1:
        raise OptionError(f"A CSV of the {out.names[0]!r} column alone would write each row without text as a "
                          "blank line, which CSV readers skip; keep an input column (`columns`), or write "
                          "Parquet or JSON Lines.")
    return out


def _check_terminal(output: str, fmt: formats.Format | None, fix: str) -> None:
    if output == STDIO and sys.stdout is not None and sys.stdout.isatty() and fmt is formats.PARQUET:
        raise OptionError(f"Refusing to write Parquet to a terminal; {fix}.")


def as_paths(input: Any, output: Any) -> tuple[list[str], str]:
    """tag_file's `input` (a path or '-', or a list of them) and `output` (a path or '-'), each a
    str or a Path, as str; anything else is a TypeError naming the argument."""
    import os

    def path(value: Any, name: str) -> str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a path (a str or Path, '-' for std{'in' if name == 'input' else 'out'}"
                            f"{', or a list of them' if name == 'input' else ''}), not {type(value).__name__} {value!r}.")
        return value

    many = not isinstance(input, str | os.PathLike) and isinstance(input, list | tuple)
    return [path(p, "input") for p in input] if many else [path(input, "input")], path(output, "output")
