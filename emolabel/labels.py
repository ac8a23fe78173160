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


def column_names(labels: list[str], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The columns tag adds: the label, its probability, then one probability per label."""
    return [prefix, f"{prefix}_score", *(f"{prefix}_{name}" for name in labels)]


def label_columns(probs: np.ndarray, labels: list[str], prefix: str = DEFAULT_PREFIX) -> dict[str, pa.Array]:
    """Columns for a (n, labels) probability array; rows of NaN (no text) become nulls."""
    valid = ~np.isnan(probs[:, 0]) if len(probs) else np.zeros(0, bool)
    best = np.where(valid, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
    names = np.asarray(labels, dtype=object)[best]
    mask = ~valid
    score = np.where(valid, np.nan_to_num(probs, nan=0.0).max(axis=1, initial=0.0), np.nan)
    cols = {
        prefix: pa.array(names, type=pa.string(), mask=mask),
        f"{prefix}_score": pa.array(score.astype(np.float32), type=pa.float32(), mask=mask),
    }
    for i, name in enumerate(labels):
        cols[f"{prefix}_{name}"] = pa.array(probs[:, i].astype(np.float32), type=pa.float32(), mask=mask)
    return cols


def append_columns(batch: pa.RecordBatch, probs: np.ndarray, labels: list[str], schema: pa.Schema) -> pa.RecordBatch:
    """The input batch, unchanged, with the label columns after it (`schema`: output_schema())."""
    prefix = schema.names[batch.num_columns]
    cols = label_columns(probs, labels, prefix)
    return pa.RecordBatch.from_arrays([*batch.columns, *cols.values()], schema=schema)


def output_schema(schema: pa.Schema, labels: list[str], prefix: str) -> pa.Schema:
    new = [pa.field(prefix, pa.string()), pa.field(f"{prefix}_score", pa.float32())]
    new += [pa.field(f"{prefix}_{name}", pa.float32()) for name in labels]
    return pa.schema([*schema, *new], metadata=schema.metadata)
