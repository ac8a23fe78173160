"""The Ray Data engine: label many files (local or object store) with a pool of model actors.

Every Ray call of emolabel lives in this module, and Ray is imported only inside functions, so
`import emolabel` never needs Ray. Install it with `pip install 'emolabel[ray]'`.

    from emolabel.ray_engine import tag_with_ray
    tag_with_ray(["s3://bucket/in/*.parquet"], "s3://bucket/out", model_dir="/models/emotion",
                 workers=(1, 8), gpus_per_worker=1)

How it works:

* Read: a small FileBasedDatasource subclass (Ray's documented way to add a file format) reads
  each file with the local engine's own readers (emolabel.tables: CSV with every column as a
  string so values round-trip, JSON Lines with its mixed-type rules; Parquet via pyarrow).
  Ray resolves the paths and the filesystem, so local paths, folders and object-store URIs
  (s3://, gs://, abfs://, hdfs://, file://) work. Globs are expanded here (Ray has none).
* Row ids: Ray does not keep row order, so every output row carries a join key. With
  `id_column`, that column (which must exist in every file). Otherwise `{prefix}_row_id`, a
  string `"<source path>#<row index in that file>"` (0-based data row; local paths are made
  absolute, object-store paths keep their scheme). The index is counted *inside the read of that file*: Ray calls
  `_read_stream()` once per file, from its first byte, in one task, and a retried read
  replays the file from the start, so the count is the same on every attempt. Only after the
  ids exist is the dataset split into `batch_size`-row blocks (a streaming repartition), so the
  order in which blocks are processed never changes an id.
* Inference: `map_batches` with an actor pool; each actor builds one `Labeler` and labels
  pyarrow tables with `Labeler.prepare/run` + `labels.append_columns`, the same code as the
  local engine. Torch and the tokenizer are limited to the CPUs of one actor.
* Faults: actors are restartable (`max_restarts`) and their tasks retried on a process death
  (`max_task_retries`); read and write tasks use Ray's task retries (3 on a worker death).
  A worker that dies mid-batch is replaced and its batch is redone; outputs of a dead task are
  never written, so each row is written exactly once. An error raised by emolabel's code (a
  missing column, an unreadable file) is not retried: the job fails with that EmolabelError,
  which names the input file(s).
* Output: a folder of part files (parquet, csv or jsonl) and a `_SUCCESS` marker written last.
  Local outputs are written to a temporary sibling folder that is renamed into place after
  `_SUCCESS` is in it, so the target never looks complete unless it is; on failure the
  temporary folder is deleted. Object stores (a `://` in the path) cannot rename a folder: the
  parts are written in place and `_SUCCESS` last, so only `_SUCCESS` tells a finished output
  from a partial one (with `overwrite`, the old output is deleted before the job starts, and a
  failed job deletes what it wrote, best effort).

Limits: on a multi-node cluster, local input paths and `model_dir` must exist on every node
(a shared filesystem), or use object-store inputs; all inputs are one format and one filesystem.
Row order is not kept (join on the id). Ray's C++ core prints one "constructor arguments in the
object store and max_restarts > 0" line per job (ray-project/ray#53727): harmless here, as the
driver holds those arguments until the job ends.

Fault-injection hook (tests only): if the environment variable `EMOLABEL_RAY_CRASH_ONCE` names a
marker file, the first actor call that manages to create that file kills its own process
(`os._exit(1)`) before labelling; later calls (and the restarted actor) run normally. Never set it
in production.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import io
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from emolabel.config import FORMATS
from emolabel.errors import EmolabelError, InputError, OptionError, OutputError
from emolabel.labels import column_names

RAY_MISSING = "The Ray engine needs Ray: pip install 'emolabel[ray]'"
CRASH_ENV = "EMOLABEL_RAY_CRASH_ONCE"  # fault-injection hook for tests, see the module docstring
SUCCESS = "_SUCCESS"
OUTPUT_FORMATS = FORMATS
SOURCE_COLUMN = "__emolabel_source"  # internal: the file of each row, for error messages; dropped by the actors
# A worker process that dies is restarted this many times per actor (and each batch retried as
# often) before the job fails: a crash that repeats (e.g. out of memory on one batch) ends the job
# instead of looping forever.
MAX_RESTARTS = 4
# Read, split and write tasks reserve no CPU: the actors may hold every CPU of a node, and a task
# waiting for a CPU then starves the whole job (ray-project/ray#44687, measured here: 2 actors of
# 1 CPU on 2 CPUs hung). Their concurrency is capped instead (max(2, workers) tasks), and parsing
# and compression are light next to the model.
READ_WRITE_CPUS = 0
GLOB_CHARS = "*?["


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EmolabelError(RAY_MISSING) from None
    return ray


# ---------------------------------------------------------------------------------------------
# Inputs


def _is_uri(path: str) -> bool:
    return "://" in path


def expand_inputs(inputs: list[str] | str) -> list[str]:
    """Expand globs (local or `scheme://` URIs); plain paths, folders and URIs pass through.

    Local paths become absolute (they are opened by worker processes, and name rows in the ids).
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        raise InputError("No input given: pass one or more files, folders or globs.")
    out: list[str] = []
    for p in inputs:
        if not any(c in p for c in GLOB_CHARS):
            if not _is_uri(p) and not os.path.exists(p):
                raise InputError(f"Input file {p} does not exist.")
            out.append(p if _is_uri(p) else os.path.abspath(p))  # absolute: the workers' cwd may differ
            continue
        matches = _glob_uri(p) if _is_uri(p) else sorted(os.path.abspath(m) for m in globlib.glob(p, recursive=True))
        matches = [m for m in matches if not os.path.basename(m.rstrip("/")).startswith(("_", "."))]
        if not matches:
            raise InputError(f"No files match {p}.")
        out.extend(matches)
    return list(dict.fromkeys(out))


def _glob_uri(pattern: str) -> list[str]:
    """Expand a glob in an object-store URI by listing below its first glob-free folder.

    `*`, `?` and `[...]` match within one path segment, as a local glob; `**` is not supported.
    """
    from pathlib import PurePosixPath

    import pyarrow.fs as pafs

    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    base = "/".join(parts[:fixed])
    try:
        fs, base_path = pafs.FileSystem.from_uri(f"{scheme}://{base}")
    except (pa.ArrowException, ValueError, OSError) as e:
        raise InputError(f"Cannot list {scheme}://{base}: {e}") from None
    # `rest` and the listed paths are both relative to the filesystem root once the scheme is off
    # (s3://bucket/key lists as bucket/key); keep the pattern in that form.
    pat = (base_path.rstrip("/") + "/" + "/".join(parts[fixed:])) if base_path else "/".join(parts[fixed:])
    infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True, allow_not_found=True))
    want = PurePosixPath(pat)

    def matches(path: str) -> bool:
        p = PurePosixPath(path)
        return len(p.parts) == len(want.parts) and p.match(pat)

    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and matches(i.path))


def _input_format(paths: list[str], input_format: str | None) -> str:
    from emolabel.tables import FORMAT_NAMES, format_from_suffix

    if input_format is not None:
        if input_format not in FORMAT_NAMES:
            raise InputError(f"Unknown input format {input_format!r}: use {', '.join(FORMAT_NAMES)}.")
        return input_format
    formats = {}
    for p in paths:
        fmt = format_from_suffix(p.rstrip("/"))
        if fmt is None:
            raise InputError(f"Cannot tell the format of {p} from its name; pass input_format "
                             f"({', '.join(FORMAT_NAMES)}).")
        formats.setdefault(fmt.value, p)
    if len(formats) > 1:
        raise InputError(f"Inputs mix formats ({', '.join(f'{f}: {p}' for f, p in formats.items())}); "
                         "label one format per job.")
    return next(iter(formats))


def _datasource_class() -> type:
    """A FileBasedDatasource that reads files with emolabel's readers and numbers their rows."""
    import numpy as np
    import pyarrow.compute as pc
    from ray.data.datasource import FileBasedDatasource

    from emolabel.tables import Format, _open_csv, _open_jsonl, _short

    class EmolabelFiles(FileBasedDatasource):
        def __init__(self, paths: list[str], *, fmt: str, text_column: str, labels: list[str], prefix: str,
                     id_column: str | None, chunk_rows: int, scheme: str):
            super().__init__(paths, file_extensions=None)
            self.fmt = Format(fmt)
            self.text_column = text_column
            self.labels = labels
            self.prefix = prefix
            self.id_column = id_column
            self.chunk_rows = chunk_rows
            self.scheme = scheme  # put back in front of the path Ray hands us (it strips s3:// etc.)
            self.n_files = len(self._paths())  # after Ray expanded folders

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            if self.fmt is Format.PARQUET:  # needs random access (the footer is at the end)
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            name = self.scheme + path
            if self.fmt is Format.PARQUET:
                import pyarrow.parquet as pq

                try:
                    pf = pq.ParquetFile(f)
                except (pa.ArrowException, OSError) as e:
                    raise InputError(f"{name} is not a readable Parquet file ({_short(e)}).") from None
                schema = pf.schema_arrow

                def parquet_batches() -> Iterator[pa.RecordBatch]:
                    try:
                        yield from pf.iter_batches(batch_size=self.chunk_rows)
                    except (pa.ArrowException, OSError) as e:
                        raise InputError(f"{name}: Parquet data is corrupt or truncated ({_short(e)}).") from None

                batches: Iterator[pa.RecordBatch] = parquet_batches()
            else:
                stream = io.BufferedReader(f, 1 << 20)
                open_fn = _open_csv if self.fmt is Format.CSV else _open_jsonl
                reader = open_fn(name, stream, self.chunk_rows, "utf-8", "fail")
                schema, batches = reader.schema, iter(reader)
            self._check_schema(schema, name)
            start = 0  # the row index within this file: counted here, in file order
            for batch in batches:
                n = batch.num_rows
                if n == 0:
                    continue
                table = pa.Table.from_batches([batch])
                if self.id_column is None:
                    index = pc.cast(pa.array(np.arange(start, start + n)), pa.string())
                    ids = pc.binary_join_element_wise(f"{name}#", index, "")
                    table = table.append_column(f"{self.prefix}_row_id", ids)
                source = pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([name]))
                table = table.append_column(SOURCE_COLUMN, source)
                start += n
                yield table

        def _check_schema(self, schema: pa.Schema, name: str) -> None:
            names = schema.names
            if self.text_column not in names:
                raise InputError(f"Column {self.text_column!r} not found in {name}. Available columns: "
                                 f"{', '.join(names)}. Choose the text column with text_column.")
            if self.id_column is not None and self.id_column not in names:
                raise InputError(f"id column {self.id_column!r} not found in {name}. Available columns: "
                                 f"{', '.join(names)}.")
            new = column_names(self.labels, self.prefix) + ([] if self.id_column else [f"{self.prefix}_row_id"])
            clash = [c for c in new if c in names] + [c for c in [SOURCE_COLUMN] if c in names]
            if clash:
                raise InputError(f"{name} already has column(s) {', '.join(clash)}, which tag would add. "
                                 "Use prefix to name the new columns differently (e.g. prefix='predicted').")

    return EmolabelFiles


# ---------------------------------------------------------------------------------------------
# The model actor


class LabelerActor:
    """One model per Ray actor: pyarrow tables in, the same tables with label columns out."""

    def __init__(self, model_dir: str, text_column: str, prefix: str, device: str = "auto",
                 precision: str = "auto", threads: int = 1, crash_marker: str | None = None):
        # Before the tokenizer's thread pool starts: one actor uses only its own CPUs
        # (oversubscribed threads were measured 10x slower).
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        from emolabel.inference import Labeler

        self.labeler = Labeler(model_dir, device=device, precision=precision, threads=threads)
        self.text_column = text_column
        self.prefix = prefix
        self.crash_marker = crash_marker

    def _maybe_crash(self) -> None:
        """Fault injection (tests only): die once, the first time any actor gets here."""
        if not self.crash_marker:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)

    def __call__(self, table: pa.Table) -> pa.Table:
        from emolabel.labels import append_columns, output_schema

        self._maybe_crash()
        files: list[str] = []
        if SOURCE_COLUMN in table.column_names:
            src = table.column(SOURCE_COLUMN)
            files = sorted({str(v) for chunk in src.chunks for v in chunk.dictionary.to_pylist()}) if isinstance(
                src.type, pa.DictionaryType) else sorted(set(src.to_pylist()))
            table = table.drop_columns([SOURCE_COLUMN])
        try:
            schema = output_schema(table.schema, self.labeler.labels, self.prefix)
            if table.num_rows == 0:
                return schema.empty_table()
            batch = table.combine_chunks().to_batches()[0]
            probs = self.labeler.run(self.labeler.prepare(batch.column(self.text_column)))
            return pa.Table.from_batches([append_columns(batch, probs, self.labeler.labels, schema)])
        except EmolabelError as e:
            raise type(e)(f"{', '.join(files) or 'input'}: {e}") from None
        except Exception as e:  # noqa: BLE001 - named by the file it came from, then raised on the driver
            raise EmolabelError(f"Labelling rows of {', '.join(files) or 'the input'} failed: "
                                f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Ray setup


def _is_local(ray_address: str | None) -> bool:
    """A new Ray of this machine only (not a cluster to join)."""
    return ray_address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def _ensure_ray(ray: Any, ray_address: str | None) -> bool:
    """Start or join Ray unless this process already did; True if started here."""
    if ray.is_initialized():
        return False
    local = _is_local(ray_address)
    if local:
        # Ray 2.60 turns on token auth for new clusters; a private local one needs none.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(address=ray_address, include_dashboard=False, log_to_driver=False,
                                  logging_level=logging.WARNING, configure_logging=True)
    if local:
        from emolabel.config import available_cpus

        kwargs["num_cpus"] = available_cpus()
    try:
        ray.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ... all mean the same here
        where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
        raise EmolabelError(f"Cannot start or join {where}: {e}") from None
    return True


def _find_emolabel_error(exc: BaseException) -> EmolabelError | None:
    """Our error inside a Ray exception (RayTaskError's `cause`, exception chains), as a plain
    emolabel error: same class, our message without the retry note Ray appends to it."""
    import re

    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    found: EmolabelError | None = None
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EmolabelError):
            found = found or e
            if type(e).__module__ == EmolabelError.__module__:  # not Ray's RayTaskError(InputError)
                found = e
                break
        stack += [e.__context__, e.__cause__, getattr(e, "cause", None)]
    if found is None:
        return None
    cls = next(c for c in type(found).__mro__ if c.__module__ == EmolabelError.__module__)
    msg = str(found.args[0]) if found.args else str(found)
    msg = re.sub(r"\nFailed to .*? after \d+/\d+ attempts.*", "", msg, flags=re.S)
    return cls(msg)


# ---------------------------------------------------------------------------------------------
# Output


def _check_output(output_dir: str, overwrite: bool, inputs: list[str] = ()) -> None:  # type: ignore[assignment]
    if _is_uri(output_dir):
        for path in inputs:  # the output folder is replaced whole: it must hold no input
            if path.rstrip("/").startswith(output_dir.rstrip("/") + "/") or path.rstrip("/") == output_dir.rstrip("/"):
                raise OutputError(f"{output_dir} holds the input {path}; replacing it would delete the input. "
                                  "Write to another folder.")
        return  # the rest is checked with the object store's filesystem in _prepare_uri_output
    p = Path(output_dir)
    out = p.resolve()
    for path in inputs:
        if _is_uri(path):
            continue
        src = Path(path).resolve()
        if src == out or out in src.parents:
            raise OutputError(f"{output_dir} holds the input {path}; replacing it would delete the input. "
                              "Write to another folder.")
    if not p.parent.exists():
        raise OutputError(f"Cannot write {output_dir}: folder {p.parent} does not exist. Create it first.")
    if p.exists() and not overwrite:
        raise OutputError(f"{output_dir} already exists. Pass `overwrite` to replace it.")
    if not os.access(p.parent, os.W_OK):
        raise OutputError(f"Cannot write {output_dir}: folder {p.parent} is not writable.")


def _prepare_uri_output(output_dir: str, overwrite: bool) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(output_dir)
        info = fs.get_file_info(path)
    except (pa.ArrowException, ValueError, OSError) as e:
        raise OutputError(f"Cannot write {output_dir}: {e}") from None
    if info.type != pafs.FileType.NotFound:
        is_dir = info.type == pafs.FileType.Directory
        listing = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)) if is_dir else [info]
        if listing and not overwrite:
            raise OutputError(f"{output_dir} already exists. Pass `overwrite` to replace it.")
        if listing:  # no rename on object stores: drop the marker first, then the old parts
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(f"{path.rstrip('/')}/{SUCCESS}")
            if is_dir:
                fs.delete_dir_contents(path, missing_dir_ok=True)
            else:
                fs.delete_file(path)
    return fs, path


def _zero_cpu(ds: Any) -> None:
    """Let the last logical operator (the streaming repartition) run without reserving a CPU.

    `repartition()` has no resource arguments and its tasks ask for 1 CPU; with actors holding
    every CPU they would never start and the job would hang (ray-project/ray#44687). Ray 2.60
    keeps the task options in the operator's `ray_remote_args` dict.
    """
    op = ds._logical_plan.dag
    args = getattr(op, "ray_remote_args", None)
    if isinstance(args, dict):
        args["num_cpus"] = READ_WRITE_CPUS


def _write(ds: Any, target: str, output_format: str, concurrency: int) -> None:
    remote = {"num_cpus": READ_WRITE_CPUS}
    if output_format == "parquet":
        ds.write_parquet(target, ray_remote_args=remote, concurrency=concurrency, compression="zstd")
    elif output_format == "csv":  # pyarrow's CSV writer, as the local engine
        ds.write_csv(target, ray_remote_args=remote, concurrency=concurrency)
    else:
        ds.write_datasink(_jsonl_sink_class()(target), ray_remote_args=remote, concurrency=concurrency)


def _jsonl_sink_class() -> type:
    """JSON Lines parts written with polars, as the local engine (Ray's write_json goes through
    pandas, which turns an integer column with nulls into floats)."""
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonlSink(BlockBasedFileDatasink):
        def __init__(self, path: str):
            super().__init__(path, file_format="jsonl")

        def write_block_to_file(self, block: Any, file: Any) -> None:
            import polars as pl

            buf = io.BytesIO()
            pl.from_arrow(block.to_arrow()).write_ndjson(buf)
            file.write(buf.getvalue())

    return JsonlSink


def _part_files(fs: Any, path: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File
                  and not os.path.basename(i.path).startswith(("_", ".")))


def _count(fs: Any, files: list[str], fmt: str, prefix: str) -> tuple[int, int]:
    """(rows, rows with a null label) of the written parts: the footers for Parquet, else a read
    of the label column alone."""
    import pyarrow.compute as pc

    rows = empty = 0
    for f in files:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(f) as fh:
                md = pq.ParquetFile(fh).metadata
                rows += md.num_rows
                nulls = None
                for g in range(md.num_row_groups):
                    rg = md.row_group(g)
                    col = next((rg.column(j) for j in range(rg.num_columns)
                                if rg.column(j).path_in_schema == prefix), None)
                    if col is None or not col.is_stats_set or col.statistics.null_count is None:
                        nulls = None
                        break
                    nulls = (nulls or 0) + col.statistics.null_count
                if nulls is None:
                    fh.seek(0)
                    nulls = pq.read_table(fh, columns=[prefix]).column(prefix).null_count
                empty += nulls
        elif fmt == "csv":
            import pyarrow.csv as pa_csv

            with fs.open_input_stream(f) as fh:
                t = pa_csv.read_csv(fh, read_options=pa_csv.ReadOptions(block_size=16 << 20),
                                    parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                    convert_options=pa_csv.ConvertOptions(include_columns=[prefix],
                                                                          column_types={prefix: pa.string()}))
            col = t.column(prefix)
            rows += t.num_rows
            empty += col.null_count + int(pc.sum(pc.equal(pc.fill_null(col, "x"), "")).as_py() or 0)
        else:
            import pyarrow.json as pa_json

            with fs.open_input_stream(f) as fh:
                t = pa_json.read_json(fh, read_options=pa_json.ReadOptions(block_size=16 << 20),
                                      parse_options=pa_json.ParseOptions(
                                          explicit_schema=pa.schema([(prefix, pa.string())]),
                                          unexpected_field_behavior="ignore"))
            rows += t.num_rows
            empty += t.column(prefix).null_count
    return rows, empty


# ---------------------------------------------------------------------------------------------
# The job


def tag_with_ray(
    inputs: list[str] | str,
    output_dir: str,
    *,
    model_dir: str,
    text_column: str = "text",
    prefix: str = "emotion",
    input_format: str | None = None,
    output_format: str = "parquet",
    id_column: str | None = None,
    workers: int | tuple[int, int] = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_size: int = 4096,
    device: str = "auto",
    precision: str = "auto",
    ray_address: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Label every row of `inputs` into a folder of part files with a Ray Data actor pool.

    Returns {rows, empty, seconds, rows_per_s, output_dir, files}. Raises EmolabelError (its
    message names the file) for anything the user can fix; see the module docstring.
    """
    from emolabel.config import ModelConfig

    if output_format not in OUTPUT_FORMATS:
        raise OutputError(f"Unknown output format {output_format!r}: use {', '.join(OUTPUT_FORMATS)}.")
    if isinstance(workers, int):
        if workers < 1:
            raise OptionError("`workers` must be at least 1.")
    elif len(workers) != 2 or not 1 <= workers[0] <= workers[1]:
        raise OptionError(f"`workers` {workers!r}: give a number or (min, max) with 1 <= min <= max.")
    if batch_size < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise OptionError("`chunk_rows` and `cpus_per_worker` must be positive, `gpus_per_worker` not negative.")
    paths = expand_inputs(inputs)
    fmt = _input_format(paths, input_format)
    model_path = Path(model_dir).resolve()
    labels = list(ModelConfig.load(model_path).labels)  # a bad model folder fails here, before Ray starts
    _check_output(output_dir, overwrite, paths)
    schemes = {p.split("://", 1)[0] if _is_uri(p) else "" for p in paths}
    if len(schemes) > 1:
        raise InputError("Inputs mix filesystems (local paths and URIs, or several schemes); use one per job.")
    scheme = f"{schemes.pop()}://" if _is_uri(paths[0]) else ""

    ray = _import_ray()
    started = _ensure_ray(ray, ray_address)
    if started and _is_local(ray_address):  # this machine only: a pool that cannot fit would wait forever
        n_min = workers if isinstance(workers, int) else workers[0]
        have = ray.cluster_resources()
        for what, each in (("CPU", cpus_per_worker), ("GPU", gpus_per_worker)):
            if each and n_min * each > have.get(what, 0):
                ray.shutdown()
                raise EmolabelError(f"{n_min} worker(s) x {each:g} {what}(s) each need more than the "
                                    f"{have.get(what, 0):g} {what}(s) of this machine; use fewer workers "
                                    f"or fewer {what}s per worker.")
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, getattr(ctx, "print_on_execution_start", None))
    ctx.enable_progress_bars = False
    if saved[1] is not None:
        ctx.print_on_execution_start = False
    # Ray Data logs every failure with a full traceback on stderr; the EmolabelError raised here
    # says it once, plainly. Its session log file (/tmp/ray/session_latest/logs/ray-data/) keeps all.
    console = [h for h in logging.getLogger("ray.data").handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    saved_levels = [h.level for h in console]
    for h in console:
        h.setLevel(logging.CRITICAL)

    n_max = workers if isinstance(workers, int) else workers[1]
    io_tasks = max(2, n_max)
    threads = max(1, int(cpus_per_worker))
    remote = _is_uri(output_dir)
    fs = target = None
    start = time.perf_counter()
    try:
        if remote:
            fs, target = _prepare_uri_output(output_dir, overwrite)
            write_to = output_dir
        else:
            import pyarrow.fs as pafs

            fs = pafs.LocalFileSystem()
            parent, base = os.path.split(os.path.abspath(output_dir))
            write_to = os.path.join(parent, f"{base}.emolabel-tmp-{uuid.uuid4().hex[:12]}")
            target = write_to

        source_cls = _datasource_class()
        try:
            datasource = source_cls(paths, fmt=fmt, text_column=text_column, labels=labels, prefix=prefix,
                                    id_column=id_column, chunk_rows=batch_size, scheme=scheme)
        except (OSError, ValueError, pa.ArrowException) as e:  # listing: a missing file or prefix
            raise InputError(f"Cannot read {', '.join(paths[:5])}: {e}") from None
        read_tasks = TaskPoolStrategy(size=max(1, min(io_tasks, datasource.n_files)))
        ds = ray.data.read_datasource(datasource, num_cpus=READ_WRITE_CPUS, compute=read_tasks)
        # The ids are in the rows now; splitting into batch-sized blocks lets several actors
        # share one file (a Parquet file is otherwise one block).
        ds = ds.repartition(target_num_rows_per_block=batch_size)
        _zero_cpu(ds)
        compute = (ActorPoolStrategy(size=workers) if isinstance(workers, int)
                   else ActorPoolStrategy(min_size=workers[0], max_size=workers[1]))
        with warnings.catch_warnings():
            # max_restarts / max_task_retries have no named parameter in Ray 2.60 yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
            ds = ds.map_batches(
                LabelerActor,
                compute=compute,
                batch_format="pyarrow",
                batch_size=batch_size,
                num_cpus=cpus_per_worker,
                num_gpus=gpus_per_worker or None,
                fn_constructor_kwargs=dict(model_dir=str(model_path), text_column=text_column, prefix=prefix,
                                           device=device, precision=precision, threads=threads,
                                           crash_marker=os.environ.get(CRASH_ENV) or None),
                udf_modifying_row_count=False,
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_RESTARTS,
            )
        try:
            with warnings.catch_warnings():  # Ray's note that a small input cannot use every task slot
                warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
                _write(ds, write_to, output_format, io_tasks)
        except Exception as e:  # noqa: BLE001 - Ray wraps our errors; find ours, else name the inputs
            ours = _find_emolabel_error(e)
            if ours is not None:
                raise ours from None
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise EmolabelError(f"The Ray job labelling {', '.join(paths[:5])}"
                                f"{' ...' if len(paths) > 5 else ''} failed: {first} (Ray's logs: "
                                "/tmp/ray/session_latest/logs/)") from e

        parts = _part_files(fs, target)
        rows, empty = _count(fs, parts, output_format, prefix)
        with fs.open_output_stream(f"{target.rstrip('/')}/{SUCCESS}") as f:  # the very last file
            f.write(b"")
        if not remote:
            _move_into_place(write_to, output_dir)
            final = os.path.abspath(output_dir)
            parts = [os.path.join(final, os.path.relpath(p, write_to)) for p in parts]
        else:
            parts = [f"{output_dir.split('://', 1)[0]}://{p}" for p in parts]
    except BaseException:
        if fs is not None and target is not None:
            with contextlib.suppress(Exception):
                if remote:
                    fs.delete_dir_contents(target, missing_dir_ok=True)
                else:
                    shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        ctx.enable_progress_bars = saved[0]
        if saved[1] is not None:
            ctx.print_on_execution_start = saved[1]
        for h, level in zip(console, saved_levels):
            h.setLevel(level)
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - start
    return {"rows": rows, "empty": empty, "seconds": seconds, "rows_per_s": rows / seconds if seconds > 0 else 0.0,
            "output_dir": output_dir, "files": parts}


def _move_into_place(tmp: str, output_dir: str) -> None:
    """Rename the finished temporary folder to `output_dir`, replacing an old one only now."""
    old = None
    if os.path.lexists(output_dir):
        old = f"{output_dir.rstrip('/')}.emolabel-old-{uuid.uuid4().hex[:12]}"
        os.rename(output_dir, old)
    try:
        os.rename(tmp, output_dir)
    except OSError as e:
        if old is not None:
            os.rename(old, output_dir)
        raise OutputError(f"Cannot move the finished output to {output_dir}: {e.strerror or e}.") from None
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
