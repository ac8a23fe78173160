"""Output writers: a pipe's reader that goes away, a suffix that names another format, compressed
outputs and Parquet's codec, and CSV written with minimal quoting (a CSV's fields come back byte
for byte)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PATIENCE, run_cli
from helpers import invoke

import emolabel
from emolabel import checkpoint, outputs
from emolabel.errors import OptionError, OutputError
from emolabel.pipeline import FIRST_CHUNK


def _random_csv(path: Path, n: int, seed: int = 0) -> Path:
    """Texts of random letters: incompressible, so each format's output is hundreds of KB."""
    rng = random.Random(seed)
    words = ["happy", "sad", "love", "angry", "afraid", "surprised", "today", "feel"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "text"])
        for i in range(n):
            noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(30))
            w.writerow([i, f"i feel {rng.choice(words)} {noise}"])
    return path


def _env() -> dict:
    e = dict(os.environ)
    e.pop("EMOLABEL_MODEL", None)
    return e


# -- 1. a reader that goes away ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_reader_that_goes_away_gives_141_in_every_format(tmp_path, tiny_model, fmt):
    """`| python -c "read(70000); exit(3)"`: Parquet was copied to stdout at the end in one write,
    which the kernel cut short when the reader left; Python's buffered stdout returned the short
    count without an error, and the run exited 0 with most of its rows lost."""
    src = _random_csv(tmp_path / "pay.csv", 6000)
    tagger = subprocess.Popen([sys.executable, "-m", "emolabel", "tag", str(src), "--model", str(tiny_model), "-o",
                               "-", "--output-format", fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env())
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.buffer.read(70000); sys.exit(3)"],
                              stdin=tagger.stdout)
    tagger.stdout.close()  # the reader holds the only read end
    err = tagger.communicate(timeout=PATIENCE)[1]
    assert reader.wait(timeout=PATIENCE) == 3
    assert tagger.returncode == 141, err.decode()
    assert b"Traceback" not in err


# -- 2. a closed pipe is noticed within a batch -----------------------------------------------

CHILD = r"""
import atexit, select, sys
from emolabel import inference
from emolabel.cli import main  # the console script's entry: exit code by os._exit, no native-thread teardown abort

first, mark, report = int(sys.argv[1]), sys.argv[2], sys.argv[3]
counted, at_close = [0], [None]
model_batches = inference.Labeler.logits

def logits(self, prepared):
    if at_close[0] is None and counted[0] >= first:  # the second chunk: the reader goes now
        open(mark, "w").close()
        watch = select.poll()
        watch.register(1, 0)
        while not watch.poll(50):  # until the parent has closed the pipe's read end (POLLERR)
            pass
        at_close[0] = counted[0]
    counted[0] += sum(len(ids) for ids, _ in prepared.batches)
    return model_batches(self, prepared)

inference.Labeler.logits = logits
atexit.register(lambda: open(report, "w").write(f"{at_close[0]} {counted[0]}"))
sys.argv = ["emolabel", *sys.argv[4:]]
main()
"""


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_closed_pipe_is_noticed_within_a_batch_not_a_chunk_later(tmp_path, tiny_model, fmt):
    """`| head -2` used to let a whole further chunk be labelled (8,192 rows on the CPU) before the
    next write failed; Parquet to stdout labelled every row before writing any. Counted in rows
    the model labelled after the reader left, not in seconds: a loaded machine changes nothing."""
    src = _random_csv(tmp_path / "in.csv", 3000)
    mark, report = tmp_path / "second-chunk", tmp_path / "counts"
    (tmp_path / "child.py").write_text(CHILD)
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(FIRST_CHUNK), str(mark), str(report),
                              "tag", str(src), "--model", str(tiny_model), "-o", "-", "--output-format", fmt,
                              "--chunk-rows", "1000", "--batch-size", "8", "-q"],
                             stdout=w, stderr=subprocess.PIPE, env=_env())
    os.close(w)
    err: list = []
    drain = threading.Thread(target=lambda: err.append(child.stderr.read()), daemon=True)
    drain.start()
    while not mark.exists() and child.poll() is None:  # the child waits for us there, however slow it is
        time.sleep(0.05)
    os.close(r)  # the reader goes away, as `head` does once it has its lines
    child.wait(timeout=PATIENCE)
    drain.join(PATIENCE)
    assert child.returncode == 141, err[0].decode()
    at_close, counted = map(int, report.read_text().split())
    assert at_close >= FIRST_CHUNK
    assert counted - at_close <= 2 * 8, f"{counted - at_close} rows labelled after the reader left"
    assert b"Traceback" not in err[0]


# -- 3. a suffix that names another format ----------------------------------------------------


def test_a_name_for_another_format_is_refused_in_a_real_process(tmp_path, tiny_model):
    src = _random_csv(tmp_path / "in.csv", 3)
    r = run_cli("tag", str(src), "--model", str(tiny_model), "-o", str(tmp_path / "x.csv"), "--output-format", "parquet")
    assert r.returncode == 2, r.stderr
    assert (b"x.csv is named .csv (csv) but --output-format is parquet" in r.stderr.replace(b"\n", b" ")
            and b"Traceback" not in r.stderr)
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("name, option, expect", [
    ("x.jsonl.gz", "csv", "is named .jsonl (jsonl) but --output-format is csv"),
    ("x.txt", "csv", "is named .txt (lines) but --output-format is csv"),
    ("x.parquet.gz", None, "Parquet is compressed inside the file, not as a whole (gzip); write"),
    ("x.gz", "parquet", "Parquet is compressed inside the file"),
    ("x.csv", None, "--parquet-compression only applies to Parquet output, and the output is csv"),
])
def test_names_that_do_not_fit_the_format_are_usage_errors(tmp_path, tiny_model, name, option, expect):
    src = _random_csv(tmp_path / "in.csv", 3)
    extra = ["--output-format", option] if option else ["--parquet-compression", "snappy"] if name == "x.csv" else []
    r = invoke("tag", str(src), "--model", str(tiny_model), "-o", str(tmp_path / name), *extra)
    assert r.exit_code == 2 and expect in " ".join(r.stderr.split()), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.mark.parametrize("name, option, fmt", [("labelled", "parquet", "parquet"), ("x.tsv", "csv", "csv"),
                                               ("x.gz", "jsonl", "jsonl"), ("x.json", "jsonl", "jsonl")])
def test_a_name_without_a_format_or_of_the_same_format_takes_the_option(name, option, fmt):
    assert outputs.output_format(name, option).name == fmt


# -- 4. compressed outputs and Parquet's codec ------------------------------------------------


@pytest.mark.parametrize("plain", ["o.csv", "o.tsv", "o.jsonl"])
@pytest.mark.parametrize("codec", [".gz", ".zst"])
def test_compressed_outputs_hold_the_plain_output_byte_for_byte(tmp_path, tiny_model, plain, codec):
    src = _random_csv(tmp_path / "in.csv", 600)
    opts = dict(model=str(tiny_model), chunk_rows=100)
    emolabel.tag_file(src, tmp_path / plain, **opts)
    emolabel.tag_file(src, tmp_path / (plain + codec), **opts)
    data = (tmp_path / (plain + codec)).read_bytes()
    if codec == ".gz":
        assert gzip.decompress(data) == (tmp_path / plain).read_bytes()
        if plain != "o.jsonl":
            import polars as pl

            back = pl.read_csv(io.BytesIO(gzip.decompress(data)), separator="\t" if plain == "o.tsv" else ",",
                               infer_schema=False)
            assert back.height == 600 and back.columns[:3] == ["id", "text", "emotion"]
    else:
        assert pa.CompressedInputStream(pa.BufferReader(data), "zstd").read() == (tmp_path / plain).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.csv", plain, plain + codec])  # no temp left


def test_a_failed_compressed_run_leaves_nothing_and_resumes_to_the_same_bytes(tmp_path, tiny_model, monkeypatch):
    """Resume commits Arrow parts and compresses in the final copy, as for plain outputs."""
    src = _random_csv(tmp_path / "in.csv", 300)
    whole = tmp_path / "whole.csv.gz"
    emolabel.tag_file(src, whole, model=str(tiny_model), chunk_rows=50)
    out = tmp_path / "out.csv.gz"

    def full(self, batch, stats=None):
        raise OutputError(f"Disk full while writing {self.target}; nothing was written there.")

    monkeypatch.setattr(outputs.Writer, "write", full)
    with pytest.raises(OutputError, match="Disk full"):
        emolabel.tag_file(src, out, model=str(tiny_model), chunk_rows=50)
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob(".out.csv.gz.*.emolabel-tmp"))
    assert json.loads((checkpoint.resume_dir(str(out)) / checkpoint.PROGRESS).read_text())["rows"] == 300
    summary = emolabel.tag_file(src, out, model=str(tiny_model), chunk_rows=50, resume=True)
    assert summary.resumed == 300
    assert out.read_bytes() == whole.read_bytes()  # gzip with no time or name in its header: the same bytes


@pytest.mark.parametrize("option, stored", [(None, "ZSTD"), ("snappy", "SNAPPY"), ("none", "UNCOMPRESSED")])
def test_parquet_compression(tmp_path, tiny_model, option, stored):
    src = _random_csv(tmp_path / "in.csv", 20)
    emolabel.tag_file(src, tmp_path / "o.parquet", model=str(tiny_model), parquet_compression=option)
    meta = pq.ParquetFile(tmp_path / "o.parquet").metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {stored}
    with pytest.raises(OptionError, match="Unknown `parquet_compression` 'gzip'"):
        emolabel.tag_file(src, tmp_path / "p.parquet", model=str(tiny_model), parquet_compression="gzip")


# -- 5. CSV with minimal quoting --------------------------------------------------------------

TRICKY = [
    ["007", "i feel happy, really", "a \"quoted\" word"],
    ["1", "line\nbreak", ""],
    ["", "café 🎉 ünïcödé", None],  # an empty string and a missing value: both an empty field
    ["3", "   ", "x\r\ny"],
    ["0042", "", " leading"],
    ["5", "tab\there", "trailing "],
    ["6", "\"starts with a quote", "ends with a quote\""],
    ["7", "i am so sad", "a;b|c"],
]


def test_csv_fields_come_back_byte_for_byte(tmp_path, tiny_model):
    """UTF-8, LF, comma-separated, minimally quoted (Python's csv) in: every input field is the
    same bytes out, before the label columns (pyarrow's writer quoted every string)."""
    src = tmp_path / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([["id", "text", "note"], *TRICKY])
    r = invoke("tag", str(src), "-o", str(tmp_path / "out.csv"), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    with open(src, newline="", encoding="utf-8") as f:
        rows_in = list(csv.reader(f))
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        rows_out = list(csv.reader(f))
    assert len(rows_out) == len(rows_in)
    assert [row[:3] for row in rows_out] == rows_in
    # raw bytes: each output record is the input record's bytes, a comma, then the label fields
    expect = b""
    for row_in, row_out in zip(rows_in, rows_out):
        record, labels = io.StringIO(), io.StringIO()
        csv.writer(record, lineterminator="\n").writerow(row_in)
        csv.writer(labels, lineterminator="\n").writerow(row_out[3:])
        expect += record.getvalue().encode()[:-1] + b"," + labels.getvalue().encode()
    assert (tmp_path / "out.csv").read_bytes() == expect
    assert src.read_bytes().startswith(b"id,text,note\n007,\"i feel happy, really\",")


def test_empty_string_and_null_stay_apart_where_the_input_holds_both(tmp_path, tiny_model):
    """Parquet (or JSON Lines) in: "" is written "" and a null as an empty field, as before."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "", None], "text": ["i feel happy", "so sad", "x, y"]}), src)
    emolabel.tag_file(src, tmp_path / "o.csv", model=str(tiny_model))
    lines = (tmp_path / "o.csv").read_bytes().splitlines()
    assert lines[0].startswith(b"id,text,emotion,")
    assert [line.split(b",")[0] for line in lines[1:]] == [b"a", b'""', b""]
    assert lines[3].startswith(b',"x, y",')


def test_a_delimiter_that_numbers_hold_is_quoted_in_numbers():
    """With '.' as the delimiter, 0.5 is "0.5" (pyarrow's writer left it bare: a broken file)."""
    from emolabel.csv_text import encode

    batch = pa.record_batch({"p": pa.array([0.5, None], pa.float32()), "t": ["a.b", "c"]})
    assert bytes(encode(batch, ".", False)) == b'"0.5"."a.b"\n.c\n'
    assert bytes(encode(batch, ",", True)) == b"0.5,a.b\n,c\n"
