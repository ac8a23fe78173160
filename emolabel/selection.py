"""Which columns a tag run writes: the input columns kept and the label columns added.

One record (Selection), made from TagOptions (`columns`, `probabilities`, `score`, `top_k`,
`prefix`, `min_score`) and the model's labels, that every engine and label_frame reads: the
checks, the output schema and the labelled batch all come from it, so a run writes the same
columns whichever way it was started. The defaults write what tag always wrote: every input
column, then the label, its score and one probability per label.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from emolabel.errors import OptionError
from emolabel.labels import DEFAULT_PREFIX, column_names, label_columns, output_schema

if TYPE_CHECKING:
    from emolabel.options import TagOptions


@dataclass(frozen=True)
class Selection:
    """The columns of a run's output for a model with `labels`."""

    labels: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX
    min_score: float | None = None  # given: a {prefix}_status column
    columns: tuple[str, ...] | None = None  # input columns written, in this order; None: all, in input order
    probabilities: bool = True  # {prefix}_<label> for every label
    score: bool = True  # {prefix}_score: the top label's probability
    top_k: int = 0  # {prefix}_top1 .. _topK and their _score: the K best labels, best first
    multi_label: bool = False  # the label column holds every label over the threshold (classifier.Spec)

    @classmethod
    def of(cls, options: TagOptions, labels: list[str] | tuple[str, ...], multi_label: bool = False) -> Selection:
        """The selection `options` make for a model with `labels` (TagOptions.check checked the types)."""
        return cls(tuple(labels), options.prefix, options.min_score, options.columns, options.probabilities, options.score,
                   options.top_k, multi_label)

    def which(self) -> dict[str, Any]:
        """labels.label_columns' keywords for the added columns."""
        return {"score": self.score, "probabilities": self.probabilities, "top_k": self.top_k}

    def added(self) -> list[str]:
        """The names of the columns a run adds, in order."""
        return column_names(list(self.labels), self.prefix, self.min_score is not None, **self.which())

    def kept(self, names: list[str], where: str, always: tuple[str, ...] = ()) -> list[str]:
        """The input columns written, of `names` (input `where`'s): `columns` in their order (a name
        the input lacks, or holds twice, is an OptionError), else all; `always` (columns emolabel
        itself adds to the input: each row's file, Ray's row id) are kept either way."""
        if self.top_k > len(self.labels):
            raise OptionError(f"`top_k` {self.top_k} is more than the model's {len(self.labels)} labels "
                              f"({', '.join(self.labels)}).")
        added = self.added()
        same = sorted({n for n in added if added.count(n) > 1})
        if same:  # a label named "top1" and top_k: two columns of one name
            raise OptionError(f"The added columns would name {', '.join(same)} twice (a label of the model has a "
                              "top-k column's name): leave `top_k` out.")
        if self.columns is None:
            return list(names)
        for name in self.columns:
            if name not in names:
                near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                near = near or [n for n in names if n.lower() == name.lower()]
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise OptionError(f"`columns` names {name!r}, which {where} does not have.{hint} Its columns: "
                                  f"{', '.join(names)}.")
        twice = sorted({n for n in self.columns if self.columns.count(n) > 1 or names.count(n) > 1})
        if twice:
            raise OptionError(f"`columns` names {', '.join(map(repr, twice))}, which is named twice (in `columns` "
                              f"or in {where}): name each column once.")
        return [*self.columns, *(n for n in always if n in names and n not in self.columns)]

    def output_schema(self, schema: pa.Schema, where: str, always: tuple[str, ...] = ()) -> pa.Schema:
        """The schema written for input `schema`: the kept columns, then the added ones."""
        names = self.kept(schema.names, where, always)
        if self.columns is None:  # every column, in order: duplicate names too (a pandas frame may have them)
            kept = schema
        else:
            kept = pa.schema([schema.field(n) for n in names], metadata=schema.metadata)
        return output_schema(kept, list(self.labels), self.prefix, self.min_score is not None, **self.which())

    def label(self, batch: pa.RecordBatch, probs: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
        """`batch`'s kept columns with the label columns made from `probs`, as `schema`
        (output_schema's) says."""
        n = len(schema) - len(self.added())
        kept = batch.columns[:n] if self.columns is None else [batch.column(name) for name in schema.names[:n]]
        cols = label_columns(probs, list(self.labels), self.prefix, self.min_score, self.multi_label, **self.which())
        return pa.RecordBatch.from_arrays([*kept, *cols.values()], schema=schema)
