"""Labelled tables for finetune and eval: reading, label checks, and weighted training sources.

A training source is a table plus a weight: `train.csv` or `extra.csv@0.5`. The weight is the
share of the source's rows drawn into each epoch, without replacement: 0.5 takes a fresh random
half every epoch, 1 every row once, 2 every row twice. So a large, noisy or off-balance source
can count for less than its size without being cut, and a small one for more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from emolabel import formats
from emolabel.config import EMOTIONS
from emolabel.errors import InputError
from emolabel.files import file_sha256
from emolabel.inputs import open_input


@dataclass
class LabelledData:
    """One table's texts and label ids (rows without text left out and counted, or kept for eval)."""

    texts: list[str | None]
    labels: np.ndarray  # (n,) int64 label ids
    dropped: int  # rows without text (left out, or with `keep_empty` kept in place)


def read_table(path: str, fmt: str | None, encoding: str = "utf-8") -> pa.Table:
    reader = open_input(path, formats.for_reading(fmt) if fmt else None, chunk_rows=65536, encoding=encoding)
    try:
        return pa.Table.from_batches(list(reader), schema=reader.schema)
    finally:
        reader.close()


def infer_labels(values: list[str]) -> list[str]:
    """The label set of a training column: ids 0..5 are the emotion dataset's names."""
    distinct = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in distinct):
        ids = sorted({int(v) for v in distinct})
        if ids and ids[0] >= 0 and ids[-1] < len(EMOTIONS):
            return list(EMOTIONS)
        return [str(i) for i in range(ids[-1] + 1)] if ids[0] >= 0 else [str(i) for i in ids]
    if set(distinct) <= set(EMOTIONS):
        return list(EMOTIONS)
    return distinct


LABELS_FIX = "Pass `labels` to give the full label set."  # finetune's; eval's labels are the model's
GIVEN_LABELS_FIX = "Add it to `labels`, or map or drop those rows."  # finetune's, when `labels` was given

# Words people write for the six emotions: a did-you-mean for a label that is none of them.
SYNONYMS = {"happiness": "joy", "happy": "joy", "joyful": "joy", "sad": "sadness", "angry": "anger",
            "afraid": "fear", "scared": "fear", "fearful": "fear", "surprised": "surprise", "loving": "love"}


def did_you_mean(label: str) -> str | None:
    """The one of the six emotions a label probably stands for (a synonym or a near spelling)."""
    import difflib

    key = label.strip().lower()
    if key in EMOTIONS or key in SYNONYMS:
        return key if key in EMOTIONS else SYNONYMS[key]
    close = difflib.get_close_matches(key, EMOTIONS, n=1, cutoff=0.75)
    return close[0] if close else None


def warn_unusual_labels(name: str, labels: list[str]) -> None:
    """A label set inferred from data that mixes the six emotions with other names is most often a
    typo ("happiness" for joy): it would silently train one more class, in alphabetical order."""
    odd = [v for v in labels if v not in EMOTIONS]
    if not odd or len(odd) == len(labels):  # all six's names, or a label set of the user's own
        return
    import warnings

    from emolabel.errors import EmolabelWarning

    hints = [f"{v!r} -> {m!r}?" for v in odd if (m := did_you_mean(v))]
    warnings.warn(EmolabelWarning(
        f"{name}: label(s) {', '.join(map(repr, odd))} are not among the usual six "
        f"({', '.join(EMOTIONS)}), so the model gets {len(labels)} labels, in this order: {', '.join(labels)}."
        + (f" Did you mean {' '.join(hints)}" if hints else "")
        + " Map such rows to the six, or pass `labels` to name the label set and its order."), stacklevel=2)


def labelled_data(table: pa.Table, name: str, text_column: str, label_column: str, labels: list[str] | None,
                  fix: str = LABELS_FIX, fold_case: bool = False, keep_empty: bool = False) -> tuple[LabelledData, list[str]]:
    """Texts and label ids of a table; every problem is reported before training starts. `fold_case`
    (eval): a label name matches whatever its case ("Joy" is joy), unless two labels differ only by it.
    Rows without text are left out (training learns nothing from them), or with `keep_empty` kept in
    place (eval counts them, as wrong)."""
    for col, field in ((text_column, "text_column"), (label_column, "label_column")):
        if col not in table.column_names:
            raise InputError(
                f"Column {col!r} not found in {name}. Available columns: {', '.join(table.column_names)}. "
                f"Use `{field}` to choose."
            )
    if table.num_rows == 0:
        raise InputError(f"{name} has no rows: nothing to train or validate on.")
    raw_labels = [None if v is None else str(v).strip() for v in table.column(label_column).to_pylist()]
    missing = [i for i, v in enumerate(raw_labels) if not v]
    if missing:
        raise InputError(f"{name}: row {missing[0] + 1} has no label in column {label_column!r} "
                         f"({len(missing)} such row{'' if len(missing) == 1 else 's'}). Every row needs a label.")
    if labels is None:
        labels = infer_labels(raw_labels)  # type: ignore[arg-type]
        warn_unusual_labels(name, labels)
        if len(labels) < 2:
            raise InputError(f"{name} has only one label ({labels[0]!r}); a classifier needs at least two. "
                             "Pass `labels` to name the full label set.")
    index = {n: i for i, n in enumerate(labels)}
    if fold_case:
        folded = [n.casefold() for n in labels]
        index = {f: i for i, f in enumerate(folded) if folded.count(f) == 1} | index  # an exact name wins

    def find(v: str) -> int | None:
        return index.get(v, index.get(v.casefold()) if fold_case else None)

    if all(v.lstrip("-").isdigit() for v in raw_labels):  # type: ignore[union-attr]
        ids = [int(v) for v in raw_labels]  # type: ignore[arg-type]
        bad = [(r, v) for r, v in enumerate(ids) if not 0 <= v < len(labels)]
        if bad:
            r, v = bad[0]
            raise InputError(f"{name}: row {r + 1} has label id {v}, outside 0..{len(labels) - 1} "
                             f"for labels {', '.join(labels)}. {fix}")
    else:
        unknown = [(r, v) for r, v in enumerate(raw_labels) if find(v) is None]  # type: ignore[arg-type]
        if unknown:
            r, v = unknown[0]
            others = sorted({u for _, u in unknown} - {v})
            more = f" (and {', '.join(map(repr, others[:5]))}{', ...' if len(others) > 5 else ''})" if others else ""
            hint = f" Did you mean {m!r}?" if (m := did_you_mean(v)) in index else ""  # type: ignore[arg-type]
            raise InputError(f"{name}: row {r + 1} has label {v!r}{more}, which is not one of {', '.join(labels)}."
                             f"{hint} {fix}")
        ids = [find(v) for v in raw_labels]  # type: ignore[arg-type]
    texts = table.column(text_column).cast(pa.string()).to_pylist()
    keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    if not keep:
        raise InputError(f"{name}: every row's text is empty.")
    if keep_empty:
        return LabelledData(texts, np.asarray(ids, dtype=np.int64), len(texts) - len(keep)), labels
    return LabelledData([texts[i] for i in keep], np.asarray(ids, dtype=np.int64)[keep], len(texts) - len(keep)), labels


@dataclass(frozen=True)
class Source:
    """A table to train or validate on; `weight` is the share of its rows in each training epoch."""

    path: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).stem


def parse_source(spec: str) -> Source:
    """`PATH` or `PATH@WEIGHT` (a path that exists as given is taken whole, '@' and all)."""
    if os.path.exists(spec) or "@" not in spec:
        return Source(spec)
    path, _, weight = spec.rpartition("@")
    try:
        w = float(weight)
    except ValueError:
        raise InputError(f"{spec!r}: the part after '@' must be a weight such as 0.5 (or {path!r} does not exist).") from None
    if not (w > 0 and np.isfinite(w)):
        raise InputError(f"{spec!r}: the weight must be a number above 0.")
    return Source(path, w)


def as_sources(x: str | Source | list[str | Source]) -> list[Source]:
    """One or several tables, as paths, `PATH@WEIGHT` specs or Sources."""
    items = x if isinstance(x, list | tuple) else [x]
    return [i if isinstance(i, Source) else parse_source(i) for i in items]


@dataclass
class SourceData:
    """A source's labelled rows, with where they came from."""

    source: Source
    data: LabelledData
    sha256: str

    @property
    def rows_per_epoch(self) -> int:
        return epoch_count(len(self.data.texts), self.source.weight)

    def record(self) -> dict:
        """For training.json: enough to tell later exactly what was trained on."""
        return {"path": self.source.path, "sha256": self.sha256, "rows": len(self.data.texts),
                "rows_without_text": self.data.dropped, "weight": self.source.weight,
                "rows_per_epoch": self.rows_per_epoch}


def load_sources(sources: list[Source], fmt: str | None, text_column: str, label_column: str,
                 labels: list[str] | None, fix: str = LABELS_FIX, fold_case: bool = False,
                 keep_empty: bool = False) -> tuple[list[SourceData], list[str]]:
    """Read and check every table (all before any model loads); the first fixes the label set
    unless `labels` is given. `keep_empty`: see labelled_data."""
    out = []
    for src in sources:
        data, labels = labelled_data(read_table(src.path, fmt), src.path, text_column, label_column, labels, fix,
                                     fold_case, keep_empty)
        out.append(SourceData(src, data, file_sha256(src.path)))
    return out, labels  # type: ignore[return-value]


def epoch_count(rows: int, weight: float) -> int:
    return max(1, round(rows * weight))


def epoch_rows(sizes: list[int], weights: list[float], rng: np.random.Generator) -> np.ndarray:
    """Row indices (into the sources laid end to end) for one epoch: round(weight x rows) of each
    source, whole passes first, then a random subset without replacement for the rest."""
    parts = []
    offset = 0
    for n, w in zip(sizes, weights):
        reps, rem = divmod(epoch_count(n, w), n)
        parts += [offset + np.arange(n, dtype=np.int64)] * reps
        if rem:
            parts.append(offset + np.sort(rng.choice(n, rem, replace=False)).astype(np.int64))
        offset += n
    return np.concatenate(parts)
