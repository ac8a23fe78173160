"""May `--precision auto` run a model in bf16 on the CPU? Its bf16 labels against fp32's on labelled
tables (its validation tables unless told), recorded in the model folder as precision-check.json.

bf16 keeps 8 bits of mantissa: on the CPU it runs the batch-invariant forward (emolabel.invariant),
so a row's output is still a function of its text, but not fp32's function. A model earns bf16 as
auto's choice when, over all the rows of the tables, its accuracy is within 0.1 point of fp32's
(better is fine) and at least 99.5% of its labels are fp32's. The record names the weights it was
measured on (SHA-256): retrained weights in the same folder need a new check.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emolabel.config import WEIGHTS_NAME
from emolabel.errors import InputError, ModelError

CHECK_NAME = "precision-check.json"
FORMAT_VERSION = 1
MAX_ACCURACY_DROP = 0.001  # on each table bf16's accuracy may be at most 0.1 point (or one row) below fp32's
MIN_AGREEMENT = 0.995  # share of rows whose bf16 label is fp32's


def validation_tables(folder: Path) -> list[str]:
    """The validation tables named in the model folder's training.json."""
    path = folder / "training.json"
    try:
        tables = [t["path"] for t in json.loads(path.read_text())["validation"]]
    except (OSError, ValueError, KeyError, TypeError):
        tables = []
    if not tables:
        raise InputError(f"{path} names no validation tables (the model was not trained by emolabel finetune, "
                         "or the file is missing): give labelled tables to check on.")
    missing = [t for t in tables if not os.path.exists(t)]
    if missing:
        raise InputError(f"The validation table {missing[0]} named in {path} does not exist here: give the "
                         "labelled tables to check on.")
    return tables


def load_tables(model_dir: str | Path, tables: list[str] | None = None, text_column: str = "text",
                label_column: str = "label", input_format: str | None = None) -> list[Any]:
    """The labelled tables to check on (data.SourceData), read and checked before any model loads."""
    from emolabel.config import ModelConfig
    from emolabel.data import Source, load_sources

    folder = Path(model_dir)
    tables = list(tables) if tables else validation_tables(folder)
    labels = ModelConfig.load(folder).labels
    data, _ = load_sources([Source(t) for t in tables], input_format, text_column, label_column, labels,
                           "The model knows these labels only: check on tables labelled with them.")
    return data


def check(model_dir: str | Path, data: list[Any], on_rows: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score the tables (load_tables) in fp32 and in bf16 on the CPU and compare: what record() writes
    to precision-check.json. `on_rows` is told the rows scored as they go (twice each row)."""
    from emolabel.evaluate import predict_proba
    from emolabel.files import file_sha256
    from emolabel.inference import Labeler

    folder = Path(model_dir)
    probs = {}
    for precision in ("fp32", "bf16"):
        labeler = Labeler(folder, device="cpu", precision=precision)
        if precision == "bf16" and not labeler.invariant:
            raise ModelError(f"{folder}: only plain BERT encoders have the batch-invariant bf16 forward; this model "
                             "runs in fp32 on the CPU.")
        probs[precision] = [predict_proba(labeler, src.data.texts, on_rows) for src in data]
    per_table = [_compare(src.source.path, src.sha256, src.data.labels, p32, p16)
                 for src, p32, p16 in zip(data, probs["fp32"], probs["bf16"])]
    gold = np.concatenate([src.data.labels for src in data])
    overall = _compare("all", "", gold, np.concatenate(probs["fp32"]), np.concatenate(probs["bf16"]))
    passed = all(_holds(t) for t in per_table)  # every table, as the issue asks: a pooled mean hides one that drops
    import torch

    from emolabel.invariant import TILE, cpu_has_bf16

    return {"format_version": FORMAT_VERSION, "precision": "bf16", "passed": bool(passed),
            "rule": {"max_accuracy_drop": MAX_ACCURACY_DROP, "min_agreement": MIN_AGREEMENT},
            "weights_sha256": file_sha256(folder / WEIGHTS_NAME),
            "rows": overall["rows"], "accuracy_fp32": overall["accuracy_fp32"],
            "accuracy_bf16": overall["accuracy_bf16"], "agreement": overall["agreement"],
            "max_prob_diff": overall["max_prob_diff"], "tables": per_table,
            "measured_on": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                            "cpu_bf16_units": cpu_has_bf16(), "tile": TILE,
                            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}


def _holds(table: dict[str, Any]) -> bool:
    """One table passes: accuracy at most 0.1 point below fp32's (one row where a row is more, on a
    small table) and at least MIN_AGREEMENT of its labels fp32's."""
    allowed = max(MAX_ACCURACY_DROP, 1 / max(table["rows"], 1))
    return (table["accuracy_fp32"] - table["accuracy_bf16"] <= allowed + 1e-12
            and table["agreement"] >= MIN_AGREEMENT)


def _compare(path: str, sha256: str, gold: np.ndarray, p32: np.ndarray, p16: np.ndarray) -> dict[str, Any]:
    """Accuracy of each (a row with no text is wrong in both), label agreement, largest prob change."""
    ok = ~np.isnan(p32[:, 0])
    y32 = np.where(ok, np.nan_to_num(p32).argmax(1), -1)
    y16 = np.where(ok, np.nan_to_num(p16).argmax(1), -1)
    out = {"path": path, "rows": int(len(gold)), "accuracy_fp32": float((y32 == gold).mean()),
           "accuracy_bf16": float((y16 == gold).mean()), "agreement": float((y32 == y16).mean()),
           "max_prob_diff": float(np.abs(p32[ok] - p16[ok]).max()) if ok.any() else 0.0}
    return out | ({"sha256": sha256} if sha256 else {})


def record(model_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write `result` (from check()) to the model folder's precision-check.json, atomically."""
    from emolabel.safe_write import atomic_path

    path = Path(model_dir) / CHECK_NAME
    with atomic_path(path) as tmp:  # the usual mode, fsync, rename: as every file emolabel writes
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return path


def passed(model_dir: str | Path) -> bool:
    """True when the folder records a passing bf16 check on the weights it holds now."""
    from emolabel.files import file_sha256

    folder = Path(model_dir)
    try:
        rec = json.loads((folder / CHECK_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(rec, dict) or rec.get("format_version") != FORMAT_VERSION or rec.get("passed") is not True:
        return False
    try:
        return rec.get("weights_sha256") == file_sha256(folder / WEIGHTS_NAME)
    except OSError:
        return False
