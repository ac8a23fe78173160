"""The Ray engine: label many files (local or object store) with a pool of model actors.

    import emolabel
    from emolabel.ray_engine import RayEngine
    emolabel.tag_file(["s3://bucket/in/*.parquet"], "s3://bucket/out", model="/models/emotion",
                      engine=RayEngine(workers=(1, 8), gpus_per_worker=1))

The same plan (plan.make_plan: every check and option, made once on the driver) and the same
pieces as the local engine (emolabel.engines says which), run by Ray Data; Ray's
internals are touched only in emolabel.ray_adapter. Install with `pip install 'emolabel[ray]'`.

* Read: each file is read by one task with inputs.open_stream (the plan's reader options) and its
  columns checked with columns.check_columns, as the plan checked the first file's. Ray resolves paths and filesystems: local paths, folders and
  object-store URIs (s3://, gs://, abfs://, hdfs://, file://); globs are expanded by files.py.
* Row ids: Ray does not keep row order, so every row carries a join key: `id_column`, or
  `{prefix}_row_id` = "<source path>#<0-based row in that file>". The index is counted inside the
  read of that file, which Ray replays from the first byte on a retry, so an id never changes.
  Only then is the dataset split into `chunk_rows`-row blocks for the actors.
* Label: an actor pool; each actor holds the plan's Labeler and runs pipeline.label_chunk, limited to
  its own CPUs. Actors restart and their batches are retried when a worker process dies; a dead
  task's output is never written, so each row is written exactly once. An EmolabelError (a
  missing column, a bad row) is not retried: the job fails with it, naming the file.
* Write: one part file per write task with outputs.TableWriter, counted as written; `_SUCCESS`
  last. A local output goes to a temporary sibling folder renamed into place at the end (deleted
  on failure or a signal; after a kill -9, by the next run to that output). Object stores cannot
  rename: parts go in place and only `_SUCCESS` tells a finished output.

Signals: Ctrl-C and SIGTERM end a job as they end a local run (exit 130/143, one line, Ray's
processes stopped); ray_adapter.signals_kept says how, what differs, and what a kill -9 leaves.

Limits: on a cluster, local inputs and the model folder must be on every node (or use object-store
inputs); one format and one filesystem per job; no row order (join on the id). Ray's core prints
one "constructor arguments in the object store and max_restarts > 0" line per job (#53727): harmless.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from emolabel import formats, outputs
from emolabel.errors import EmolabelError, InputError, InputOptionError, OptionError
from emolabel.files import is_uri
from emolabel.inputs import check_same_columns, open_stream
from emolabel.plan import TagPlan
from emolabel.ray_adapter import RAY_MISSING, READ_WRITE_CPUS
from emolabel.signals import Interrupted
from emolabel.summary import Summary

__all__ = ["RAY_MISSING", "RayEngine"]
CRASH_ENV = "EMOLABEL_RAY_CRASH_ONCE"  # tests only: names a marker file; the first actor to create it dies
SUCCESS = "_SUCCESS"
SOURCE_COLUMN = "__emolabel_source"  # internal: each row's file, for error messages; dropped by the actors
CUT_COLUMN = "__emolabel_cut"  # internal: True where a text was truncated; counted and dropped by the writer
FOREIGN_COLUMN = "__emolabel_foreign"  # internal: True where a text looks non-English; counted and dropped too
CHUNK_ROWS = 4096  # rows per actor call unless `chunk_rows` says: small enough for actors to share a file
MAX_RESTARTS = 4  # a dying actor restarts (its batch retried) this often; a crash that repeats ends the job


@dataclass(frozen=True)
class RayEngine:
    """`emolabel tag --engine ray`: the options of the Ray pool (TagOptions hold the rest)."""

    workers: int | tuple[int, int] | str | None = None  # N, (MIN, MAX) or "MIN-MAX"; None: see pool()
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: str | None = None  # None: RAY_ADDRESS, else a new Ray on this machine
    id_column: str | None = None  # None: an added {prefix}_row_id, "<file>#<row>"

    name: ClassVar[str] = "ray"
    writes_folder: ClassVar[bool] = True
    output_format: ClassVar[str] = "parquet"  # a folder has no suffix to tell
    chunk_rows: ClassVar[int] = CHUNK_ROWS
    unsupported: ClassVar[dict[str, str]] = {
        "resume": "a Ray job writes its part files anew; run it again",
        "limit": "files are read in parallel, so there are no 'first N rows'; try the local engine on one file",
        "on_error": "workers cannot report the lines they would skip; fix those rows, or use the local engine",
    }

    def pool(self) -> int | tuple[int, int]:
        """Actors: as given; else one per GPU job, or 1 to (CPUs - 1) CPU actors (one CPU for Ray)."""
        from emolabel.config import available_cpus

        w = self.workers
        if w is None:
            return 1 if self.gpus_per_worker else (1, max(1, int((available_cpus() - 1) // self.cpus_per_worker)))
        try:
            if isinstance(w, str):
                lo, _, hi = w.partition("-")
                w = (int(lo), int(hi)) if hi else int(lo)
            if isinstance(w, int) and w >= 1 or isinstance(w, tuple) and len(w) == 2 and 1 <= w[0] <= w[1]:
                return w
        except (ValueError, TypeError):
            pass
        raise OptionError(f"`workers` {self.workers!r}: give N or MIN-MAX with 1 <= MIN <= MAX, e.g. 4 or 1-8.")

    def check_settings(self) -> None:
        """The pool's settings (plan.make_plan calls this before anything is read)."""
        self.pool()
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise OptionError("`cpus_per_worker` must be positive, `gpus_per_worker` not negative.")

    def row_columns(self, prefix: str) -> tuple[str | None, str, tuple[str, ...]]:
        """The column the read tasks add as each row's id (None: `id_column` is the id), the join
        key written with every row, and the internal columns dropped before writing."""
        row_id = None if self.id_column else f"{prefix}_row_id"
        return row_id, self.id_column or f"{prefix}_row_id", (SOURCE_COLUMN,)

    def execute(self, plan: TagPlan, progress: Any = None) -> Summary:
        """Label every row of the plan's inputs into its output folder; see the module docstring."""
        from emolabel import ray_adapter as adapter
        from emolabel.config import available_cpus

        pool = self.pool()
        ray = adapter.import_ray()
        with adapter.signals_kept():  # SIGINT/SIGTERM stay the caller's (the CLI: exit 130/143)
            started_here = adapter.start(ray, self.ray_address, available_cpus())
            startup = time.perf_counter() - plan.started
            try:
                if started_here and adapter.is_local(self.ray_address):  # a pool that cannot fit would wait forever
                    adapter.check_fits(ray, pool if isinstance(pool, int) else pool[0], self.cpus_per_worker,
                                       self.gpus_per_worker)
                with adapter.quiet():
                    summary = self._job(ray, plan, pool)
            finally:
                if started_here:  # also on a signal: Ray's raylet, GCS and workers end with this process
                    ray.shutdown()
        summary.seconds, summary.startup = time.perf_counter() - plan.started, startup
        return summary

    def _job(self, ray: Any, plan: TagPlan, pool: int | tuple[int, int]) -> Summary:
        """The Ray Data job: read, label, write the parts (into a temporary folder renamed into place
        at the end, or in place on an object store), then `_SUCCESS`."""
        import pyarrow.fs as pafs

        from emolabel import ray_adapter as adapter

        io_tasks = max(2, pool if isinstance(pool, int) else pool[1])
        output, remote = plan.output, is_uri(plan.output)
        fs: Any = None
        target = None
        try:
            if remote:
                fs, target = outputs.prepare_uri_folder(output, plan.options.overwrite, SUCCESS)
                write_to = output
            else:
                fs = pafs.LocalFileSystem()
                outputs.remove_stale_temp_folders(output)
                write_to = target = outputs.temp_folder(output)
            ds = self._dataset(ray, plan, pool, io_tasks)
            sink = adapter.parts_sink(write_to, plan.output_format.name,
                                      functools.partial(_write_part, plan.output_format, plan.write_options),
                                      functools.partial(_count_part, plan.options.prefix))
            try:
                with warnings.catch_warnings():  # Ray's note that a small input cannot use every task slot
                    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
                    ds.write_datasink(sink, ray_remote_args={"num_cpus": READ_WRITE_CPUS}, concurrency=io_tasks)
            except Interrupted:  # Ctrl-C or kill: Ray Data re-raised it (from a SystemException of its own)
                raise
            except Exception as e:  # noqa: BLE001 - Ray wraps our errors; find ours, else name the inputs
                ours = adapter.emolabel_error(e)
                if ours is not None:
                    raise ours from None
                paths = plan.inputs
                first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise EmolabelError(f"The Ray job labelling {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''} "
                                    f"failed: {first} (Ray's logs: /tmp/ray/session_latest/logs/)") from e
            return self._finish(plan, sink.results, fs, target, write_to)
        except BaseException:
            if fs is not None and target is not None:
                with contextlib.suppress(Exception):
                    if remote:
                        fs.delete_dir_contents(target, missing_dir_ok=True)
                    else:
                        shutil.rmtree(target, ignore_errors=True)
            raise

    def _dataset(self, ray: Any, plan: TagPlan, pool: int | tuple[int, int], io_tasks: int) -> Any:
        """The labelled dataset: one read task per file, blocks of `chunk_rows`, the actor pool."""
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        from emolabel import ray_adapter as adapter

        paths, fmt, chunk = plan.inputs, plan.input_format, plan.options.chunk_rows
        scheme = f"{paths[0].split('://', 1)[0]}://" if is_uri(paths[0]) else ""  # Ray strips it
        read = functools.partial(_read_file, scheme=scheme, plan=plan, id_column=self.id_column)
        try:
            source = adapter.files_datasource(paths, read, parquet=fmt.seekable)
        except (OSError, ValueError, pa.ArrowException) as e:  # listing: a missing file or prefix
            raise InputError(f"Cannot read {', '.join(paths[:5])}: {e}") from None
        ds = ray.data.read_datasource(source, num_cpus=READ_WRITE_CPUS,
                                      compute=TaskPoolStrategy(size=max(1, min(io_tasks, len(paths)))))
        ds = ds.repartition(target_num_rows_per_block=chunk)  # after the ids: actors may share a file
        adapter.zero_cpu(ds)
        compute = ActorPoolStrategy(size=pool) if isinstance(pool, int) else ActorPoolStrategy(
            min_size=pool[0], max_size=pool[1])
        threads = plan.options.threads or max(1, int(self.cpus_per_worker))
        with warnings.catch_warnings():  # max_restarts / max_task_retries: no named parameter in Ray 2.60
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
            return ds.map_batches(
                LabelerActor, compute=compute, batch_format="pyarrow", batch_size=chunk,
                num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None,
                fn_constructor_kwargs=dict(plan=plan, threads=threads, crash_marker=os.environ.get(CRASH_ENV) or None,
                                           key=self.row_columns(plan.options.prefix)[1]),
                udf_modifying_row_count=False, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)

    def _finish(self, plan: TagPlan, results: list[dict], fs: Any, target: str | None, write_to: str) -> Summary:
        """The counts of every part, `_SUCCESS` written last, and the folder moved into place."""
        import pyarrow.fs as pafs

        first, output = plan.input_schema, plan.output
        summary = Summary(engine=self.name, output=output, types={f.name: str(f.type) for f in first}
                          if plan.options.detect_types and first is not None else {})
        for stats in results:
            summary.merge(Summary.from_stats(stats))
        infos = fs.get_file_info(pafs.FileSelector(target, recursive=True, allow_not_found=True))
        parts = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and not os.path.basename(i.path).startswith(("_", ".")))
        with fs.open_output_stream(f"{target.rstrip('/')}/{SUCCESS}") as f:  # the very last file
            f.write(b"")
        if is_uri(output):
            summary.files = [f"{output.split('://', 1)[0]}://{p}" for p in parts]
        else:
            outputs.move_folder_into_place(write_to, output)
            summary.files = [os.path.join(os.path.abspath(output), os.path.relpath(p, write_to)) for p in parts]
        return summary


# -- in the read tasks ------------------------------------------------------------------------


def _read_file(f: Any, path: str, *, scheme: str, plan: TagPlan, id_column: str | None) -> Iterator[pa.Table]:
    """One file, from its first byte: checked, each row given its id and its file."""
    import numpy as np
    import pyarrow.compute as pc

    from emolabel.columns import check_columns

    opts, fmt = plan.options, plan.input_format
    name = scheme + path
    stream = f if fmt.seekable else io.BufferedReader(f, 1 << 20)
    reader = open_stream(name, stream, fmt, chunk_rows=opts.chunk_rows, **plan.read_options)
    row_id = None if id_column else f"{opts.prefix}_row_id"
    check_columns(reader.schema, name, opts.text_column, plan.selection,
                  added=(row_id, SOURCE_COLUMN) if row_id else (SOURCE_COLUMN,), always=(id_column,) if id_column else ())
    if plan.input_schema is not None:  # then the same columns and types as the first file (the local engine's rule)
        check_same_columns(name, reader.schema, plan.inputs[0], plan.input_schema)
    names = reader.keys if reader.keys is not None else reader.schema.names  # JSON Lines kept as read: its keys
    if id_column is not None and id_column not in names:
        raise InputOptionError(f"`id_column` {id_column!r} not found in {name}. Available columns: {', '.join(names)}.")
    start = 0  # the row index within this file: counted here, in file order
    for batch in reader:
        n = batch.num_rows
        table = pa.Table.from_batches([batch])
        if row_id is not None:
            index = pc.cast(pa.array(np.arange(start, start + n)), pa.string())
            table = table.append_column(row_id, pc.binary_join_element_wise(f"{name}#", index, ""))
        table = table.append_column(SOURCE_COLUMN, pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [name]))
        start += n
        yield table


# -- in the actors ----------------------------------------------------------------------------


class LabelerActor:
    """One model per Ray actor: pyarrow tables in, the same tables with label columns out."""

    def __init__(self, plan: TagPlan, threads: int = 1, crash_marker: str | None = None, key: str | None = None):
        # Before the tokenizer's thread pool starts: one actor uses only its own CPUs
        # (oversubscribed threads were measured 10x slower).
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.labeler = plan.labeler(threads)
        self.options, self.crash_marker = plan.options, crash_marker
        self.selection = plan.selection
        self.key = (key,) if key else ()  # the join key (the row id or `id_column`): written whatever `columns` says

    def _maybe_crash(self) -> None:
        """Fault injection (tests only): die once, the first time any actor gets here."""
        if not self.crash_marker:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)

    def __call__(self, table: pa.Table) -> pa.Table:
        import numpy as np

        from emolabel.columns import as_text
        from emolabel.inference import release_free_memory
        from emolabel.language import looks_non_english
        from emolabel.pipeline import label_chunk

        self._maybe_crash()
        o = self.options
        src = table.column(SOURCE_COLUMN)
        files = sorted({str(v) for chunk in src.chunks for v in chunk.dictionary.to_pylist()})
        table = table.drop_columns([SOURCE_COLUMN])
        try:
            schema = self.selection.output_schema(table.schema, ", ".join(files) or "input", self.key)
            if table.num_rows == 0:
                return pa.schema([*schema, pa.field(CUT_COLUMN, pa.bool_()), pa.field(FOREIGN_COLUMN, pa.bool_())],
                                 metadata=schema.metadata).empty_table()
            batch = table.combine_chunks().to_batches()[0]
            texts = as_text(batch.column(o.text_column), ", ".join(files), o.text_column, None)
            prepared = self.labeler.prepare(texts)
            labelled = label_chunk(self.labeler, batch, prepared, schema, self.selection)
            release_free_memory()  # as the local engine: an actor's memory stays flat
            cut = np.zeros(batch.num_rows, bool)
            cut[prepared.cut] = True
            return (pa.Table.from_batches([labelled]).append_column(CUT_COLUMN, pa.array(cut))
                    .append_column(FOREIGN_COLUMN, pa.array(looks_non_english(texts))))
        except EmolabelError as e:
            raise type(e)(f"{', '.join(files) or 'input'}: {e}") from None
        except Exception as e:  # noqa: BLE001 - named by the file it came from, then raised on the driver
            raise EmolabelError(f"Labelling rows of {', '.join(files) or 'the input'} failed: "
                                f"{type(e).__name__}: {e}") from None


# -- in the write tasks -----------------------------------------------------------------------


def _count_part(prefix: str, table: pa.Table) -> tuple[pa.Table, dict]:
    """A part's counts (Summary.add, as the local engine counts), and the part without the
    internal columns."""
    import pyarrow.compute as pc

    summary = Summary()
    cut, foreign = table.column(CUT_COLUMN), table.column(FOREIGN_COLUMN)
    table = table.drop_columns([CUT_COLUMN, FOREIGN_COLUMN])
    summary.add(table, prefix, int(pc.sum(cut).as_py() or 0), int(pc.sum(foreign).as_py() or 0))
    return table, summary.stats()


def _write_part(fmt: formats.Format, options: outputs.WriteOptions, table: pa.Table, file: Any) -> None:
    writer = outputs.TableWriter(file, fmt, table.schema, options=options)
    writer.write(table)
    writer.close()
