"""Metrics (accuracy, macro-F1, per-class P/R/F1, confusion matrix, ECE, selective accuracy) and
eval over one or several labelled tables, with its report (metrics.json and pictures)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: row = true label, column = predicted label."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from the confusion matrix.

    macro-F1 is the mean over the labels the table has (support > 0): a table without love (TEC)
    or with three labels (EmoContext) is not marked down for labels it cannot hold; predicting such
    a label is still a miss, through the recall of the row's true label."""
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion_matrix": cm.tolist(),
    }


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean confidence and accuracy per equal-width confidence bin (the reliability diagram's points)."""
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = probs.argmax(axis=1) == y_true if len(probs) else np.zeros(0, bool)
    out = []
    edges = np.linspace(0.0, 1.0, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            out.append({"confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean()),
                        "rows": int(sel.sum())})
    return out


THRESHOLDS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # --min-score values eval reports


def selective_accuracy(probs: np.ndarray, y_true: np.ndarray, thresholds=THRESHOLDS) -> list[dict[str, float]]:
    """Coverage (share of rows labelled) and accuracy on them when rows whose top probability is
    below a threshold get no label: what `tag --min-score` trades."""
    ok = ~np.isnan(probs[:, 0])
    conf = np.where(ok, np.nan_to_num(probs, nan=0).max(axis=1), -1.0)
    correct = ok & (np.nan_to_num(probs, nan=0).argmax(axis=1) == y_true)
    out = []
    for t in thresholds:
        kept = conf >= t
        out.append({"min_score": float(t), "coverage": float(kept.mean()) if len(kept) else 0.0,
                    "accuracy": float(correct[kept].mean()) if kept.any() else float("nan")})
    return out


def evaluate_probs(probs: np.ndarray, y_true: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """All metrics for (n, labels) probabilities. A row with no text (NaN) counts as wrong."""
    n = len(labels)
    missing = np.isnan(probs[:, 0])
    y_pred = np.where(missing, (y_true + 1) % n, np.nan_to_num(probs, nan=0).argmax(axis=1))
    out = classification_metrics(y_true, y_pred, n)
    out["ece"] = expected_calibration_error(probs[~missing], y_true[~missing]) if (~missing).any() else 0.0
    out["rows"] = int(len(y_true))
    out["rows_without_text"] = int(missing.sum())
    out["labels"] = list(labels)
    out["per_class"] = {name: {"precision": out["precision"][i], "recall": out["recall"][i], "f1": out["f1"][i],
                               "support": out["support"][i]} for i, name in enumerate(labels)}
    out["selective"] = selective_accuracy(probs, y_true)
    out["selective_curve"] = selective_accuracy(probs, y_true, tuple(np.round(np.linspace(0, 0.98, 50), 2)))
    out["reliability"] = reliability(probs[~missing], y_true[~missing])
    return out


def eval_labels(folder: Path) -> list[str]:
    """The labels gold labels are matched to (by name, any case, or by id), read without loading the
    model; a multi-label model is refused: these metrics score one label per row."""
    from emolabel.classifier import spec
    from emolabel.errors import ModelError

    s = spec(folder)
    if s.multi_label:
        raise ModelError(f"{folder} is a multi-label model (problem_type multi_label_classification): eval scores "
                         "one label per row (accuracy, macro-F1, calibration of the top probability). Use `emolabel "
                         "tag` for its labels, or evaluate a single-label model.")
    return s.labels


def evaluate_tables(labeler: Any, tables: list[Any], styles: bool = False, on_table: Any = None,
                    on_rows: Callable[[str, int], None] | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Score `labeler` on labelled tables (data.SourceData, read and checked beforehand): one entry
    per table, and their mean (each table counting once). Returns the report and each table's probs.
    `on_table(entry)` follows each table; `on_rows(what, rows)` each few batches scored, where `what`
    names the table (and the style); rows_to_score() is their total."""
    from emolabel.styles import STYLES

    report: dict[str, Any] = {"model": str(labeler.model_dir), "precision": labeler.precision,
                              "device": str(labeler.device), "labels": list(labeler.labels), "tables": []}
    all_probs = []

    def score(texts: list[str], what: str) -> np.ndarray:
        return predict_proba(labeler, texts, (lambda rows: on_rows(what, rows)) if on_rows else None)

    for src in tables:
        probs = score(src.data.texts, src.source.path)
        m = evaluate_probs(probs, src.data.labels, labeler.labels)
        entry = {"path": src.source.path, "sha256": src.sha256} | m
        if styles:
            entry["styles"] = {}
            for name, fn in STYLES.items():
                sm = evaluate_probs(score([fn(t) if t else t for t in src.data.texts], f"{src.source.path} ({name})"),
                                    src.data.labels, labeler.labels)
                entry["styles"][name] = {k: sm[k] for k in ("accuracy", "macro_f1", "ece")}
        report["tables"].append(entry)
        all_probs.append(probs)
        if on_table:
            on_table(entry)
    report["mean"] = {k: float(np.mean([t[k] for t in report["tables"]])) for k in ("accuracy", "macro_f1", "ece")}
    return report, all_probs


def rows_to_score(tables: list[Any], styles: bool = False) -> int:
    """How many rows evaluate_tables scores: every table's, and again for each style."""
    from emolabel.styles import STYLES

    return sum(len(src.data.texts) for src in tables) * (1 + (len(STYLES) if styles else 0))


PROGRESS_BATCHES = 8  # batches between two on_rows calls: a few seconds on the CPU, one sync each on a GPU


def predict_proba(labeler: Any, texts: list[str], on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """labeler.predict_proba(texts), with `on_rows` told the rows scored every PROGRESS_BATCHES
    batches (one prepare over all the texts: the same batches, the same numbers)."""
    import pyarrow as pa

    return labeler.run(labeler.prepare(pa.array(texts, type=pa.string())), on_rows, PROGRESS_BATCHES)


def check_outputs(tables: list[str], model_dir: str | Path, predictions: str | None, report: str | None,
                  overwrite: bool) -> None:
    """Refuse, before any work, a --predictions file or --report folder that is an input (a table,
    or for the folder the model too), exists without `overwrite`, or has no format: safe_write's rules."""
    from emolabel import formats, outputs
    from emolabel.errors import OutputError
    from emolabel.safe_write import check_folder_target

    if predictions:
        fmt = formats.from_suffix(predictions)
        if fmt is None or not fmt.writable:
            raise OutputError(f"Cannot tell the format of `predictions` {predictions}; use a "
                              f"{formats.suffixes(formats.writable())} name.")
        for path in tables:
            outputs.check_output(predictions, path, overwrite)
    if report:
        check_folder_target(report, [*tables, str(model_dir)], overwrite, what="report")


def write_predictions(path: str, tables: list[Any], probs: list[np.ndarray], labels: list[str],
                      overwrite: bool = True) -> None:
    """Every row to `path` (.csv, .parquet, .jsonl, written atomically), in table order: its table,
    text, gold and predicted label, score, and whether it is wrong (no text counts as wrong, as
    above). Without `overwrite`, a file that appeared at `path` meanwhile is not replaced."""
    import pyarrow as pa

    from emolabel import formats
    from emolabel.errors import OutputError
    from emolabel.labels import label_columns
    from emolabel.outputs import Writer

    fmt = formats.from_suffix(path)
    if fmt is None or not fmt.writable:
        raise OutputError(f"Cannot tell the format of {path}; use a {formats.suffixes(formats.writable())} name.")
    parts = []
    for src, p in zip(tables, probs):
        cols = label_columns(p, labels)  # the label and score exactly as `tag` writes them
        gold = pa.array(np.asarray(labels, dtype=object)[src.data.labels], pa.string())
        parts.append(pa.table({
            "table": pa.array([src.source.path] * len(p), pa.string()),
            "text": pa.array(src.data.texts, pa.string()),
            "gold": gold, "predicted": cols["emotion"], "score": cols["emotion_score"],
            "wrong": pa.array(np.asarray(cols["emotion"].to_pylist(), dtype=object) != gold.to_numpy(zero_copy_only=False),
                              pa.bool_()),
        }))
    table = pa.concat_tables(parts)
    writer = Writer(path, fmt, table.schema, overwrite=overwrite)
    try:
        for batch in table.to_batches(65536):
            writer.write(batch)
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """metrics.json, a confusion matrix picture per table, and calibration.png: a reliability
    diagram and the coverage/accuracy curve of --min-score, one line per table. Built in a
    temporary sibling folder that replaces `folder` whole at the end (safe_write.atomic_folder)."""
    from emolabel.safe_write import atomic_folder

    with atomic_folder(folder) as tmp:
        names = _draw_report(report, tmp)
    return [folder / name for name in names]


def _draw_report(report: dict[str, Any], folder: Path) -> list[str]:
    """write_report's files, into `folder`; their names."""
    js = folder / "metrics.json"
    js.write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [js]
    labels = report["labels"]
    tables = report["tables"]
    for t in tables:
        cm = np.asarray(t["confusion_matrix"])
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2.5, 1.0 * len(labels) + 2))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_title(f"{Path(t['path']).name}: accuracy {t['accuracy']:.2%}, macro-F1 {t['macro_f1']:.3f}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        fig.tight_layout()
        png = folder / ("confusion_matrix.png" if len(tables) == 1 else f"confusion_matrix-{Path(t['path']).stem}.png")
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    fig, (rel, cov) = plt.subplots(1, 2, figsize=(11, 4.5))
    rel.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for t in tables:
        bins = t["reliability"]
        rel.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=Path(t["path"]).stem)
        sel = [s for s in t["selective_curve"]]
        cov.plot([s["coverage"] for s in sel], [s["accuracy"] for s in sel], label=Path(t["path"]).stem)
    rel.set(xlabel="confidence (top probability)", ylabel="accuracy", title="reliability", xlim=(0, 1), ylim=(0, 1))
    cov.set(xlabel="coverage (share of rows labelled)", ylabel="accuracy on labelled rows",
            title="--min-score: coverage against accuracy", xlim=(0, 1.01))
    rel.legend(fontsize=8)
    cov.legend(fontsize=8)
    fig.tight_layout()
    png = folder / "calibration.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    written.append(png)
    return [p.name for p in written]
