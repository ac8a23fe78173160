"""Types on the way in: JSON Lines kept as read (or typed over the whole file, never by chunk),
one ISO 8601 form for timestamps written to JSON Lines, --detect-types that never loses a digit
(and --text-columns), --delimiter '\\t' / tab, and UTF-16 / utf-8-sig files with a BOM."""

from __future__ import annotations

import codecs
import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from emolabel import formats
from emolabel.errors import EmolabelWarning, InputError
from emolabel.inputs import open_input, open_stream

ADDED = ["emotion", "emotion_score"]


def cli(*args, input=None):
    """emolabel in a subprocess, stderr as text."""
    r = run_cli(*args, input=input)
    r.stderr = r.stderr.decode()
    return r


def tag(tiny_model, src, out, *extra):
    return cli("tag", str(src), "-o", str(out), "--model", str(tiny_model), "-q", *extra)


def test_json_lines_types_do_not_depend_on_chunk_rows(tmp_path):
    """A key null for the first 8,192 rows, then ints, bools, lists and objects came out as strings
    ("9000", "true", "[\\"a\\", \\"b\\"]") at the default --chunk-rows, typed with 20000."""
    from emolabel.jsonl import JsonLinesWriter

    src = tmp_path / "n.jsonl"
    with open(src, "w") as f:
        for i in range(8300):
            late = i >= 8192
            f.write(json.dumps({"text": "hi", "n": i if late else None, "b": True if late else None,
                                "l": ["a", "b"] if late else None, "o": {"k": i} if late else None}) + "\n")
    typed, kept = {}, {}
    for chunk in (100, 8192, 20000):
        typed[chunk] = pa.Table.from_batches(list(open_input(str(src), chunk_rows=chunk)))
        writer = JsonLinesWriter()
        batches = open_input(str(src), chunk_rows=chunk, keep_json=True, text_column="text")
        label = pa.array(["joy"] * chunk)
        kept[chunk] = b"".join(writer.dumps(pa.RecordBatch.from_arrays([*b.columns, label[: b.num_rows]],
                                                                       names=[*b.schema.names, "emotion"]))
                               for b in batches)
    assert typed[100].equals(typed[8192]) and typed[100].equals(typed[20000]) and kept[100] == kept[8192] == kept[20000]
    assert [str(t) for t in typed[100].schema.types] == ["string", "int64", "bool", "list<item: string>",
                                                        "struct<k: int64>"]
    last = json.loads(kept[100].splitlines()[-1])
    assert (last["n"], last["b"], last["l"], last["o"], last["emotion"]) == (8299, True, ["a", "b"], {"k": 8299}, "joy")


def test_the_reproducer_keeps_types_on_the_command_line(tmp_path, tiny_model):
    src = tmp_path / "n.jsonl"
    src.write_text("".join(json.dumps({"text": "hi", "n": None if i < 300 else i}) + "\n" for i in range(310)))
    r = tag(tiny_model, src, tmp_path / "o.jsonl", "--chunk-rows", "256")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o.jsonl").read_text().splitlines()[-1])["n"] == 309
    r = tag(tiny_model, src, tmp_path / "o.parquet", "--chunk-rows", "256")
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "o.parquet").column("n").to_pylist()[-1] == 309


def test_json_lines_to_json_lines_gives_each_object_back_as_read(tmp_path, tiny_model):
    """Numbers kept in their JSON form, absent keys absent, late keys kept, key order kept."""
    lines = ['{"text": "i feel happy", "x": 1, "big": 12345678901234567890123}',
             '{"x":2.5,"text":"so sad","late":{"a":[1, 2.0]}}',
             '  {"text": "caf\\u00e9 \u00e9", "x": 1e5, "": 0}  ',
             "{}",
             "{ }"]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    for extra in ([], ["--chunk-rows", "1"]):
        r = tag(tiny_model, src, tmp_path / "out.jsonl", "--overwrite", *extra)
        assert r.returncode == 0, r.stderr
        out = (tmp_path / "out.jsonl").read_text().splitlines()
        assert len(out) == len(lines)
        for line, got in zip(lines, out):
            head = line.strip()[:-1].rstrip()
            assert got.startswith(head), (line, got)
            assert list(json.loads(got)) == [*json.loads(line), *ADDED, *(f"emotion_{e}" for e in
                                                                          ("sadness", "joy", "love", "anger",
                                                                           "fear", "surprise"))]
        assert '"x": 1,' in out[0] and '"x":2.5' in out[1] and '"x": 1e5' in out[2]
        assert "late" not in out[0] and json.loads(out[3])["emotion"] is None


def test_json_lines_kept_as_read_refuse_a_late_key_the_run_adds(tmp_path, tiny_model):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b", "emotion": "mine"}\n')
    r = tag(tiny_model, src, tmp_path / "out.jsonl")
    assert r.returncode == 2 and "line 2 already has key(s) emotion, which tag would add" in r.stderr
    assert "--prefix" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "out.jsonl").exists()


def test_a_json_lines_stream_is_typed_from_its_first_lines_and_refuses_a_misfit(monkeypatch):
    """stdin cannot be read twice: a later value that does not fit is refused, naming line and key."""
    from emolabel import jsonl

    monkeypatch.setattr(jsonl, "TYPE_LINES", 3)
    cases = [(b'{"n": null}\n' * 3 + b'{"n": 9000}\n', "line 4: key 'n' holds 9000"),
             (b'{"n": 1}\n' * 3 + b'{"n": 1.5}\n', "line 4: key 'n' holds 1.5"),
             (b'{"n": 1.5}\n' * 3 + b'{"n": 9007199254740993}\n', "line 4: key 'n' holds 9007199254740993"),
             (b'{"n": 1}\n' * 3 + b'{"m": 1}\n', "line 4: key 'm' first appears here")]
    for data, message in cases:
        reader = open_stream("<stdin>", io.BytesIO(data), formats.JSONL, chunk_rows=2)
        with pytest.raises(InputError, match=message):
            list(reader)
    fine = open_stream("<stdin>", io.BytesIO(b'{"n": 1.5}\n' * 3 + b'{"n": 2}\n{"n": null}\n'), formats.JSONL,
                       chunk_rows=2)
    assert pa.Table.from_batches(list(fine)).column("n").to_pylist() == [1.5, 1.5, 1.5, 2.0, None]


def test_json_lines_file_keys_of_several_kinds_are_their_json_text(tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text('{"n": 1, "f": 1, "big": 1}\n{"n": "x", "f": 2.5, "big": 12345678901234567890}\n')
    t = pa.Table.from_batches(list(open_input(str(src), chunk_rows=1)))
    assert t.column("n").to_pylist() == ["1", "x"] and t.column("f").to_pylist() == [1.0, 2.5]
    assert t.column("big").to_pylist() == ["1", "12345678901234567890"]  # no digit lost


def test_nan_in_json_lines_kept_as_read_is_written_as_null(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "x": NaN, "y": 1.50}\n')
    with pytest.warns(EmolabelWarning, match="NaN or Infinity"):
        reader = open_input(str(src), keep_json=True, text_column="text")
        raw = pa.Table.from_batches(list(reader)).column(1).to_pylist()
    assert json.loads(raw[0]) == {"text": "a", "x": None, "y": 1.5}


def test_timestamps_written_to_json_lines_have_one_iso_form(tmp_path, tiny_model):
    src = tmp_path / "t.parquet"
    naive = dt.datetime(2024, 1, 5, 12, 0, 0, 123456)
    zone = dt.timezone(dt.timedelta(hours=1))
    pq.write_table(pa.table({"text": ["hi", "yo"],
                             "at": pa.array([naive, naive.replace(microsecond=0)], pa.timestamp("us")),
                             "tz": pa.array([naive.replace(tzinfo=zone)] * 2, pa.timestamp("us", "+01:00"))}), src)
    r = tag(tiny_model, src, tmp_path / "o.jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["at"] for x in rows] == ["2024-01-05T12:00:00.123456", "2024-01-05T12:00:00.000000"]  # one width
    assert rows[0]["tz"] == "2024-01-05T12:00:00.123456+01:00"


def test_detect_types_never_loses_digits_and_says_the_types(tmp_path, tiny_model):
    src = tmp_path / "s.csv"
    src.write_text("id,hex,flag,zip,rating,text\n12345678901234567890,0x1F,0,007,4.5,i feel happy\n"
                   "2,0x20,1,008,2,so sad\n")
    r = tag(tiny_model, src, tmp_path / "o.parquet", "--detect-types")
    assert r.returncode == 0, r.stderr
    t = pq.read_table(tmp_path / "o.parquet")
    assert t.column("id").to_pylist() == ["12345678901234567890", "2"]
    assert t.column("hex").to_pylist() == ["0x1F", "0x20"] and t.column("zip").to_pylist() == ["007", "008"]
    assert t.column("flag").to_pylist() == [0, 1] and t.column("rating").to_pylist() == [4.5, 2.0]
    summary = cli("tag", str(src), "-o", str(tmp_path / "p.parquet"), "--model", str(tiny_model),
                      "--detect-types", "--text-columns", "flag")
    assert summary.returncode == 0, summary.stderr
    assert "types: rating double; the other columns text" in summary.stderr.replace("\n", " ")
    assert pq.read_table(tmp_path / "p.parquet").column("flag").to_pylist() == ["0", "1"]
    misused = tag(tiny_model, src, tmp_path / "q.parquet", "--text-columns", "flag")
    assert misused.returncode == 2 and "--text-columns only applies with --detect-types" in misused.stderr
    unknown = tag(tiny_model, src, tmp_path / "q.parquet", "--detect-types", "--text-columns", "nope")
    assert unknown.returncode == 2 and "--text-columns names 'nope', which" in unknown.stderr


def test_detect_types_refuses_a_later_value_that_does_not_fit_exactly(tmp_path, monkeypatch):
    from emolabel import detect

    monkeypatch.setattr(detect, "TYPE_ROWS", 2)
    src = tmp_path / "s.csv"
    src.write_text("id,text\n1,a\n2,b\n12345678901234567890,c\n")
    with pytest.raises(InputError, match=r"data row 3: column 'id' is int64 in the first 2 rows, and "
                                         r"'12345678901234567890' does not fit it exactly.*`text_columns` id"):
        list(open_input(str(src), detect_types=True, text_column="text", chunk_rows=1))


@pytest.mark.parametrize("given", ["\\t", "tab", "TAB"])
def test_delimiter_backslash_t_and_tab_are_a_tab(tmp_path, tiny_model, given):
    src = tmp_path / "in.csv"
    src.write_text("id\ttext\n1\ti feel happy\n")
    r = tag(tiny_model, src, tmp_path / "o.jsonl", "--delimiter", given)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o.jsonl").read_text())["text"] == "i feel happy"


@pytest.mark.parametrize("codec,bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                       ("utf-8", codecs.BOM_UTF8)])
def test_files_with_a_bom_are_read(tmp_path, tiny_model, codec, bom):
    """An Excel-style UTF-16 export (BOM, then LE or BE) with --encoding utf-16; utf-8-sig."""
    src = tmp_path / "in.csv"
    src.write_bytes(bom + "id,text\r\n1,café crème\r\n2,\"naïve, ☃\"\r\n".encode(codec))
    given = "utf-16" if codec != "utf-8" else "utf-8-sig"
    r = tag(tiny_model, src, tmp_path / "o.jsonl", "--encoding", given)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(x["id"], x["text"]) for x in rows] == [("1", "café crème"), ("2", "naïve, ☃")]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(bom + '{"text": "café"}\n'.encode(codec))
    r = cli("tag", "-", "--model", str(tiny_model), "-q", "--encoding", given, input=jsonl.read_bytes())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] == "café"
