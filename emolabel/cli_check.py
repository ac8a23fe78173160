"""`emolabel check-bf16`: a thin client of precision_check.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from emolabel.config import FORMATS
from emolabel.errors import EmolabelError, to_click


@click.command("check-bf16")
@click.argument("tables", metavar="[TABLE]...", nargs=-1)
@click.option("--model", "model_dir", type=click.Path(), help="Model folder [the shipped model].")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--input-format", type=click.Choice(FORMATS))
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def check_bf16_command(tables: tuple[str, ...], model_dir: str | None, text_column: str, label_column: str,
                       input_format: str | None, quiet: bool) -> None:
    """Whether `--precision auto` may run a model in bf16 on the CPU: score labelled TABLEs (the
    validation tables in the model's training.json unless given) in fp32 and in bf16, and record
    the result in the model folder (precision-check.json). bf16 passes when, on every table,
    its accuracy is within 0.1 point (or one row) of fp32's and at least 99.5% of its labels are fp32's; auto
    then picks it on a CPU with bf16 units (AVX512-BF16 or AMX). Either way a row's output
    depends on its text alone: bf16 on the CPU runs a batch-invariant forward.

    \b
    Examples:
      emolabel check-bf16 --model weights/my-model
      emolabel check-bf16 ../shared/data/emotion/validation.csv --model weights/my-model
    """
    from rich.console import Console

    from emolabel import precision_check
    from emolabel.cli_train import EvalProgress
    from emolabel.config import default_model_dir
    from emolabel.signals import Interrupted, signals_raise

    err = Console(stderr=True, quiet=quiet, highlight=False)
    progress = EvalProgress(err, quiet)
    try:
        with signals_raise():
            folder = Path(model_dir) if model_dir else default_model_dir()
            data = precision_check.load_tables(folder, list(tables), text_column, label_column, input_format)
            with progress:
                progress.start(2 * sum(len(src.data.texts) for src in data))
                result = precision_check.check(folder, data, on_rows=lambda rows: progress.advance("fp32, bf16", rows))
            path = precision_check.record(folder, result)
    except EmolabelError as e:
        raise to_click(e) from None
    except Interrupted as e:
        err.print(f"[bold red]Interrupted[/] ({e}): nothing was written.", soft_wrap=True)
        sys.exit(128 + e.signum)
    for t in result["tables"]:
        click.echo(f"{t['path']}: {t['rows']:,} rows, accuracy fp32 {t['accuracy_fp32']:.2%} bf16 "
                   f"{t['accuracy_bf16']:.2%}, labels agree {t['agreement']:.2%}")
    verdict = "passed: --precision auto runs it in bf16 on a CPU with bf16 units" if result["passed"] else \
        "failed: --precision auto keeps fp32 on the CPU"
    click.echo(f"all {result['rows']:,} rows: accuracy fp32 {result['accuracy_fp32']:.2%} bf16 "
               f"{result['accuracy_bf16']:.2%}, labels agree {result['agreement']:.2%}; {verdict} (wrote {path})")
