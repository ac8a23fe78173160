"""Shared test helpers: write and read tables in every format, invoke the CLI in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from click.testing import CliRunner

from emolabel.cli import cli

EXT = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}


def write_table(table: pa.Table, path: Path, fmt: str) -> Path:
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    else:
        with open(path, "w") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row) + "\n")
    return path


def read_bytes(data: bytes, fmt: str) -> pa.Table:
    if fmt == "csv":
        return pa_csv.read_csv(io.BytesIO(data), read_options=pa_csv.ReadOptions(block_size=16 << 20), convert_options=pa_csv.ConvertOptions(
            strings_can_be_null=True, quoted_strings_can_be_null=False))
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data))
    rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def read_path(path: Path, fmt: str) -> pa.Table:
    return read_bytes(path.read_bytes(), fmt)


def invoke(*args: str, input: bytes | None = None):
    """The CLI in-process (fast); stdout and stderr kept apart."""
    runner = CliRunner()
    return runner.invoke(cli, list(args), input=input, catch_exceptions=False)


def interrupt_after_two_chunks(monkeypatch) -> None:
    """An interrupted run: pipeline.label_chunk raises KeyboardInterrupt on its third chunk, so two
    chunks are committed (undo with monkeypatch.undo())."""
    from emolabel import pipeline

    real, calls = pipeline.label_chunk, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "label_chunk", dies_on_the_third)
