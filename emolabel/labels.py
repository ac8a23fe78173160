"""Logits -> probabilities -> label columns: the one place where probabilities are made."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DEFAULT_PREFIX = "emotion"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n, labels) logits in float32, numerically stable."""
    z = logits.astype(np.float32) / np.float32(temperature)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


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
                  min_score: float | None = None, *, score: bool = True, probabilities: bool = True,
                  top_k: int = 0) -> dict[str, pa.Array]:
    """Columns for a (n, labels) probability array, named as column_names() says; rows of NaN (no
    text) become nulls. With `min_score`, a row whose top probability is below it keeps its
    probabilities but gets no label (null) and the status "uncertain". The top-k columns rank
    every row with text whatever `min_score` says (ties: the first label, as the label's argmax)."""
    valid = ~np.isnan(probs[:, 0]) if len(probs) else np.zeros(0, bool)
    filled = np.nan_to_num(probs, nan=-1.0)
    best = np.where(valid, filled.argmax(axis=1), 0)
    names = np.asarray(labels, dtype=object)[best]
    mask = ~valid
    top = np.where(valid, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), np.nan)
    unsure = valid & (top < min_score) if min_score is not None else np.zeros(len(valid), bool)
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


def append_columns(batch: pa.RecordBatch, probs: np.ndarray, labels: list[str], schema: pa.Schema,
                   min_score: float | None = None, **which: bool | int) -> pa.RecordBatch:
    """The input batch, unchanged, with the label columns after it (`schema`: output_schema() with
    the same `which`: score, probabilities, top_k)."""
    prefix = schema.names[batch.num_columns]
    cols = label_columns(probs, labels, prefix, min_score, **which)
    return pa.RecordBatch.from_arrays([*batch.columns, *cols.values()], schema=schema)


def output_schema(schema: pa.Schema, labels: list[str], prefix: str, status: bool = False,
                  **which: bool | int) -> pa.Schema:
    """`schema` with the label columns after it (`which`: score, probabilities, top_k)."""
    empty = label_columns(np.zeros((0, len(labels)), np.float32), labels, prefix, 0.0 if status else None, **which)
    return pa.schema([*schema, *(pa.field(name, col.type) for name, col in empty.items())], metadata=schema.metadata)
