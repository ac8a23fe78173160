"""TagOptions: everything a tag run can be told, its checks, and the defaults it resolves per device.

One frozen dataclass that every entry point fills (the CLI's `tag`, emolabel.tag_file,
label_frame, the Labeler, predict) and checks here, with the same words; plan.make_plan reads it
once per run. The per-device defaults (batch_defaults) are the Labeler's too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from emolabel.labels import DEFAULT_PREFIX

# The TagOptions fields the Labeler takes (as keywords of the same names): plan.TagPlan.labeler
# passes exactly these, so a Labeler option is added here and in Labeler.__init__, nowhere else.
LABELER_FIELDS = ("device", "precision", "batch_size", "max_tokens", "max_length", "threads")


def batch_defaults(device_type: str) -> dict[str, int]:
    """The per-device defaults of `batch_size`, `max_tokens` and `chunk_rows`: the one place (the
    Labeler reads them too). On the CPU, time grows with tokens and small batches keep caches
    warm; on a GPU, large batches keep the card busy and large chunks keep its feed ahead."""
    gpu = device_type == "cuda"
    return {"batch_size": 1024 if gpu else 64, "max_tokens": 65536 if gpu else 4096, "chunk_rows": 65536 if gpu else 8192}


@dataclass(frozen=True)
class TagOptions:
    """Everything a tag run can be told; None means "the default for the device" (see resolve()).

    Every field either changes the output (and so goes into the --resume fingerprint) or is
    named in NOT_OUTPUT with the reason it does not.
    """

    text_column: str = "text"
    model: str | None = None  # a model folder; None: the shipped model (EMOLABEL_MODEL overrides)
    prefix: str = DEFAULT_PREFIX  # of the added columns
    input_format: str | None = None  # None: from the extension (stdin: sniffed)
    output_format: str | None = None  # None: from the extension (stdout: the input's)
    batch_size: int | None = None  # rows per model batch; None: the Labeler's default for the device
    max_tokens: int | None = None  # padded tokens per batch; None: the Labeler's default for the device
    max_length: int | None = None  # truncate texts to this many tokens; None: the model's (128)
    chunk_rows: int | None = None  # rows read and written at a time; None: 65536 on a GPU, 8192 on the CPU
    device: str = "auto"  # auto: the first CUDA GPU, else the CPU
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 or a checked bf16 on the CPU (inference.resolve_precision)
    threads: int | None = None  # CPU threads for the model; None: all cores
    encoding: str = "utf-8"  # of CSV / JSON Lines / lines input
    on_error: str = "fail"  # a malformed row: "fail", or "skip" it and report its line
    delimiter: str | None = None  # of CSV input; None: a tab for .tsv, else a comma
    detect_types: bool = False  # CSV input: numbers, booleans, ISO dates typed where exact (else every column is text)
    text_columns: tuple[str, ...] = ()  # with detect_types: columns kept as text (ids, codes)
    empty_null: bool = False  # CSV input: an empty cell is null (else "")
    min_score: float | None = None  # rows whose top probability is lower get no label, status "uncertain";
    # a multi-label model: the score a label must reach (labels.MULTI_LABEL_THRESHOLD when None)
    # What is written (selection.Selection reads these): the defaults write what tag always wrote
    columns: tuple[str, ...] | None = None  # input columns written, in this order; None: all of them
    probabilities: bool = True  # {prefix}_<label>: one probability per label
    score: bool = True  # {prefix}_score: the chosen label's probability
    top_k: int = 0  # {prefix}_top1 .. _topK with their _score: the K best labels, best first; 0: none
    limit: int | None = None  # label only the first N rows (a quick try on a big file)
    overwrite: bool = False  # replace an existing output file
    resume: bool = False  # continue an interrupted run from its committed chunks
    parquet_compression: str | None = None  # the codec inside a Parquet output; None: zstd (config)

    # Fields that cannot change a labelled row: kept out of the --resume fingerprint.
    NOT_OUTPUT: ClassVar[dict[str, str]] = {
        "model": "fingerprinted by content (every file of the folder), not by its path",
        "threads": "the same numbers on any thread count",
        "overwrite": "only whether an existing file may be replaced",
        "resume": "only whether committed progress is used",
        "parquet_compression": "the same rows, encoded otherwise: applied when the committed rows are copied "
                               "into the file, so a resumed run writes every row with the codec it is given",
    }

    # Fields that change no row where the forward is batch-invariant (the CPU's fp32 and bf16 on
    # plain BERT encoders: inference.CPU_FORWARD), so a resume may change them there.
    BATCH_SHAPE: ClassVar[tuple[str, ...]] = ("batch_size", "max_tokens", "chunk_rows")

    def __post_init__(self) -> None:
        from emolabel.detect import delimiter

        for name in ("columns", "text_columns"):  # lists of names are kept as tuples (frozen: set once, here)
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.delimiter, str):  # `\\t` and `tab` are a tab: one place reads them
            object.__setattr__(self, "delimiter", delimiter(self.delimiter))

    def resolve(self, model: Path) -> TagOptions:
        """These options with the defaults of the device they resolve to filled in: `device` (auto:
        this machine's), `precision` for it and the model folder `model`, and `batch_size`,
        `max_tokens`, `chunk_rows` (batch_defaults). The one resolution of a run's defaults: the
        local engine's plan makes it before any work, a Ray actor on its own node. Resolving
        resolved options changes nothing."""
        return self.resolve_with_reason(model)[0]

    def resolve_with_reason(self, model: Path) -> tuple[TagOptions, str]:
        """resolve(), and why `precision` resolved as it did (the summary says it): one resolution,
        so auto's bf16 record is read (and the weights hashed) once."""
        from emolabel.inference import resolve_device, resolve_precision

        dev = resolve_device(self.device)
        defaults = batch_defaults(dev.type)
        filled = {k: defaults[k] if getattr(self, k) is None else getattr(self, k) for k in defaults}
        precision, why = resolve_precision(self.precision, dev, model)
        return dataclasses.replace(self, device=str(dev), precision=precision, **filled), why

    @classmethod
    def checked(cls, **fields: Any) -> TagOptions:
        """These options (the rest at their defaults), checked: every entry point that takes some
        of them (tag_file, label_frame, Labeler, predict) checks them here, with the same words."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in fields if k not in names]
        if unknown:
            import difflib

            near = [m for k in unknown for m in difflib.get_close_matches(k, names, n=1)]
            hint = f" Did you mean {', '.join(f'`{m}`' for m in near)}?" if near else ""
            raise TypeError(f"Unknown option(s) {', '.join(f'`{k}`' for k in unknown)}.{hint} The options: "
                            f"{', '.join(names)}.")
        options = cls(**fields)
        options.check()
        return options

    def check(self) -> None:
        """Values no run can use (the Labeler checks the model's own: `max_tokens` >= its length,
        and resolve_device / resolve_precision the device's)."""
        from emolabel.errors import OptionError

        self._check_types()
        if self.max_length is not None and self.max_length < 2:
            raise OptionError("`max_length` must be at least 2 (room for [CLS] and [SEP]).")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"`limit` must be at least 1, not {self.limit}.")
        if not self.prefix or not self.prefix.strip():
            raise OptionError("`prefix` cannot be empty: the new columns would be named '', '_score', ...")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise OptionError(f"`min_score` must be between 0 and 1, not {self.min_score}.")
        if self.top_k < 0:
            raise OptionError(f"`top_k` must be 0 (none) or more, not {self.top_k}.")
        for name in ("chunk_rows", "batch_size", "max_tokens", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OptionError(f"`{name}` must be at least 1, not {getattr(self, name)}.")
        from emolabel import formats
        from emolabel.config import PARQUET_COMPRESSIONS

        if self.input_format is not None:
            formats.for_reading(self.input_format)  # an unknown or write-only format names the readable ones
        if self.output_format is not None:
            formats.for_writing(self.output_format)
        if self.parquet_compression not in (None, *PARQUET_COMPRESSIONS):
            raise OptionError(f"Unknown `parquet_compression` {self.parquet_compression!r}: use "
                              f"{', '.join(PARQUET_COMPRESSIONS)}.")
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in "\"\r\n"):
            raise OptionError(f"`delimiter` must be one character (not a quote or a line break), not {self.delimiter!r}.")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise OptionError(f"Unknown `encoding` {self.encoding!r}: use a Python codec name, e.g. utf-8 or latin-1."
                              ) from None
        if self.on_error not in ("fail", "skip"):
            raise OptionError(f"Unknown `on_error` {self.on_error!r}: use fail or skip.")
        if self.text_columns and not self.detect_types:
            raise OptionError("`text_columns` only applies with `detect_types` (without it every column is text).")

    def _check_types(self) -> None:
        """Each field of the type its annotation names (a number for a float, a path for `model`):
        a TypeError naming the option, not a comparison failing deep inside a run."""
        import numbers
        import os
        import typing

        kinds = {int: ("an int", numbers.Integral), float: ("a number", numbers.Real), bool: ("True or False", bool),
                 str: ("a str", str)}
        hints = typing.get_type_hints(type(self))
        for name in (f.name for f in dataclasses.fields(self)):
            value, hint = getattr(self, name), hints[name]
            allowed = (hint,) if typing.get_origin(hint) is tuple else typing.get_args(hint) or (hint,)
            if value is None and type(None) in allowed:
                continue
            base = next(t for t in allowed if t is not type(None))
            if typing.get_origin(base) is tuple:  # a tuple of names
                if not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                    none = " or None" if type(None) in allowed else ""
                    raise TypeError(f"`{name}` must be a list of column names (e.g. ['id', 'text']){none}, not "
                                    f"{type(value).__name__} {value!r}.")
                continue
            what, cls = kinds[base]
            if name == "model":
                what, cls = "a folder path (str or Path)", (str, os.PathLike)
            if not isinstance(value, cls) or base is not bool and isinstance(value, bool):
                none = " or None" if type(None) in allowed else ""
                got = "None" if value is None else f"{type(value).__name__} {value!r}"
                raise TypeError(f"`{name}` must be {what}{none}, not {got}.")

    def check_input(self, fmt: Any) -> None:
        """CSV's reading options given for another input format would do nothing: refused."""
        csv_only = [f"`{n}`" for n in ("delimiter", "detect_types", "empty_null", "text_columns") if getattr(self, n)]
        if csv_only and fmt.name != "csv":
            from emolabel.errors import OptionError

            raise OptionError(f"{', '.join(csv_only)} only apply to CSV input, and the input is {fmt.name}.")

    def check_output(self, fmt: Any) -> None:
        """Parquet's writing option given for another output format would do nothing: refused."""
        if self.parquet_compression is not None and fmt.name != "parquet":
            from emolabel import formats, sinks
            from emolabel.errors import OptionError

            whole = formats.titles(tuple(f.name for f in formats.REGISTRY.values() if f.compressions))
            raise OptionError(f"`parquet_compression` only applies to Parquet output, and the output is {fmt.name} "
                              f"(a {' or '.join(sinks.COMPRESSIONS)} name compresses {whole}).")

    def write_options(self, input_format: Any) -> Any:
        """outputs.WriteOptions for a run from `input_format`."""
        from emolabel.outputs import WriteOptions

        return WriteOptions.for_run(input_format, self.parquet_compression)

    def read_options(self, json_out: bool = False, reserved: tuple[str, ...] = ()) -> dict[str, Any]:
        """inputs.open_input / open_stream's options for this run: `json_out` when JSON Lines are
        written (JSON Lines input is then kept as read, unless `columns` picks keys: those are written
        from the typed table, as for Parquet), `reserved` the columns the run adds."""
        return dict(encoding=self.encoding, on_error=self.on_error, delimiter=self.delimiter,
                    detect_types=self.detect_types, empty_null=self.empty_null, text_column=self.text_column,
                    text_columns=self.text_columns, keep_json=json_out and self.columns is None, reserved=reserved)

    def output_options(self, batch_invariant: bool = False) -> dict[str, Any]:
        """The fields that change the output: what --resume must find unchanged (as JSON keeps
        them: a tuple of columns is a list). `batch_invariant`: the run's forward gives a row the
        same numbers in any batch, so the BATCH_SHAPE fields are left out."""
        def plain(name: str, value: Any) -> Any:
            if name == "device" and isinstance(value, str):  # cuda:1 labels as cuda:0 does
                return value.split(":")[0]
            return list(value) if isinstance(value, tuple) else value

        left_out = {*self.NOT_OUTPUT, *(self.BATCH_SHAPE if batch_invariant else ())}
        return {f.name: plain(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in left_out}

