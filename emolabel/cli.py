"""The emolabel command line: parse options, call the library, render. No torch at import."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from emolabel import __version__
from emolabel.config import PRECISIONS
from emolabel.errors import EmolabelError

FORMATS = ["csv", "parquet", "jsonl"]


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop, clean up, exit 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into an Interrupted exception on the main thread."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _fail(e: EmolabelError) -> click.ClickException:
    return click.ClickException(str(e))


def _stderr_console(quiet: bool) -> Any:
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def _quiet_broken_pipe() -> None:
    """`| head` closed stdout: end quietly, as Unix tools do (exit 141 = 128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    sys.exit(141)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="emolabel")
def cli() -> None:
    """Label the emotion of text in bulk: CSV, Parquet or JSON Lines in, the same rows out with
    an emotion label and six probabilities (sadness, joy, love, anger, fear, surprise).

    \b
    Examples:
      emolabel tag input.csv -o out.parquet
      cat posts.jsonl | emolabel tag - --input-format jsonl > labelled.jsonl
      emolabel eval test.csv
      emolabel finetune train.csv --validation validation.csv -o weights/my-model
    """


@cli.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file, or - for stdout (with --engine ray: a folder of part files).")
@click.option("--input-format", type=click.Choice(FORMATS), help="Input format (default: from the file extension).")
@click.option("--output-format", type=click.Choice(FORMATS), help="Output format (default: from the extension).")
@click.option("--text-column", default="text", show_default=True, help="Column holding the text to label.")
@click.option("--model", "model_dir", type=click.Path(), help="Model folder (default: the shipped model).")
@click.option("--prefix", default="emotion", show_default=True, help="Name prefix of the added columns.")
@click.option("--batch-size", type=click.IntRange(1), help="Most rows per model batch [1024 GPU, 64 CPU].")
@click.option("--max-tokens", type=click.IntRange(2), help="Most padded tokens per batch [65536 GPU, 4096 CPU].")
@click.option("--max-length", type=click.IntRange(2), help="Truncate texts to this many tokens [model's, 128].")
@click.option("--chunk-rows", type=click.IntRange(1), help="Rows read, length-sorted and written at a time [65536 GPU, 8192 CPU; Ray: rows per actor call, 4096].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
              show_default=True, help="auto: bf16 on a GPU; int8 (per-channel dynamic quantization, -0.1 accuracy points) on the CPU.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for the model [all cores].")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV/JSON Lines input, e.g. latin-1.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A malformed CSV row or JSON line: stop, or leave it out and report its line.")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last committed chunk "
              "(same input, model and options; refused if any changed).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: a Ray cluster (pip install 'emolabel[ray]'); INPUT may be many "
                   "files, globs or object-store URIs.")
@click.option("--workers", help="Ray: model workers, N or MIN-MAX to autoscale [1-(CPUs-1), or one per GPU].")
@click.option("--cpus-per-worker", type=click.FloatRange(0.1), default=1.0, show_default=True, help="Ray: CPUs per worker.")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=0.0, show_default=True, help="Ray: GPUs per worker.")
@click.option("--ray-address", help="Ray: cluster address (default: RAY_ADDRESS, else a local Ray).")
@click.option("--id-column", help="Ray: input column that identifies rows (default: an added EMOTION_row_id).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary on stderr.")
def tag(
    inputs: tuple[str, ...],
    output: str,
    input_format: str | None,
    output_format: str | None,
    text_column: str,
    model_dir: str | None,
    prefix: str,
    batch_size: int | None,
    max_tokens: int | None,
    max_length: int | None,
    chunk_rows: int | None,
    device: str,
    precision: str,
    threads: int | None,
    encoding: str,
    on_error: str,
    overwrite: bool,
    resume: bool,
    engine: str,
    workers: str | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
    ray_address: str | None,
    id_column: str | None,
    quiet: bool,
) -> None:
    """Label every row of INPUT (a file, or - for stdin) and write it with emotion columns.

    Adds EMOTION (the label), EMOTION_score (its probability) and one EMOTION_<label>
    probability per label, after the input's own columns, rows in input order. Rows with no
    text get nulls. Formats come from the file extensions (.csv, .parquet, .jsonl/.ndjson,
    optionally .gz for input); stdin is sniffed (Parquet magic, a leading '{' for JSON Lines,
    else CSV) unless --input-format is given; stdout uses --output-format, else the input's
    format. CSV columns are read as text, so they round-trip exactly.

    A run from a file to a file commits its progress chunk by chunk beside the output
    (.OUTPUT.emolabel-resume/); after Ctrl-C, kill or a crash, the same command with --resume
    carries on from the last committed chunk. Nothing appears at the output path until every
    row is written.

    \b
    Examples:
      emolabel tag input.csv -o out.parquet
      emolabel tag posts.parquet -o posts.labelled.jsonl --text-column body
      cat posts.jsonl | emolabel tag - --input-format jsonl > labelled.jsonl
      emolabel tag big.csv -o - --output-format csv | head
      emolabel tag 'data/*.parquet' -o labelled/ --engine ray --workers 2-8
    """
    from emolabel import tables

    console = _stderr_console(quiet)
    if engine == "ray":
        _tag_ray(console, inputs, output, model_dir, text_column, prefix, input_format, output_format, id_column,
                 workers, cpus_per_worker, gpus_per_worker, chunk_rows, device, precision, ray_address, overwrite)
        return
    ray_only = {"--workers": workers, "--ray-address": ray_address, "--id-column": id_column,
                "--gpus-per-worker": gpus_per_worker or None, "--cpus-per-worker": None if cpus_per_worker == 1.0 else 1}
    misused = [k for k, v in ray_only.items() if v is not None]
    if misused:
        raise click.UsageError(f"{', '.join(misused)} only apply with --engine ray.")
    if len(inputs) != 1:
        raise click.UsageError("The local engine takes one INPUT; for many files use --engine ray.")
    input = inputs[0]
    try:
        in_fmt = tables.Format(input_format) if input_format else None
        out_fmt = tables.Format(output_format) if output_format else None
        if output != tables.STDIO and out_fmt is None:
            out_fmt = tables.format_from_suffix(output)
            if out_fmt is None:
                raise click.UsageError(
                    f"Cannot tell the output format from {output!r}; use a .csv, .parquet or .jsonl "
                    "name or --output-format."
                )
        checkpointed = output != tables.STDIO and input != tables.STDIO
        if resume and not checkpointed:
            raise click.UsageError("--resume needs an input file and an output file (not - for stdin/stdout).")
        tables.check_output(output, input, overwrite)
        if output == tables.STDIO and sys.stdout.isatty() and out_fmt is tables.Format.PARQUET:
            raise click.UsageError("Refusing to write Parquet to a terminal; use -o FILE.")
    except EmolabelError as e:
        raise _fail(e) from None

    writer = None
    reader = None
    try:
        with _signals_raise():
            from emolabel.inference import resolve_device

            dev = resolve_device(device)
            reader_chunk = chunk_rows or (65536 if dev.type == "cuda" else 8192)
            reader = tables.open_input(input, in_fmt, chunk_rows=reader_chunk, encoding=encoding, on_error=on_error)
            if out_fmt is None:  # stdout: the input's format unless told
                out_fmt = reader.format
                if sys.stdout.isatty() and out_fmt is tables.Format.PARQUET:
                    raise click.UsageError("Refusing to write Parquet to a terminal; pass --output-format.")
            from emolabel import pipeline
            from emolabel.config import ModelConfig, default_model_dir
            from emolabel.inference import Labeler

            pipeline.check_text_column(reader, text_column)  # before the model loads: fail fast
            folder = Path(model_dir) if model_dir else default_model_dir()
            labels = ModelConfig.load(folder).labels
            schema = pipeline.check_columns(reader, text_column, labels, prefix)
            labeler = Labeler(folder, device=device, precision=precision, batch_size=batch_size,
                              max_tokens=max_tokens, max_length=max_length, threads=threads)
            done = None
            if checkpointed:
                from emolabel import checkpoint

                options = {"text_column": text_column, "prefix": prefix, "chunk_rows": reader_chunk,
                           "max_length": labeler.max_length, "batch_size": labeler.batch_size,
                           "max_tokens": labeler.max_tokens, "precision": labeler.precision,
                           "device": labeler.device.type, "encoding": encoding, "on_error": on_error,
                           "input_format": reader.format.value, "output_format": out_fmt.value}
                writer = checkpoint.CheckpointWriter(output, out_fmt, schema,
                                                     checkpoint.fingerprint(input, folder, options), resume)
                done = writer.stats if writer.rows_done else None
                if resume and done:
                    console.print(f"resuming after {writer.rows_done:,} committed rows")
            else:
                writer = tables.Writer(output, out_fmt, schema)
            with _progress(console, reader.total_rows, quiet, done["rows"] if done else 0) as advance:
                summary = pipeline.tag(reader, writer, labeler, text_column, prefix, advance, resume_from=done)
            writer.commit()
            writer = None
    except BrokenPipeError:
        if writer is not None:
            writer.abort()
        _quiet_broken_pipe()
    except Interrupted as e:
        saved = getattr(writer, "rows_done", 0)
        if writer is not None:
            writer.abort(keep=True)
        where = "" if output == "-" else f" Nothing was written to {output}."
        if saved:
            how = f" {saved:,} labelled rows are saved: run the same command with --resume to continue."
        elif checkpointed:
            how = " No chunk was finished yet: run the same command again (--resume works too)."
        else:
            how = " Run the same command again to start over."
        console.print(f"[bold red]Interrupted[/] ({e}).{where}{how}", soft_wrap=True)
        sys.exit(128 + e.signum)
    except EmolabelError as e:
        if writer is not None:
            writer.abort()
        raise _fail(e) from None
    except BaseException:
        if writer is not None:
            writer.abort(keep=True)  # an unexpected crash: keep committed progress for --resume
        raise
    finally:
        if reader is not None:
            reader.close()
    _print_summary(console, summary, output)


def _tag_ray(console: Any, inputs: tuple[str, ...], output: str, model_dir: str | None, text_column: str,
             prefix: str, input_format: str | None, output_format: str | None, id_column: str | None,
             workers: str | None, cpus_per_worker: float, gpus_per_worker: float, chunk_rows: int | None,
             device: str, precision: str, ray_address: str | None, overwrite: bool) -> None:
    """--engine ray: the same model and batch code, run by Ray Data actors (emolabel/ray_engine.py)."""
    from emolabel.config import available_cpus, default_model_dir

    if output == "-":
        raise click.UsageError("--engine ray writes a folder of part files: give -o FOLDER.")
    pool: int | tuple[int, int]
    if workers:
        try:
            lo, _, hi = workers.partition("-")
            pool = (int(lo), int(hi)) if hi else int(lo)
        except ValueError:
            raise click.BadParameter("N or MIN-MAX, e.g. 4 or 1-8", param_hint="--workers") from None
    elif gpus_per_worker:
        pool = 1
    else:
        pool = (1, max(1, int((available_cpus() - 1) // cpus_per_worker)))

    try:
        with _signals_raise():
            from emolabel.ray_engine import tag_with_ray

            s = tag_with_ray(list(inputs), output, model_dir=str(model_dir or default_model_dir()),
                             text_column=text_column, prefix=prefix, input_format=input_format,
                             output_format=output_format or "parquet", id_column=id_column, workers=pool,
                             cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                             batch_size=chunk_rows or 4096, device=device, precision=precision,
                             ray_address=ray_address, overwrite=overwrite)
    except Interrupted as e:
        console.print(f"[bold red]Interrupted[/] ({e}). Nothing was written to {output}.")
        sys.exit(128 + e.signum)
    except EmolabelError as e:
        raise _fail(e) from None
    console.print(f"tagged {s['rows']:,} rows in {s['seconds']:.1f} s ({s['rows_per_s']:,.0f} rows/s) with Ray "
                  f"-> {s['output_dir']} ({len(s['files'])} part files); {s['empty']:,} empty", soft_wrap=True)


@contextmanager
def _progress(console: Any, total: int | None, quiet: bool, done: int = 0) -> Iterator[Callable[[int], None] | None]:
    """A Rich progress bar on stderr when it is a terminal; a no-op callback otherwise."""
    if quiet or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} rows/s" if task.speed else "- rows/s")

    columns: list[Any] = [TextColumn("tagging")]
    if total:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [MofNCompleteColumn() if total else TextColumn("{task.completed:,.0f} rows"), RowsPerSecond(),
                TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("tag", total=total, completed=done)
        yield lambda n: progress.advance(task, n)


def _print_summary(console: Any, s: Any, output: str) -> None:
    target = "stdout" if output == "-" else output
    labels = ", ".join(f"{k} {v:,}" for k, v in s.label_counts.most_common())
    extra = [f"{s.empty:,} empty", f"{s.truncated:,} truncated"]
    if s.skipped_lines:
        shown = ", ".join(map(str, s.skipped_lines[:10]))
        more = f" and {len(s.skipped_lines) - 10} more" if len(s.skipped_lines) > 10 else ""
        extra.append(f"{len(s.skipped_lines)} malformed line(s) skipped: {shown}{more}")
    console.print(
        f"tagged {s.rows:,} rows in {s.seconds:.1f} s ({s.rows_per_s:,.0f} rows/s) -> {target}; "
        + (f"{s.resumed:,} of them from the interrupted run; " if s.resumed else "") +
        f"{labels or 'no labels'}; {'; '.join(extra)}",
        soft_wrap=True,
    )


def main() -> None:
    cli(prog_name="emolabel")


from emolabel.cli_train import eval_command, finetune  # noqa: E402 - registers the commands

cli.add_command(finetune)
cli.add_command(eval_command)
