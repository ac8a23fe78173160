"""Logits -> probabilities -> label columns: the one place where probabilities are made."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DEFAULT_PREFIX = "emotion"
# A multi-label model (a sigmoid per label) labels a row with every label whose score reaches a
# threshold: `min_score` when given, else this (the usual cut for independent sigmoids). The
# labels of a row are joined by SEPARATOR, highest score first, into one string column: the
# same type in every output format (CSV holds no lists), split with .split("|").
MULTI_LABEL_THRESHOLD = 0.5
SEPARATOR = "|"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n, labels) logits in float32, numerically stable."""
    z = logits.astype(np.float32) / np.float32(temperature)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic of (n, labels) logits in float32: independent scores per label."""
    z = logits.astype(np.float32)
    with np.errstate(over="ignore"):  # exp(-z) overflows to inf for z < -88: the score is then 0
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def probabilities(logits: np.ndarray, temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
    """The model's logits as its scores: a softmax over the labels (one label per row), or with
    `multi_label` a sigmoid per label (any number of labels per row)."""
    return sigmoid(logits) if multi_label else softmax(logits, temperature)


# With a minimum score, a status column tells the three kinds of row apart.
LABELLED, UNCERTAIN, NO_TEXT = "labelled", "uncertain", "no text"


def column_names(labels: list[str], prefix: str = DEFAULT_PREFIX, status: bool = False, *, score: bool = True,
                 probabilities: bool = True, top_k: int = 0) -> list[str]:
    """The columns tag adds, in order: the label, its probability (`score`), one probability per
    label (`probabilities`), the `top_k` best labels with theirs ({prefix}_top1, {prefix}_top1_score,
    ...), and with a minimum score the status (labelled / uncertain / no text)."""
    names = [prefix] + ([f"{prefix}_score"] if score else [])
    names += [f"{prefix}_{name}" for name in labels] if probabilities else []
    for i in range(1, top_k + 1):
        names += [f"{prefix}_top{i}", f"{prefix}_top{i}_score"]
    return names + ([f"{prefix}_status"] if status else [])


def label_columns(probs: np.ndarray, labels: list[str], prefix: str = DEFAULT_PREFIX,
                  min_score: float | None = None, multi_label: bool = False, *, score: bool = True,
                  probabilities: bool = True, top_k: int = 0) -> dict[str, pa.Array]:
    """Columns for a (n, labels) probability array, named as column_names() says; rows of NaN (no
    text) become nulls. With `min_score`, a row whose top probability is below it keeps its
    probabilities but gets no label (null) and the status "uncertain". `multi_label`: the label is
    every label whose score reaches `min_score` (MULTI_LABEL_THRESHOLD when None), joined by
    SEPARATOR, highest first; none: null. The top-k columns rank every row with text whatever
    `min_score` says (ties: the first label, as the label's argmax)."""
    valid = ~np.isnan(probs[:, 0]) if len(probs) else np.zeros(0, bool)
    filled = np.nan_to_num(probs, nan=-1.0)
    mask = ~valid
    top = np.where(valid, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), np.nan)
    threshold = MULTI_LABEL_THRESHOLD if multi_label and min_score is None else min_score
    unsure = valid & (top < threshold) if threshold is not None else np.zeros(len(valid), bool)
    if multi_label:
        names = np.asarray(_joined(probs, labels, threshold), dtype=object)
    else:
        names = np.asarray(labels, dtype=object)[np.where(valid, filled.argmax(axis=1), 0)]
    cols = {prefix: pa.array(names, type=pa.string(), mask=mask | unsure)}
    if score:
        cols[f"{prefix}_score"] = pa.array(top.astype(np.float32), type=pa.float32(), mask=mask)
    if probabilities:
        for i, name in enumerate(labels):
            cols[f"{prefix}_{name}"] = pa.array(probs[:, i].astype(np.float32), type=pa.float32(), mask=mask)
    if top_k:
        order = np.argsort(-filled, axis=1, kind="stable")[:, :top_k]  # (n, top_k): best first
        for i in range(top_k):
            cols[f"{prefix}_top{i + 1}"] = pa.array(np.asarray(labels, dtype=object)[order[:, i]], type=pa.string(),
                                                    mask=mask)
            picked = np.take_along_axis(probs, order[:, i:i + 1], axis=1)[:, 0] if len(probs) else np.zeros(0)
            cols[f"{prefix}_top{i + 1}_score"] = pa.array(picked.astype(np.float32), type=pa.float32(), mask=mask)
    if min_score is not None:
        status = np.where(mask, NO_TEXT, np.where(unsure, UNCERTAIN, LABELLED)).astype(object)
        cols[f"{prefix}_status"] = pa.array(status, type=pa.string())
    return cols


def _joined(probs: np.ndarray, labels: list[str], threshold: float) -> list[str]:
    """Each row's labels scoring at least `threshold`, highest first (ties: label order), joined."""
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1, kind="stable")  # (n, labels)
    return [SEPARATOR.join(labels[i] for i in idx if row[i] >= threshold) for row, idx in zip(probs, order)]


def append_columns(batch: pa.RecordBatch, probs: np.ndarray, labels: list[str], schema: pa.Schema,
                   min_score: float | None = None, multi_label: bool = False, **which: bool | int) -> pa.RecordBatch:
    """The input batch, unchanged, with the label columns after it (`schema`: output_schema() with
    the same `which`: score, probabilities, top_k)."""
    prefix = schema.names[batch.num_columns]
    cols = label_columns(probs, labels, prefix, min_score, multi_label, **which)
    return pa.RecordBatch.from_arrays([*batch.columns, *cols.values()], schema=schema)


def output_schema(schema: pa.Schema, labels: list[str], prefix: str, status: bool = False,
                  **which: bool | int) -> pa.Schema:
    """`schema` with the label columns after it (`which`: score, probabilities, top_k)."""
    empty = label_columns(np.zeros((0, len(labels)), np.float32), labels, prefix, 0.0 if status else None, **which)
    return pa.schema([*schema, *(pa.field(name, col.type) for name, col in empty.items())], metadata=schema.metadata)
