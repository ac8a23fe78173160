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


def column_names(labels: list[str], prefix: str = DEFAULT_PREFIX, status: bool = False) -> list[str]:
    """The columns tag adds: the label, its probability, one probability per label, and with a
    minimum score the status (labelled / uncertain / no text)."""
    return [prefix, f"{prefix}_score", *(f"{prefix}_{name}" for name in labels)] + ([f"{prefix}_status"] if status else [])


def label_columns(probs: np.ndarray, labels: list[str], prefix: str = DEFAULT_PREFIX,
                  min_score: float | None = None) -> dict[str, pa.Array]:
    """Columns for a (n, labels) probability array; rows of NaN (no text) become nulls. With
    `min_score`, a row whose top probability is below it keeps its probabilities but gets no label
    (null) and the status "uncertain"."""
    valid = ~np.isnan(probs[:, 0]) if len(probs) else np.zeros(0, bool)
    best = np.where(valid, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
    names = np.asarray(labels, dtype=object)[best]
    mask = ~valid
    score = np.where(valid, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), np.nan)
    unsure = valid & (score < min_score) if min_score is not None else np.zeros(len(valid), bool)
    cols = {
        prefix: pa.array(names, type=pa.string(), mask=mask | unsure),
        f"{prefix}_score": pa.array(score.astype(np.float32), type=pa.float32(), mask=mask),
    }
    for i, name in enumerate(labels):
        cols[f"{prefix}_{name}"] = pa.array(probs[:, i].astype(np.float32), type=pa.float32(), mask=mask)
    if min_score is not None:
        status = np.where(mask, NO_TEXT, np.where(unsure, UNCERTAIN, LABELLED)).astype(object)
        cols[f"{prefix}_status"] = pa.array(status, type=pa.string())
    return cols


def append_columns(batch: pa.RecordBatch, probs: np.ndarray, labels: list[str], schema: pa.Schema,
                   min_score: float | None = None) -> pa.RecordBatch:
    """The input batch, unchanged, with the label columns after it (`schema`: output_schema())."""
    prefix = schema.names[batch.num_columns]
    cols = label_columns(probs, labels, prefix, min_score)
    return pa.RecordBatch.from_arrays([*batch.columns, *cols.values()], schema=schema)


def output_schema(schema: pa.Schema, labels: list[str], prefix: str, status: bool = False) -> pa.Schema:
    new = [pa.field(prefix, pa.string()), pa.field(f"{prefix}_score", pa.float32())]
    new += [pa.field(f"{prefix}_{name}", pa.float32()) for name in labels]
    if status:
        new.append(pa.field(f"{prefix}_status", pa.string()))
    return pa.schema([*schema, *new], metadata=schema.metadata)
