"""Forgiving inputs, faithful outputs: TSV and other delimiters, plain text lines, typed CSV,
JSON Lines keys and values that JSON cannot hold, and a first chunk small enough for `| head`."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from helpers import invoke

from emolabel.errors import EmolabelWarning, InputError


def test_a_semicolon_file_gets_a_hint_and_is_read_with_delimiter(tmp_path, tiny_model):
    src = tmp_path / "semi.csv"
    src.write_text('id;text\n1;i feel happy\n2;"sad; so sad"\n')
    r = invoke("tag", str(src), "-o", str(tmp_path / "x.csv"), "--model", str(tiny_model))
    assert r.exit_code == 2 and "--delimiter ';'" in r.stderr  # `text` does not fit the input: a usage error
    ok = invoke("tag", str(src), "--delimiter", ";", "-o", "-", "--model", str(tiny_model))
    assert ok.exit_code == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith('id,text,emotion') and lines[2].startswith('2,sad; so sad,')
    bad = invoke("tag", str(src), "--delimiter", ";;", "-o", "-", "--model", str(tiny_model))
    assert bad.exit_code == 2 and "one character" in bad.stderr  # a misused option
    (tmp_path / "x.jsonl").write_text('{"text": "hi"}\n')
    other = invoke("tag", str(tmp_path / "x.jsonl"), "--delimiter", ";", "-o", "-", "--model", str(tiny_model))
    assert other.exit_code == 2 and "--delimiter only apply to CSV input, and the input is jsonl" in other.stderr


def test_tsv_in_and_out_by_name(tmp_path, tiny_model):
    src = tmp_path / "in.tsv"
    src.write_text("id\ttext\n007\ti love you, really\n")
    r = invoke("tag", str(src), "-o", str(tmp_path / "out.tsv"), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    header, row = (tmp_path / "out.tsv").read_text().splitlines()
    assert header.split("\t")[:3] == ["id", "text", "emotion"]  # quoted only where needed: a comma is not the separator
    assert row.split("\t")[:2] == ["007", "i love you, really"]


def test_plain_text_lines_file_and_stdin(tmp_path, tiny_model):
    src = tmp_path / "notes.txt"
    src.write_bytes(b"i feel happy\n\nso sad today\r\nno newline at the end")
    r = invoke("tag", str(src), "-o", str(tmp_path / "out.jsonl"), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == ["i feel happy", "", "so sad today", "no newline at the end"]
    assert rows[1]["emotion"] is None and all(row["emotion"] for row in rows if row["text"])
    piped = invoke("tag", "-", "--input-format", "lines", "--model", str(tiny_model), input=b"i feel happy\n")
    assert piped.exit_code == 0 and piped.stdout.startswith("text,emotion")  # lines in: CSV out
    sniffed = invoke("tag", "-", "--model", str(tiny_model), input=b"i feel happy\n")
    assert sniffed.exit_code == 2 and "--input-format lines" in sniffed.stderr
    out = invoke("tag", str(src), "-o", str(tmp_path / "o.txt"), "--model", str(tiny_model))
    assert out.exit_code == 2 and "input format only" in out.stderr


def test_detect_types_and_empty_null_give_typed_parquet(tmp_path, tiny_model):
    src = tmp_path / "survey.csv"
    src.write_text("id,rating,ok,when,text\n1,4.5,true,2024-01-05T10:00:00,i feel happy\n2,,false,,\n"
                   "3,2,true,2024-02-01T00:00:00,123\n")
    plain = invoke("tag", str(src), "-o", str(tmp_path / "plain.parquet"), "--model", str(tiny_model))
    assert plain.exit_code == 0
    t = pq.read_table(tmp_path / "plain.parquet")
    assert t.schema.field("id").type == "string" and t.column("rating").to_pylist() == ["4.5", "", "2"]
    typed = invoke("tag", str(src), "-o", str(tmp_path / "typed.parquet"), "--detect-types", "--empty-null",
                   "--model", str(tiny_model))
    assert typed.exit_code == 0, typed.stderr
    t = pq.read_table(tmp_path / "typed.parquet")
    assert t.schema.field("id").type == "int64" and t.schema.field("ok").type == "bool"
    assert t.column("rating").to_pylist() == [4.5, None, 2.0]
    assert t.column("text").to_pylist() == ["i feel happy", None, "123"]  # the text column stays text
    assert str(t.schema.field("when").type).startswith("timestamp")  # ISO dates too, as the README says
    assert t.column("emotion").to_pylist()[1] is None


def test_detect_types_names_a_value_that_does_not_fit(tmp_path, tiny_model):
    from emolabel.inputs import open_input

    src = tmp_path / "drift.csv"
    src.write_text("id,text\n" + "".join(f"{i},hi\n" for i in range(200_000)) + "x7,hi\n")  # past the first block
    reader = open_input(str(src), detect_types=True, text_column="text", chunk_rows=8192)
    with pytest.raises(InputError, match=r"data row 200,001: column 'id' is int64.*'x7'.*leave `detect_types` out"):
        for _ in reader:
            pass


def test_json_lines_keep_an_empty_key_and_warn_about_nan(tmp_path, tiny_model):
    src = tmp_path / "in.jsonl"
    src.write_text('{"": "k1", "x": NaN, "text": "i feel happy"}\n{"": "k2", "x": 1.5, "text": "sad"}\n')
    with pytest.warns(EmolabelWarning, match="NaN or Infinity"):
        from emolabel import tag_file

        tag_file(str(src), str(tmp_path / "out.jsonl"), model=str(tiny_model))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r[""] for r in rows] == ["k1", "k2"] and "column_0" not in rows[0]
    assert rows[0]["x"] is None and rows[1]["x"] == 1.5
    r = invoke("tag", str(src), "-o", str(tmp_path / "out.parquet"), "--model", str(tiny_model))
    assert r.exit_code == 0 and "Warning" not in r.stderr  # Parquet keeps NaN
    assert str(pq.read_table(tmp_path / "out.parquet").column("x").to_pylist()[0]) == "nan"


def test_the_first_chunk_is_small_so_output_starts_within_seconds(tmp_path, tiny_model):
    from emolabel import tag_file
    from emolabel.pipeline import FIRST_CHUNK

    src = tmp_path / "in.csv"
    src.write_text("text\n" + "i feel happy\n" * 3000)

    class Record:
        def __init__(self):
            self.rows = []

        def start(self, *args):
            pass

        def advance(self, rows, position=None):
            self.rows.append(rows)

    rec = Record()
    tag_file(str(src), str(tmp_path / "out.csv"), model=str(tiny_model), chunk_rows=1000, progress=rec)
    assert rec.rows == [FIRST_CHUNK, 1000 - FIRST_CHUNK, 1000, 1000]


def test_a_huge_text_is_tokenized_in_part_with_the_same_result(tiny_model):
    """A 50 MB line was tokenized whole (7 GB) before truncation to max_length tokens."""
    import numpy as np

    from emolabel.inference import HUGE, Labeler

    lab = Labeler(tiny_model, device="cpu", precision="fp32")
    words = "i feel so happy today but sad angry love afraid".split()
    huge = " ".join(words[i % len(words)] for i in range(400_000))  # ~2 MB: past HUGE, far past the cut
    assert len(huge) > HUGE
    spaces = " " * 100_000 + "i feel sad"  # the cut text is empty: the whole text decides
    probs = lab.predict_proba([huge, huge[:5000], spaces, "i feel sad"])
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    np.testing.assert_allclose(probs[2], probs[3], atol=1e-6)
    prepared = lab.prepare(__import__("pyarrow").array([huge, "i feel sad"]))
    assert list(prepared.cut) == [0]  # counted as truncated, as before


def test_a_quoted_text_holding_row_like_lines_is_warned_about(tmp_path, tiny_model):
    """A stray quote that closes later merged rows into one text, exit 0 and no word."""
    import warnings

    from emolabel import tag_file

    stray = tmp_path / "stray.csv"
    stray.write_text('id,text\n1,ok\n2,"broken start\n3,fine\n4,fine"\n5,also fine\n')
    with pytest.warns(EmolabelWarning, match=r"data row 2: a quoted text spans 3 lines, and 2 of them look like rows"):
        s = tag_file(str(stray), str(tmp_path / "o.csv"), model=str(tiny_model))
    assert s.rows == 3  # every row as read: the warning says what may be wrong, nothing is changed
    real = tmp_path / "real.csv"
    real.write_text('id,text\n1,"a poem\nin two lines"\n2,"she said, ""hi""\nand left"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmolabelWarning)  # real multi-line texts: no warning
        tag_file(str(real), str(tmp_path / "r.csv"), model=str(tiny_model))


def test_parquet_on_stdin_with_no_room_to_buffer_it_is_a_clear_error(monkeypatch):
    """Parquet on stdin is spooled to TMPDIR; a full TMPDIR ended in an OSError traceback (found by a
    hostile pass)."""
    import io
    import sys
    import tempfile
    import types

    import pyarrow as pa

    from emolabel.inputs import open_input

    data = io.BytesIO()
    pq.write_table(pa.table({"text": ["hi"] * 10}), data)
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BufferedReader(io.BytesIO(data.getvalue()))))
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", lambda **kw: open("/dev/full", "wb"))  # noqa: SIM115
    with pytest.raises(InputError, match="ran out of room .*set TMPDIR"):
        open_input("-", chunk_rows=100)
