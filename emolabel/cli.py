"""The emolabel command line: parse options, call the library, render. No torch at import."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from emolabel import __version__, formats
from emolabel.config import ENGINES, PARQUET_COMPRESSIONS, PRECISIONS
from emolabel.errors import EmolabelError
from emolabel.progress import ProgressBar, warnings_shown
from emolabel.signals import Interrupted, signals_raise


def _fail(e: EmolabelError) -> Exception:
    from emolabel.errors import to_click

    return to_click(e)


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
      emolabel label "i am so happy" "This made me cry."
      emolabel eval test.csv
      emolabel finetune train.csv --validation validation.csv -o weights/my-model
    """


@cli.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option("-o", "--output", default="-", show_default=True,
              help="Output file, or - for stdout (with --engine ray: a folder of part files).")
@click.option("--input-format", type=click.Choice(formats.readable()),
              help="Input format (default: from the file extension; lines: one text per line, as .txt).")
@click.option("--output-format", type=click.Choice(formats.writable()), help="Output format (default: from the extension; "
              "a name for another format is refused). -o x.csv.gz, .tsv.gz, .jsonl.gz (or .zst) compress.")
@click.option("--parquet-compression", type=click.Choice(PARQUET_COMPRESSIONS),
              help=f"Parquet output: the codec inside the file [{PARQUET_COMPRESSIONS[0]}].")
@click.option("--text-column", default="text", show_default=True, help="Column holding the text to label.")
@click.option("--model", type=click.Path(), help="Model folder: emolabel's, or a Hugging Face sequence-classification folder as it is (default: the shipped model).")
@click.option("--prefix", default="emotion", show_default=True, help="Name prefix of the added columns.")
@click.option("--batch-size", type=click.IntRange(1), help="Most rows per model batch [1024 GPU, 64 CPU].")
@click.option("--max-tokens", type=click.IntRange(2), help="Most padded tokens per batch [65536 GPU, 4096 CPU].")
@click.option("--max-length", type=click.IntRange(2), help="Truncate texts to this many tokens [model's, 128].")
@click.option("--chunk-rows", type=click.IntRange(1), help="Rows read, length-sorted and written at a time [65536 GPU, 8192 CPU; Ray: rows per actor call, 4096].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
              show_default=True, help="auto: bf16 on a GPU; on the CPU fp32, or bf16 for a model that passed "
              "`emolabel check-bf16`, on a CPU with bf16 units. bf16 on the CPU is batch-invariant. int8: faster "
              "on the CPU, but a row's numbers then depend on the rows batched with it.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for the model [all cores].")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV/JSON Lines input, e.g. latin-1.")
@click.option("--delimiter", help="CSV input: the field separator [a tab for .tsv, else ,], e.g. ';', or '\\t' "
              "or tab for a tab.")
@click.option("--detect-types", is_flag=True, help="CSV input: give numbers, booleans and ISO dates/timestamps their "
              "types where the type holds every value of the first 50,000 rows exactly (else the column stays "
              "text, as every column is without this flag); the text column stays text. The summary says the types.")
@click.option("--text-columns", metavar="A,B", callback=lambda ctx, param, value: _column_list(value) or (), help="With --detect-types: keep these columns as text (ids, codes).")
@click.option("--empty-null", is_flag=True, help="CSV input: an empty cell is null (else an empty string).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A malformed CSV row or JSON line: stop, or leave it out and report its line.")
@click.option("--min-score", type=click.FloatRange(0, 1),
              help="Rows whose top probability is below this get no label and EMOTION_status 'uncertain' "
                   "(see `emolabel eval` for the coverage each value gives). A multi-label model: the score each "
                   "label must reach to be in EMOTION (joined by |) [0.5].")
@click.option("--columns", metavar="LIST", callback=lambda ctx, param, value: _column_list(value), help="Write only these input columns, comma-separated, in this order "
              "(e.g. id,text; '' for none) [all].")
@click.option("--probabilities/--no-probabilities", default=True, show_default=True,
              help="The EMOTION_<label> probability columns, one per label.")
@click.option("--score/--no-score", default=True, show_default=True, help="EMOTION_score: the label's probability.")
@click.option("--top-k", type=click.IntRange(0), default=0, metavar="N",
              help="Add the N best labels, best first: EMOTION_top1, EMOTION_top1_score, ... EMOTION_topN_score.")
@click.option("--limit", type=click.IntRange(1), help="Label only the first N rows (a quick try on a big file).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last committed chunk "
              "(same input, model and options; refused if any changed).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local: this process. ray: a Ray cluster (pip install 'emolabel[ray]'); INPUT may be many "
                   "files, globs or object-store URIs.")
@click.option("--workers", help="Ray: model workers, N or MIN-MAX to autoscale [1-(CPUs-1), or one per GPU].")
@click.option("--cpus-per-worker", type=click.FloatRange(0.1), help="Ray: CPUs per worker [1].")
@click.option("--gpus-per-worker", type=click.FloatRange(0), help="Ray: GPUs per worker [0].")
@click.option("--ray-address", help="Ray: cluster address (default: RAY_ADDRESS, else a local Ray).")
@click.option("--id-column", help="Ray: input column that identifies rows (default: an added EMOTION_row_id).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary on stderr.")
def tag(inputs: tuple[str, ...], output: str, engine: str, workers: str | None, cpus_per_worker: float | None,
        gpus_per_worker: float | None, ray_address: str | None, id_column: str | None, quiet: bool,
        **fields: Any) -> None:
    """Label every row of INPUT (a file, or - for stdin) and write it with emotion columns.

    Adds EMOTION (the label), EMOTION_score (its probability) and one EMOTION_<label>
    probability per label, after the input's own columns, rows in input order (--columns,
    --no-score, --no-probabilities and --top-k choose). Rows with no text get nulls; texts
    that look non-English are counted in the summary. Formats come from the file extensions
    (.csv, .parquet, .jsonl/.ndjson, optionally .gz; .zst too for output); stdin is sniffed
    (Parquet magic, a leading '{' for JSON Lines, else CSV) unless --input-format is given;
    stdout uses --output-format, else the input's format. CSV columns are read as text and
    written quoted only where needed, so a CSV's fields come back byte for byte.

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
      emolabel tag big.csv -o labelled.csv.gz                 # gzipped as it is written
      emolabel tag reviews.csv -o out.csv --min-score 0.6     # no label where the model is unsure
      emolabel tag huge.parquet -o try.csv --limit 1000       # the first 1,000 rows only
      emolabel tag posts.csv -o slim.csv --columns id --no-probabilities --top-k 2
      emolabel tag a.csv b.csv -o both.parquet               # in order, with EMOTION_source
      emolabel tag survey.csv -o typed.parquet --detect-types --empty-null
      emolabel tag export.csv --delimiter ';' -o out.csv; emolabel tag notes.txt -o notes.csv
      echo "i am so happy" | emolabel tag - --input-format lines
      emolabel tag 'data/*.parquet' -o labelled/ --engine ray --workers 2-8
    """

    import time

    begun = time.perf_counter()  # the summary's start-up includes loading torch and the libraries
    import emolabel
    from emolabel import engines

    console = _stderr_console(quiet)
    progress = _Progress(console, quiet)
    try:
        with signals_raise(), progress, warnings_shown(console):
            runner = engines.make(engine, workers=workers, cpus_per_worker=cpus_per_worker,
                                  gpus_per_worker=gpus_per_worker, ray_address=ray_address, id_column=id_column)
            loading = time.perf_counter() - begun
            summary = emolabel.tag_file(list(inputs), output, progress=progress, engine=runner, **fields)
            summary.seconds, summary.startup = summary.seconds + loading, summary.startup + loading
    except BrokenPipeError:
        _quiet_broken_pipe()
    except Interrupted as e:
        from emolabel.checkpoint import saved_rows

        saved = saved_rows(output)
        where = "" if output == "-" else f" Nothing was written to {output}."
        if saved:
            how = f" {saved:,} labelled rows are saved: run the same command with --resume to continue."
        else:
            how = " Run the same command again to start over."
        console.print(f"[bold red]Interrupted[/] ({e}).{where}{how}", soft_wrap=True)
        sys.exit(128 + e.signum)
    except EmolabelError as e:
        raise _fail(e) from None
    _print_summary(console, summary, output)




@cli.command("label")
@click.argument("texts", metavar="TEXT...", nargs=-1, required=True)
@click.option("--model", "model_dir", type=click.Path(), help="Model folder: emolabel's, or a Hugging Face sequence-classification folder as it is (default: the shipped model).")
@click.option("--min-score", type=click.FloatRange(0, 1), help="Say 'uncertain' below this top probability (multi-label model: each label's threshold [0.5]).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text, with every probability.")
def label_command(texts: tuple[str, ...], model_dir: str | None, min_score: float | None, as_json: bool) -> None:
    """Label a few texts given on the command line. A TEXT of - reads one text per line from
    stdin, in its place among the others. Texts must be UTF-8.

    \b
    Examples:
      emolabel label "i am so happy" "This made me cry."
      echo "OMG it's here!!! 🎉" | emolabel label -
      cut -f2 notes.tsv | emolabel label "first, this one" -
      emolabel label "Package came on Tuesday." --min-score 0.6 --json
    """
    import json
    import warnings

    import pyarrow as pa

    import emolabel
    from emolabel.errors import EmolabelWarning, cli_words
    from emolabel.labels import DEFAULT_PREFIX as P

    lines = _label_texts(texts)
    try:
        labeler = emolabel.load(model_dir, device="cpu")
        with warnings.catch_warnings(record=True) as said:  # shown after the labels (e.g. texts in other languages)
            warnings.simplefilter("always", EmolabelWarning)
            table = emolabel.label_frame(pa.table({"text": pa.array(lines, pa.string())}), min_score=min_score,
                                         labeler=labeler)  # the columns `tag` writes
    except EmolabelError as e:
        raise _fail(e) from None
    for row in table.to_pylist():
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        elif row[f"{P}_score"] is None:
            click.echo(f"(no text)\t{row['text']}")
        else:
            best = max(labeler.labels, key=lambda name: row[f"{P}_{name}"])  # the first of a tie, as argmax
            what = f"{row[P] or best} {row[f'{P}_score']:.2f}"  # a multi-label model: its labels, joined
            click.echo(f"{what if row[P] else f'uncertain ({what})'}\t{row['text']}")
    for w in said:
        click.echo(f"Warning: {cli_words(str(w.message))}", err=True)


def _column_list(value: str | None) -> tuple[str, ...] | None:
    """--columns LIST: comma-separated names, spaces around them dropped; '' is no input column."""
    if value is None:
        return None
    names = tuple(name.strip() for name in value.split(","))
    return () if names == ("",) else names


def _label_texts(args: tuple[str, ...]) -> list[str]:
    """`label`'s texts: each argument, or for - the lines of stdin in its place; bytes that are not
    UTF-8 (an argument holds them as surrogate escapes) are an error naming the argument or line."""
    if args.count("-") > 1:
        raise click.UsageError("- (stdin) can be given once.")
    texts = []
    for n, arg in enumerate(args, 1):
        if arg != "-":
            texts.append(_utf8_text(os.fsencode(arg), f"TEXT argument {n}"))
            continue
        if sys.stdin is None:
            raise click.UsageError("- reads texts from stdin, which is closed.")
        data = sys.stdin.buffer.read()
        texts += [_utf8_text(line, f"stdin line {i}") for i, line in enumerate(data.splitlines(), 1)]
    return texts


def _utf8_text(data: bytes, where: str) -> str:
    """`data` as text; not UTF-8: an error naming `where` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(
            f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}: {data[:40]!r}). "
            "Convert it first, e.g. iconv -f latin1 -t utf-8.") from None


class _Progress(ProgressBar):
    """A Rich progress bar on stderr when it is a terminal (emolabel.tag_file's progress); silent otherwise."""

    _task: Any = None

    def start(self, total: int | None, done: int, total_bytes: int | None = None) -> None:
        """`total` rows (Parquet), else `total_bytes` of a CSV / JSON Lines file: the bar moves by
        bytes read, the count by rows; neither known (stdin): a row count and a rate."""
        if done:
            self.console.print(f"resuming after {done:,} committed rows")
        if not self.on:
            return
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rows(ProgressColumn):
            def render(self, task: Any) -> Text:
                rows, elapsed = task.fields["rows"], task.elapsed or 0
                of = f"/{task.total:,.0f}" if task.fields["by_rows"] and task.total else ""
                rate = f"{(rows - task.fields['done']) / elapsed:,.0f} rows/s" if elapsed > 0.5 and rows > task.fields["done"] else "- rows/s"
                return Text(f"{rows:,}{of} rows  {rate}")

        bar = total or total_bytes
        columns: list[Any] = [TextColumn("tagging")]
        if bar:
            columns += [BarColumn(), TaskProgressColumn()]
        columns += [Rows(), TimeElapsedColumn()]
        if bar:
            columns.append(TimeRemainingColumn())
        self._progress = Progress(*columns, console=self.console, transient=True)
        self._progress.start()
        by_rows = not (total is None and total_bytes)
        self._task = self._progress.add_task("tag", total=bar, completed=done if by_rows else 0, rows=done,
                                             done=done, by_rows=by_rows)

    def advance(self, rows: int, position: int | None = None) -> None:
        """`rows` more labelled; `position`: bytes read so far, when the bar is by bytes."""
        if self._progress is None:
            return
        task = self._progress.tasks[0]
        fields = {"rows": task.fields["rows"] + rows}
        if task.fields["by_rows"]:
            self._progress.update(self._task, advance=rows, **fields)
        else:
            self._progress.update(self._task, completed=position or task.completed, **fields)


def _print_summary(console: Any, s: Any, output: str) -> None:
    """One summary for every engine (pipeline.Summary)."""
    target = "stdout" if output == "-" else output
    if s.files:
        target += f" ({len(s.files)} part files)"
    labels = ", ".join(f"{k} {v:,}" for k, v in s.label_counts.most_common())
    extra = [f"{s.empty:,} empty", f"{s.truncated:,} truncated"]
    if s.uncertain:
        extra.insert(0, f"{s.uncertain:,} uncertain (under --min-score)")
    if s.skipped_lines:
        shown = ", ".join(map(str, s.skipped_lines[:10]))
        more = f" and {len(s.skipped_lines) - 10} more" if len(s.skipped_lines) > 10 else ""
        extra.append(f"{len(s.skipped_lines)} malformed line(s) skipped: {shown}{more}")
    if s.precision:
        extra.append(s.precision)
    if s.types:
        typed = [f"{k} {v}" for k, v in s.types.items() if v != "string"]
        extra.append(f"types: {', '.join(typed) or 'none'}; {'the other columns' if typed else 'every column'} text")
    if console.is_terminal and s.label_counts:  # a distribution reads faster as bars than as numbers
        top = max(s.label_counts.values())
        width = max(len(k) for k in s.label_counts)
        for name, n in s.label_counts.most_common():
            bar = "█" * max(1, round(30 * n / top))
            console.print(f"  {name:<{width}} [cyan]{bar}[/] {n:,} ({n / max(s.rows - s.empty, 1):.0%})")
    how = f" with {s.engine.capitalize()}" if s.engine != "local" else ""
    start = f"; {s.startup:.1f} s of it start-up" if s.startup >= 0.05 else ""
    console.print(
        f"tagged {s.rows:,} rows in {s.seconds:.1f} s{start} ({s.rows_per_s:,.0f} rows/s){how} -> {target}; "
        + (f"{s.resumed:,} of them from the interrupted run; " if s.resumed else "") +
        f"{labels or 'no labels'}; {'; '.join(extra)}",
        soft_wrap=True,
    )
    if s.non_english:
        console.print(_non_english_line(s.non_english), soft_wrap=True)


def _non_english_line(n: int) -> str:
    return (f"[yellow]{n:,} {'text looks' if n == 1 else 'texts look'} non-English[/]; labels there are unreliable "
            "(the model knows English only)")


def main() -> None:
    """Run the CLI, then leave without the interpreter's teardown.

    Background threads of the native libraries (pyarrow's readers, the Rust tokenizer's pool,
    torch's) can still be winding down when Python finalizes; a C++ thread destroyed then aborts
    the process ("terminate called without an active exception", exit 134) after the right
    message was printed, about half the time on a loaded machine. So the exit code is decided
    here, atexit handlers (Ray's shutdown among them) run, the streams are flushed, and the
    process ends with os._exit: the exit code is always the one the command chose.
    """
    import atexit

    if sys.stderr is None:  # started with stderr closed (2>&-): messages have nowhere to go, the work still counts
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    try:
        code = cli.main(prog_name="emolabel", standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        code = 130
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            click.echo(str(e.code), err=True)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed pipe or stream (None: closed at start)
            pass
    os._exit(code)


from emolabel.cli_check import check_bf16_command  # noqa: E402
from emolabel.cli_train import eval_command, finetune  # noqa: E402 - registers the commands

cli.add_command(finetune)
cli.add_command(eval_command)
cli.add_command(check_bf16_command)
