"""Length-grouped batches and their padding: one module for inference (tag, eval) and training.

Rows of token ids differ in length, and a batch is padded to its longest row, so rows of similar
length should share a batch. Inference sorts a chunk by length and cuts it by a row count and a
padded-token budget (`plan`, as text-embeddings-inference does): a batch's rows and width follow
from the lengths alone, which keeps outputs reproducible. Training shuffles first and sorts only
within windows (`shuffled`), so each epoch stays random while padding stays small. Both pad with
`pad`, each batch to its own longest row. numpy only: no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np


@dataclass(frozen=True)
class Tokens:
    """Token ids of many rows laid end to end: row i is flat[starts[i] : starts[i] + lengths[i]]."""

    flat: np.ndarray  # (total tokens,) int64
    lengths: np.ndarray  # (rows,) int64
    starts: np.ndarray  # (rows,) int64: where each row begins in flat

    @classmethod
    def from_ids(cls, ids: Sequence[Sequence[int]]) -> Tokens:
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        starts = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(flat, lengths, starts)

    def __len__(self) -> int:
        return len(self.lengths)


def pad(tokens: Tokens, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of these rows, each (len(rows), their longest length) int64: ids then pad_id."""
    lengths = tokens.lengths[rows]
    width = int(lengths.max())
    pos = np.arange(width)
    mask = pos[None, :] < lengths[:, None]  # (batch, width)
    gather = np.minimum(tokens.starts[rows][:, None] + pos[None, :], max(len(tokens.flat) - 1, 0))
    ids = np.where(mask, tokens.flat[gather], pad_id)  # (batch, width)
    return ids, mask.astype(np.int64)


def plan(sorted_lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[slice]:
    """Cut ascending lengths into consecutive batches of <= batch_size rows and <= max_tokens padded
    tokens (rows x the batch's longest row; None: rows only). A row over the budget is a batch alone."""
    out = []
    start = 0
    n = len(sorted_lengths)
    while start < n:
        end = start + 1
        while end < n and end - start < batch_size and (
                max_tokens is None or (end - start + 1) * sorted_lengths[end] <= max_tokens):
            end += 1
        out.append(slice(start, end))
        start = end
    return out


def shuffled(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 64) -> list[np.ndarray]:
    """Training batches (indices into `lengths`) for one epoch: shuffle, sort by length within
    windows of `window` batches, cut, shuffle the batches. Rows of similar length share a batch
    (little padding) while the epoch stays random; the same rng state gives the same batches."""
    order = rng.permutation(len(lengths))
    span = batch_size * window
    out = []
    for s in range(0, len(order), span):
        w = order[s : s + span]
        w = w[np.argsort(lengths[w], kind="stable")]
        out += [w[i : i + batch_size] for i in range(0, len(w), batch_size)]
    rng.shuffle(out)  # type: ignore[arg-type]
    return out
