"""Metrics (accuracy, macro-F1, per-class P/R/F1, confusion matrix, ECE) and eval reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: row = true label, column = predicted label."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1.mean()),
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
    return out


def write_report(metrics: dict[str, Any], folder: Path) -> list[Path]:
    """metrics.json and confusion_matrix.png (row-normalised colours, counts in the cells)."""
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / "metrics.json"
    js.write_text(json.dumps(metrics, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = metrics["labels"]
    cm = np.asarray(metrics["confusion_matrix"])
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
    ax.set_title(f"accuracy {metrics['accuracy']:.2%}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    png = folder / "confusion_matrix.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return [js, png]
