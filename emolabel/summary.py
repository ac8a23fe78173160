"""Summary: what a tag run did (rows, empty, truncated, uncertain, non-English, labels, time),
whichever engine ran it; counted from the label columns written, kept in a checkpoint for resume."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Summary:
    """What a tag run did, whichever engine ran it (one printer renders it: cli._print_summary)."""

    rows: int = 0
    empty: int = 0  # rows with no text: null label and probabilities
    truncated: int = 0  # texts longer than max_length, cut
    uncertain: int = 0  # rows whose top probability is under min_score: no label
    non_english: int = 0  # rows whose text looks like another language (language.looks_non_english)
    seconds: float = 0.0  # from the call to the end, start-up (model load, Ray) included
    startup: float = 0.0  # of `seconds`, the part before labelling began (reading the model, ...)
    label_counts: Counter = field(default_factory=Counter)
    skipped_lines: list = field(default_factory=list)  # on_error skip: line numbers (file:line for several files)
    resumed: int = 0  # rows committed by an interrupted run and not labelled again
    output: str = ""  # where the rows went ("-": stdout)
    files: list[str] = field(default_factory=list)  # an engine that writes a folder: its part files
    engine: str = "local"
    types: dict[str, str] = field(default_factory=dict)  # detect_types: each column's type, as read
    precision: str = ""  # the precision that ran and why, e.g. "bf16 (auto: ...)"; "" where each worker chose

    @property
    def rows_per_s(self) -> float:
        """The labelling rate: rows labelled in this run per second after start-up."""
        busy = self.seconds - self.startup
        return (self.rows - self.resumed) / busy if busy > 0 else 0.0

    def add(self, labelled: pa.RecordBatch | pa.Table, prefix: str, truncated: int = 0, non_english: int = 0) -> None:
        """Count a labelled batch from its label columns (what was written is what is counted):
        without a status column (no min_score) a null label is a row without text."""
        from emolabel.labels import NO_TEXT

        label = labelled.column(prefix)
        status = f"{prefix}_status"
        empty = (pc.sum(pc.equal(labelled.column(status), NO_TEXT)).as_py() or 0
                 if status in labelled.schema.names else label.null_count)
        self.rows += labelled.num_rows
        self.empty += empty
        self.uncertain += label.null_count - empty
        self.truncated += truncated
        self.non_english += non_english
        for item in pc.value_counts(label).to_pylist():
            if item["values"] is not None:
                self.label_counts[item["values"]] += item["counts"]

    def merge(self, other: Summary) -> None:
        for name in ("rows", "empty", "truncated", "uncertain", "non_english"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.label_counts.update(other.label_counts)

    def stats(self) -> dict[str, Any]:
        """The counts a checkpoint keeps beside committed rows (and resume_from reads back)."""
        return {"rows": self.rows, "empty": self.empty, "truncated": self.truncated, "uncertain": self.uncertain,
                "non_english": self.non_english, "labels": dict(self.label_counts)}

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Summary:
        return cls(rows=int(stats.get("rows", 0)), empty=int(stats.get("empty", 0)),
                   truncated=int(stats.get("truncated", 0)), uncertain=int(stats.get("uncertain", 0)),
                   non_english=int(stats.get("non_english", 0)),
                   label_counts=Counter({k: int(v) for k, v in stats.get("labels", {}).items() if v}))
