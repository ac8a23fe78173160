"""emolabel tag end to end on the tiny model: every format, file and stdio, order, nulls, errors."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from helpers import EXT, interrupt_after_two_chunks, invoke, read_bytes, read_path, write_table

from emolabel.config import EMOTIONS
from emolabel.inference import Labeler

FORMATS = ["csv", "parquet", "jsonl"]
NEW = ["emotion", "emotion_score", *(f"emotion_{e}" for e in EMOTIONS)]


def sample_table(n: int = 57, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    words = "i feel so happy sad angry today love afraid little bit scared surprised".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(n)]
    if n > 7:
        texts[3] = ""  # empty
        texts[7] = "   "  # whitespace only
    return pa.table({"id": [str(i) for i in range(n)], "text": texts, "label": [str(i % 6) for i in range(n)]})


@pytest.mark.parametrize("out_fmt", FORMATS)
@pytest.mark.parametrize("in_fmt", FORMATS)
def test_every_format_file_to_file(tmp_path, tiny_model, in_fmt, out_fmt):
    table = sample_table()
    src = write_table(table, tmp_path / f"in{EXT[in_fmt]}", in_fmt)
    dst = tmp_path / f"out{EXT[out_fmt]}"
    r = invoke("tag", str(src), "-o", str(dst), "--model", str(tiny_model), "--chunk-rows", "10")
    assert r.exit_code == 0, r.output
    out = read_path(dst, out_fmt)
    assert out.num_rows == table.num_rows
    assert out.column_names == ["id", "text", "label", *NEW]
    assert [str(v) for v in out.column("id").to_pylist()] == table.column("id").to_pylist()  # order kept
    assert out.column("text").to_pylist()[10:] == table.column("text").to_pylist()[10:]
    labels = out.column("emotion").to_pylist()
    assert labels[3] is None and labels[7] is None
    assert all(v in EMOTIONS for i, v in enumerate(labels) if i not in (3, 7))
    probs = np.array([out.column(f"emotion_{e}").to_pylist() for e in EMOTIONS], dtype=float).T
    ok = ~np.isnan(probs).any(axis=1)
    assert ok.sum() == table.num_rows - 2
    np.testing.assert_allclose(probs[ok].sum(axis=1), 1.0, atol=1e-5)
    assert "tagged 57 rows" in r.stderr and "2 empty" in r.stderr
    assert not list(tmp_path.glob(".*emolabel-tmp"))  # no temporary file left behind


@pytest.mark.parametrize("fmt", FORMATS)
def test_stdin_to_stdout(tmp_path, tiny_model, fmt):
    table = sample_table(23)
    data = write_table(table, tmp_path / f"in{EXT[fmt]}", fmt).read_bytes()
    r = invoke("tag", "-", "--input-format", fmt, "--output-format", fmt, "--model", str(tiny_model), input=data)
    assert r.exit_code == 0, r.stderr
    out = read_bytes(r.stdout_bytes, fmt)
    assert out.num_rows == 23
    assert out.column_names[-len(NEW):] == NEW
    assert "tagged" not in r.stdout  # stdout carries data only


@pytest.mark.parametrize("fmt", FORMATS)
def test_stdin_format_is_sniffed_and_stdout_follows_input(tmp_path, tiny_model, fmt):
    data = write_table(sample_table(9), tmp_path / f"in{EXT[fmt]}", fmt).read_bytes()
    r = invoke("tag", "-", "--model", str(tiny_model), input=data)
    assert r.exit_code == 0, r.stderr
    assert read_bytes(r.stdout_bytes, fmt).num_rows == 9


def test_order_kept_and_same_probabilities_whatever_the_batching(tmp_path, tiny_model):
    """Length-sorted dynamic batches must give each row its own result, in input order."""
    table = sample_table(200, seed=1)
    texts = table.column("text").to_pylist()
    # the default precision (fp32 on the CPU); int8 quantizes activations per batch and is not
    one_by_one = Labeler(tiny_model, device="cpu", batch_size=1).predict_proba(texts)
    batched = Labeler(tiny_model, device="cpu", batch_size=7, max_tokens=64).predict_proba(texts)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    src = write_table(table, tmp_path / "in.csv", "csv")
    for chunk in ("1", "13", "1000"):
        r = invoke("tag", str(src), "-o", str(tmp_path / f"o{chunk}.parquet"), "--model", str(tiny_model),
                   "--chunk-rows", chunk, "--batch-size", "5")
        assert r.exit_code == 0
        out = read_path(tmp_path / f"o{chunk}.parquet", "parquet")
        got = np.array([out.column(f"emotion_{e}").to_pylist() for e in EMOTIONS], dtype=float).T
        np.testing.assert_allclose(got, one_by_one, atol=1e-5)


def test_batches_respect_the_token_budget(tiny_model):
    lb = Labeler(tiny_model, device="cpu", batch_size=100, max_tokens=64)
    prep = lb.prepare(pa.array(["happy " * k for k in range(1, 60)]))
    for ids, mask in prep.batches:
        assert ids.shape[0] * ids.shape[1] <= 64
        assert ids.shape == mask.shape
        assert mask[:, -1].any()  # padded only to the batch's own longest row
    assert sum(b[0].shape[0] for b in prep.batches) == 59


def test_truncation_is_counted(tmp_path, tiny_model):
    table = pa.table({"text": ["happy " * 500, "sad", "love " * 10]})
    src = write_table(table, tmp_path / "in.parquet", "parquet")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--max-length", "8")
    assert r.exit_code == 0
    assert "2 truncated" in r.stderr


def test_number_text_column_is_read_as_text(tmp_path, tiny_model):
    src = write_table(pa.table({"text": [1, 2, None, 4]}), tmp_path / "in.parquet", "parquet")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.parquet"), "--model", str(tiny_model))
    assert r.exit_code == 0
    out = read_path(tmp_path / "o.parquet", "parquet")
    assert out.column("text").to_pylist() == [1, 2, None, 4]  # input column unchanged
    assert out.column("emotion").null_count == 1


def test_missing_text_column_lists_the_available_ones(tmp_path, tiny_model):
    src = write_table(sample_table(3), tmp_path / "in.csv", "csv")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--text-column", "body")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: Column 'body' not found in {src}. Available columns: id, text, label. Use --text-column to choose."
    )
    assert not (tmp_path / "o.csv").exists()


def test_clashing_output_columns_are_refused(tmp_path, tiny_model):
    src = write_table(pa.table({"text": ["a"], "emotion": ["joy"]}), tmp_path / "in.csv", "csv")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert r.exit_code == 2 and "--prefix" in r.stderr
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--prefix", "pred")
    assert r.exit_code == 0
    assert read_path(tmp_path / "o.csv", "csv").column_names == ["text", "emotion", "pred", "pred_score",
                                                                  *(f"pred_{e}" for e in EMOTIONS)]


def test_header_only_input_gives_header_only_output(tmp_path, tiny_model):
    (tmp_path / "in.csv").write_text("id,text\n")
    r = invoke("tag", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "o.csv").read_text().splitlines()[0].startswith("id,text,emotion")  # quoted only where needed


def test_unknown_output_extension_is_a_usage_error(tmp_path, tiny_model):
    src = write_table(sample_table(3), tmp_path / "in.csv", "csv")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.xlsx"), "--model", str(tiny_model))
    assert r.exit_code == 2 and "--output-format" in r.stderr


def test_missing_model_folder(tmp_path):
    src = write_table(sample_table(3), tmp_path / "in.csv", "csv")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tmp_path / "nope"))
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1] == (f"Error: Model folder {tmp_path / 'nope'} does not exist: give --model a "
                                                 "model folder (emolabel's, or a Hugging Face sequence-classification folder).")
    assert not (tmp_path / "o.csv").exists()


def test_min_score_leaves_uncertain_rows_unlabelled_and_says_so(tmp_path, tiny_model):
    table = sample_table(60, seed=3)
    src = write_table(table, tmp_path / "in.csv", "csv")
    full = Labeler(tiny_model, device="cpu").predict_proba(table.column("text").to_pylist())
    ok = ~np.isnan(full[:, 0])
    cut = float(np.median(full[ok].max(1)))  # about half the rows fall under it
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.parquet"), "--model", str(tiny_model), "--min-score", str(cut))
    assert r.exit_code == 0, r.stderr
    out = read_path(tmp_path / "o.parquet", "parquet").to_pylist()
    unsure = 0
    for row, p, has in zip(out, full, ok):
        if not has:
            assert row["emotion"] is None and row["emotion_status"] == "no text"
        elif p.max() < np.float32(cut):
            unsure += 1
            assert row["emotion"] is None and row["emotion_status"] == "uncertain"
            assert row["emotion_score"] == pytest.approx(p.max(), abs=1e-6)  # probabilities are kept
        else:
            assert row["emotion"] == EMOTIONS[int(p.argmax())] and row["emotion_status"] == "labelled"
    assert unsure > 0 and f"{unsure:,} uncertain" in r.stderr
    lb = Labeler(tiny_model, device="cpu")
    texts = table.column("text").to_pylist()
    assert sum(x is None for x in lb.predict(texts, min_score=cut)) == unsure + int((~ok).sum())
    r = invoke("tag", str(src), "-o", str(tmp_path / "x.csv"), "--model", str(tiny_model), "--min-score", "1.5")
    assert r.exit_code == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_limit_labels_the_first_rows_only(tmp_path, tiny_model, fmt):
    table = sample_table(50, seed=4)
    src = write_table(table, tmp_path / f"in{EXT[fmt]}", fmt)
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.parquet"), "--model", str(tiny_model), "--limit", "23",
               "--chunk-rows", "10")
    assert r.exit_code == 0, r.stderr
    out = read_path(tmp_path / "o.parquet", "parquet")
    assert out.num_rows == 23 and out.column("text").to_pylist() == table.column("text").to_pylist()[:23]
    assert "tagged 23 rows" in r.stderr


def test_a_missing_column_suggests_the_near_one_and_a_number_column_is_warned_about(tmp_path, tiny_model):
    src = write_table(pa.table({"id": [1, 2], "Body": ["i feel happy", "i am sad"]}), tmp_path / "in.parquet", "parquet")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--text-column", "body")
    assert r.exit_code == 2 and "Did you mean 'Body'?" in r.stderr and "--text-column" in r.stderr
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--text-column", "id")
    assert r.exit_code == 0 and "Warning: column 'id'" in r.stderr and "holds int64 values, not text" in r.stderr
    assert "Text columns: Body; use --text-column" in r.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_local_inputs_in_file_order_with_a_source_column(tmp_path, tiny_model, fmt):
    parts = [sample_table(30, seed=k) for k in range(3)]
    paths = [write_table(t, tmp_path / f"part{k}{EXT[fmt]}", fmt) for k, t in enumerate(parts)]
    r = invoke("tag", *map(str, paths), "-o", str(tmp_path / "out.parquet"), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    out = read_path(tmp_path / "out.parquet", "parquet")
    assert out.column("text").to_pylist() == [t for p in parts for t in p.column("text").to_pylist()]
    assert out.column("emotion_source").to_pylist() == [str(p) for p in paths for _ in range(30)]
    # a quoted glob is the same files, in name order; one file alone has no source column
    g = invoke("tag", str(tmp_path / f"part*{EXT[fmt]}"), "-o", str(tmp_path / "g.parquet"), "--model", str(tiny_model))
    assert g.exit_code == 0 and read_path(tmp_path / "g.parquet", "parquet").equals(out)
    one = invoke("tag", str(paths[0]), "-o", str(tmp_path / "one.parquet"), "--model", str(tiny_model))
    assert "emotion_source" not in read_path(tmp_path / "one.parquet", "parquet").column_names
    assert one.exit_code == 0


def test_several_inputs_need_the_same_columns_format_and_each_given_once(tmp_path, tiny_model):
    a = write_table(sample_table(20), tmp_path / "a.csv", "csv")
    b = tmp_path / "b.csv"
    b.write_text("id,body\n1,hello\n")
    r = invoke("tag", str(a), str(b), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert r.exit_code == 1 and str(b) in r.stderr and "same columns" in r.stderr
    assert not (tmp_path / "o.csv").exists()
    j = write_table(sample_table(5), tmp_path / "c.jsonl", "jsonl")
    mixed = invoke("tag", str(a), str(j), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert mixed.exit_code == 1 and "Inputs mix formats" in mixed.stderr
    twice = invoke("tag", str(a), str(tmp_path / "." / "a.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert twice.exit_code == 1 and "is given twice" in twice.stderr
    overlap = invoke("tag", str(a), str(tmp_path / "*.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model),
                     "--text-column", "text")  # a glob overlapping a named file: each file once
    assert "is given twice" not in overlap.stderr


def test_resume_of_several_inputs_refuses_a_changed_second_input(tmp_path, tiny_model, monkeypatch):
    from emolabel import checkpoint, tag_file
    from emolabel.errors import OutputError

    a = write_table(sample_table(300, seed=1), tmp_path / "a.csv", "csv")
    b = write_table(sample_table(300, seed=2), tmp_path / "b.csv", "csv")
    out = tmp_path / "o.csv"
    interrupt_after_two_chunks(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tag_file([str(a), str(b)], str(out), model=str(tiny_model), chunk_rows=100)
    monkeypatch.undo()
    assert checkpoint.resume_dir(str(out)).exists() and not out.exists()
    b.write_text(b.read_text().replace("happy", "HAPPY"))
    with pytest.raises(OutputError, match="input"):
        tag_file([str(a), str(b)], str(out), model=str(tiny_model), chunk_rows=100, resume=True)


def test_progress_moves_by_bytes_for_csv_and_jsonl_files(tmp_path, tiny_model):
    """A CSV or JSON Lines file has no row count up front: the bar follows the bytes read."""
    from emolabel import tag_file

    class Record:
        def __init__(self):
            self.start_args, self.calls = None, []

        def start(self, total, done, total_bytes=None):
            self.start_args = (total, done, total_bytes)

        def advance(self, rows, position=None):
            self.calls.append((rows, position))

    for fmt in ("csv", "jsonl", "parquet"):
        src = write_table(sample_table(300), tmp_path / f"in{EXT[fmt]}", fmt)
        rec = Record()
        tag_file(str(src), str(tmp_path / f"out-{fmt}.csv"), model=str(tiny_model), chunk_rows=50, progress=rec)
        assert sum(rows for rows, _ in rec.calls) == 300
        if fmt == "parquet":
            assert rec.start_args == (300, 0, None) and all(p is None for _, p in rec.calls)
            continue
        size = src.stat().st_size
        assert rec.start_args == (None, 0, size)
        positions = [p for _, p in rec.calls]
        assert all(0 < p <= size for p in positions) and positions == sorted(positions)
