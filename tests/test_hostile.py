"""Hostile input: every case either works with every row accounted for, or fails clearly
(exit code, message, no traceback, nothing at the target path)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PATIENCE, run_cli
from helpers import invoke, read_bytes, read_path

from emolabel.config import EMOTIONS


def tag(tiny_model: Path, src: Path, *extra: str, out: str = "-", fmt: str = "jsonl"):
    args = ["tag", str(src), "-o", out, "--model", str(tiny_model), *extra]
    if out == "-":
        args += ["--output-format", fmt]
    return invoke(*args)


def assert_fails(r, message: str, code: int = 1) -> None:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# name, file content, expected exit code, expected message (or rows out for success)
CASES = [
    ("empty.csv", b"", 1, "is empty: expected a CSV header row"),
    ("empty.jsonl", b"", 1, "is empty: expected JSON Lines"),
    ("blank.jsonl", b"\n\n  \n", 1, "is empty"),
    ("latin1.csv", b"id,text\n1,ok\n2,caf\xe9 au lait\n", 1, "line 3, is not valid utf-8. If the file is Latin-1"),
    ("latin1.jsonl", b'{"text": "caf\xe9"}\n', 1, "line 1: byte b'\\xe9' is not valid utf-8"),
    ("ragged.csv", b"id,text\n1,a\n2,b,extra\n3,c\n", 1, "line 3: expected 2 columns, found 3"),
    ("broken.jsonl", b'{"text":"a"}\n{"text": oops\n{"text":"c"}\n', 1, "line 2: not valid JSON"),
    ("array.jsonl", b"[1, 2]\n", 1, "line 1: expected a JSON object per line, found a list"),
    ("dup.csv", b"id,text,id\n1,a,2\n", 1, "column name 'id' appears twice (columns 1 and 3)"),
    ("notparquet.parquet", b"PAR1 this is not parquet", 1, "is not a readable Parquet file"),
    ("header.csv", b"id,text\n", 0, 0),
    ("bom_crlf.csv", b'\xef\xbb\xbfid,text\r\n1,"hello, ""world""\r\nsecond line"\r\n2,ok\r\n', 0, 2),
    ("quoted.csv", b'id,text\n1,"a, b"\n2,"she said ""hi""\nthen left"\n3,"x"\n', 0, 3),
    ("unicode.csv", "id,text\n1,i feel 😂😭 so happy\n2,我很高兴\n3,אני שמח מאוד\n4,zero\u200bwidth\u200djoin\n".encode(), 0, 4),
    ("numbers.csv", b"id,text\n1,42\n2,3.14\n3,\n", 0, 3),
    ("mixed.jsonl", b'{"text":"a","n":1}\n{"text":"b","n":"x"}\n{"n":2}\n{"text":null}\n', 0, 4),
    # tracebacks before: each is now a message naming the file (and the line) and the fix
    ("cr_only.csv", b"id,text\r1,a\r2,b\r", 1, "ends its lines with CR alone (old Mac style)"),
    ("surrogate.jsonl", b'{"text": "a\\ud800b"}\n', 1, "line 1: a \\uD800-\\uDFFF escape is half of a character pair"),
    ("bad.csv.gz", b"not gzip at all", 1, "is not a readable gzip file"),
    ("cut.csv.gz", __import__("gzip").compress(b"id,text\n" + b"".join(b"%d,hi %d\n" % (i, i * 7919 % 10007)
                                                                      for i in range(5000)))[:4000], 1,
     "is not a readable gzip file (Compressed file ended"),
    ("wide_header.csv", b"id," + b'"' + b"x" * 200_000 + b'"' + b"\n1,a\n", 1, "(the header) cannot be read as CSV column names"),
]


@pytest.mark.parametrize("name,content,code,expect", CASES, ids=[c[0] for c in CASES])
def test_hostile_file(tmp_path, tiny_model, name, content, code, expect):
    src = tmp_path / name
    src.write_bytes(content)
    target = tmp_path / "out.csv"
    r = tag(tiny_model, src, out=str(target))
    if code:
        assert_fails(r, expect, code)
        assert not target.exists()
        assert not list(tmp_path.glob(".out.csv.*"))  # no temporary file left either
    else:
        assert r.exit_code == 0, r.stderr
        out = read_path(target, "csv")
        assert out.num_rows == expect
        assert out.column_names[-8:] == ["emotion", "emotion_score", *(f"emotion_{e}" for e in EMOTIONS)]


def test_input_values_round_trip_exactly(tmp_path, tiny_model):
    src = tmp_path / "q.csv"
    src.write_bytes(b'id,text\n007,"a, b"\n2,"she said ""hi""\nthen left"\n3,NA\n4,\n')
    r = tag(tiny_model, src, out=str(tmp_path / "o.jsonl"))
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(x["id"], x["text"]) for x in rows] == [("007", "a, b"), ("2", 'she said "hi"\nthen left'),
                                                     ("3", "NA"), ("4", "")]
    assert rows[3]["emotion"] is None and rows[2]["emotion"] in EMOTIONS


def test_latin1_with_encoding_option(tmp_path, tiny_model):
    src = tmp_path / "l.csv"
    src.write_bytes(b"id,text\n1,caf\xe9 au lait\n")
    r = tag(tiny_model, src, "--encoding", "latin-1", fmt="jsonl")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout_bytes.splitlines()[0])["text"] == "café au lait"


def test_on_error_skip_reports_the_skipped_lines(tmp_path, tiny_model):
    src = tmp_path / "b.jsonl"
    src.write_text('{"text":"a"}\n{"text": oops\n{"text":"c"}\nnot json\n{"text":"e"}\n')
    r = tag(tiny_model, src, "--on-error", "skip")
    assert r.exit_code == 0, r.stderr
    assert [json.loads(x)["text"] for x in r.stdout_bytes.splitlines()] == ["a", "c", "e"]
    assert "2 malformed line(s) skipped: 2, 4" in r.stderr
    csv_src = tmp_path / "r.csv"
    csv_src.write_text("id,text\n1,a\n2,b,extra\n3,c\n")
    r = tag(tiny_model, csv_src, "--on-error", "skip")
    assert r.exit_code == 0
    assert [json.loads(x)["id"] for x in r.stdout_bytes.splitlines()] == ["1", "3"]
    assert "1 malformed line(s) skipped: 3" in r.stderr


def test_truncated_parquet(tmp_path, tiny_model):
    good = tmp_path / "g.parquet"
    pq.write_table(pa.table({"text": ["happy"] * 5000}), good, row_group_size=1000)
    data = good.read_bytes()
    bad = tmp_path / "t.parquet"
    bad.write_bytes(data[: len(data) // 2])
    assert_fails(tag(tiny_model, bad), "is not a readable Parquet file")
    corrupt = tmp_path / "c.parquet"  # intact footer, garbage in the pages
    corrupt.write_bytes(data[:4] + bytes(len(data) // 2 - 4) + data[len(data) // 2 :])
    r = tag(tiny_model, corrupt, out=str(tmp_path / "o.csv"))
    assert r.exit_code == 1 and "Traceback" not in r.stderr and "t.parquet" not in r.stderr
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_single_5mb_text(tmp_path, tiny_model, fmt):
    src = tmp_path / f"big.{fmt}"
    big = "happy day " * 500_000
    if fmt == "jsonl":
        src.write_text(json.dumps({"text": big}) + "\n" + json.dumps({"text": "sad"}) + "\n")
    else:
        src.write_text(f"text\n{big}\nsad\n")
    r = tag(tiny_model, src, fmt="csv")
    assert r.exit_code == 0, r.stderr
    assert "1 truncated" in r.stderr
    assert read_bytes(r.stdout_bytes, "csv").column("text").to_pylist() == [big, "sad"]


def test_output_in_a_missing_folder(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    src.write_text("text\nhi\n")
    assert_fails(tag(tiny_model, src, out=str(tmp_path / "nope" / "o.csv")),
                 f"Cannot write {tmp_path / 'nope' / 'o.csv'}: folder {tmp_path / 'nope'} does not exist.")


def test_existing_output_needs_overwrite(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    src.write_text("text\nhi\n")
    target = tmp_path / "o.csv"
    target.write_text("precious")
    assert_fails(tag(tiny_model, src, out=str(target)), "already exists. Pass --overwrite to replace it.")
    assert target.read_text() == "precious"
    r = tag(tiny_model, src, "--overwrite", out=str(target))
    assert r.exit_code == 0 and "emotion" in target.read_text()


def test_input_and_output_the_same_file(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    src.write_text("text\nhi\n")
    assert_fails(tag(tiny_model, src, "--overwrite", out=str(src)), "is also the input", code=2)  # a usage error
    assert src.read_text() == "text\nhi\n"


def test_missing_input_file(tmp_path, tiny_model):
    assert_fails(tag(tiny_model, tmp_path / "nope.csv"), f"Input file {tmp_path / 'nope.csv'} does not exist.")


def test_failure_midway_leaves_the_existing_target_untouched(tmp_path, tiny_model):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(30)) + "{broken\n")
    target = tmp_path / "o.parquet"
    target.write_bytes(b"old")
    r = tag(tiny_model, src, "--overwrite", "--chunk-rows", "10", out=str(target))
    assert_fails(r, "line 31: not valid JSON")
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".o.parquet.*"))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: a real ENOSPC (needs root; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_ends_clearly_with_no_partial_output(tmp_path, tiny_model, tiny_disk):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"i feel happy {i} " * 5 for i in range(20000)]}), src)
    target = tiny_disk / "out.csv"
    r = tag(tiny_model, src, out=str(target))
    assert_fails(r, f"Disk full while writing {target}; nothing was written there.")
    # no output and no temporary file; the chunks committed before the disk filled are kept for
    # --resume (the first chunk is small, so there are some), as after any failure past the first commit
    assert [p for p in os.listdir(tiny_disk) if p != ".out.csv.emolabel-resume"] == []
    progress = tiny_disk / ".out.csv.emolabel-resume" / "progress.json"
    if progress.exists():
        import json

        assert json.loads(progress.read_text())["rows"] > 0
        assert "labelled rows so far are kept in" in r.stderr and "delete that folder" in r.stderr


def test_unwritable_folder(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    src.write_text("text\nhi\n")
    r = tag(tiny_model, src, out="/proc/emolabel-out.csv")
    assert r.exit_code == 1 and "Cannot write /proc/emolabel-out.csv" in r.stderr and "Traceback" not in r.stderr


def test_head_closing_the_pipe_ends_quietly(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "i feel happy\n" * 50000)
    p = subprocess.run(
        f"python -m emolabel tag {src} --model {tiny_model} -o - --output-format csv | head -3",
        shell=True, capture_output=True, timeout=PATIENCE,
    )
    assert p.stdout.count(b"\n") == 3
    assert b"Traceback" not in p.stderr and b"Error" not in p.stderr, p.stderr


def test_stdin_needs_no_format_when_it_can_be_told(tiny_model):
    r = run_cli("tag", "-", "--model", str(tiny_model), input=b'{"text": "i feel happy"}\n')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["emotion"] in EMOTIONS


def test_endless_inputs_are_refused_in_bounded_memory(tmp_path, tiny_model):
    """/dev/zero as CSV reached 21 GB in 30 s: the header and each line now have a bound."""
    for fmt, expect in (("csv", "the first line is longer than 1 MiB"), ("jsonl", "line 1 is longer than 16 MB"),
                        ("lines", "line 1 is longer than 16 MB")):
        r = run_cli("tag", "/dev/zero", "--input-format", fmt, "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
        assert r.returncode == 1 and expect in r.stderr.decode() and b"Traceback" not in r.stderr, r.stderr


def test_symlink_loop_and_nested_columns_are_named(tmp_path, tiny_model):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert_fails(tag(tiny_model, tmp_path / "a", "--input-format", "csv"), "symbolic link to nothing (or a loop")
    src = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"text": ["hi", "yo"], "l": [[1, 2], [3]], "s": [{"a": 1}, {"a": 2}],
                             "b": [b"x", b"y"]}), src)
    r = tag(tiny_model, src, out=str(tmp_path / "o.csv"))
    assert_fails(r, "column(s) 'l' (list<element: int64>), 's' (struct<a: int64>): CSV holds flat values only")
    assert_fails(tag(tiny_model, src, out=str(tmp_path / "o.jsonl")), "column(s) 'b' (binary): JSON has no bytes")
    ok = tag(tiny_model, src, out=str(tmp_path / "o.parquet"))
    assert ok.exit_code == 0 and pq.read_table(tmp_path / "o.parquet").column("l").to_pylist() == [[1, 2], [3]]
    pq.write_table(pa.table({"text": [["hi"], ["yo"]]}), tmp_path / "listtext.parquet")
    assert_fails(tag(tiny_model, tmp_path / "listtext.parquet", out=str(tmp_path / "p.parquet")),
                 "holds list<element: string> values, not text", code=2)  # --text-column is the fix
    assert not list(tmp_path.glob(".o.*")) and not list(tmp_path.glob("o.csv*"))


def test_outputs_that_are_not_plain_files(tmp_path, tiny_model):
    """-o /dev/stdout asked for --overwrite; a symlink or FIFO output was replaced by a regular file."""
    src = tmp_path / "in.csv"
    src.write_text("text\ni feel happy\nso sad\n")
    r = run_cli("tag", str(src), "-o", "/dev/stdout", "--model", str(tiny_model))
    assert r.returncode == 0 and r.stdout.decode().count("\n") == 3, r.stderr
    real = tmp_path / "real.csv"
    (tmp_path / "link.csv").symlink_to(real)
    r = run_cli("tag", str(src), "-o", str(tmp_path / "link.csv"), "--model", str(tiny_model))
    assert r.returncode == 0 and (tmp_path / "link.csv").is_symlink() and real.read_text().count("\n") == 3
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    import threading

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = run_cli("tag", str(src), "-o", str(fifo), "--model", str(tiny_model))
    reader.join()
    assert r.returncode == 0, r.stderr
    assert fifo.is_fifo() and got[0].count(b"\n") == 3


def test_closed_or_full_streams(tmp_path, tiny_model):
    """A closed stderr gave exit 1 although the output was written; /dev/full and a closed stdout
    gave tracebacks."""
    src = tmp_path / "in.csv"
    src.write_text("text\ni feel happy\n")
    model = str(tiny_model)
    cmd = [sys.executable, "-m", "emolabel", "tag", str(src), "--model", model]
    r = subprocess.run([*cmd, "-o", str(tmp_path / "o.csv")], stderr=subprocess.DEVNULL, timeout=PATIENCE,
                       preexec_fn=lambda: os.close(2))
    assert r.returncode == 0 and (tmp_path / "o.csv").exists()
    with open("/dev/full", "wb") as full:
        r = subprocess.run([*cmd, "-o", "-"], stdout=full, stderr=subprocess.PIPE, timeout=PATIENCE)
    assert r.returncode == 1 and b"Disk full while writing stdout" in r.stderr and b"Traceback" not in r.stderr
    r = subprocess.run([*cmd, "-o", "-"], stderr=subprocess.PIPE, timeout=PATIENCE, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1 and b"stdout is closed" in r.stderr and b"Traceback" not in r.stderr


def test_temporary_files_of_a_killed_run_are_cleaned_by_the_next(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    src.write_text("text\ni feel happy\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    from emolabel.outputs import _host

    stale = tmp_path / f".o.csv.{_host()}-{dead.pid}.abc123.emolabel-tmp"
    mine = tmp_path / f".o.csv.{_host()}-{os.getpid()}.def456.emolabel-tmp"  # a live process's: kept
    other = tmp_path / f".o.csv.otherhost-{dead.pid}.ghi789.emolabel-tmp"  # another host's (a shared disk): kept
    other.write_bytes(b"half")
    stale.write_bytes(b"half")
    mine.write_bytes(b"half")
    r = tag(tiny_model, src, out=str(tmp_path / "o.csv"))
    assert r.exit_code == 0 and not stale.exists() and mine.exists() and other.exists()


def test_a_second_ctrl_c_during_clean_up_gives_no_traceback(tmp_path, tiny_model):
    import signal
    import time

    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": [f"i feel happy {i} " * 8 for i in range(100_000)]}), src)
    proc = subprocess.Popen([sys.executable, "-m", "emolabel", "tag", str(src), "-o", str(tmp_path / "out.csv"),
                             "--model", str(tiny_model), "--chunk-rows", "500"], stderr=subprocess.PIPE)
    progress = tmp_path / ".out.csv.emolabel-resume" / "progress.json"
    end = time.time() + PATIENCE
    while not progress.exists() and proc.poll() is None and time.time() < end:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130 and b"Interrupted" in err and b"Traceback" not in err, err


def test_a_bytes_text_column_that_is_not_utf8_names_its_row(tmp_path, tiny_model):
    """A Parquet text column of bytes is read as UTF-8; bytes that are not UTF-8 ended in pyarrow's
    ArrowInvalid traceback (found by a hostile pass). Now: exit 1, the file and the row."""
    src = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"text": pa.array([b"i am happy", b"so sad", b"\xff\xfe", b"fine"], pa.binary())}), src)
    r = run_cli("tag", str(src), "-o", str(tmp_path / "out.csv"), "--model", str(tiny_model), "--chunk-rows", "2")
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr.decode()
    assert b"bytes.parquet, row 3: column 'text' holds bytes that are not UTF-8" in r.stderr
    assert not (tmp_path / "out.csv").exists()
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": pa.array([b"i am happy", "caf\u00e9".encode()], pa.binary())}), good)
    r = run_cli("tag", str(good), "-o", "-", "--output-format", "csv", "--model", str(tiny_model))
    assert r.returncode == 0 and "café".encode() in r.stdout and b"read as UTF-8 text" in r.stderr


def test_file_names_that_are_not_utf8_work_in_and_out(tmp_path, tiny_model):
    """Names with bytes that are not UTF-8 (Latin-1 file systems, old archives) ended in
    UnicodeEncodeError tracebacks: as output (pyarrow cannot encode them), as a Parquet input, and
    in the emotion_source column of several inputs (found by a hostile pass)."""
    def name(raw: bytes) -> Path:
        return tmp_path / os.fsdecode(raw)

    try:
        name(b"caf\xe9.csv").write_text("text\ni am happy\ni am sad\n")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    name(b"caf\xe92.csv").write_text("text\ni am angry\n")
    for out in (b"o\xe9.csv", b"o\xe9.parquet"):  # a file-to-file run: progress parts beside it too
        r = run_cli("tag", str(name(b"caf\xe9.csv")), "-o", str(name(out)), "--model", str(tiny_model), "-q")
        assert r.returncode == 0, r.stderr.decode()
    r = run_cli("tag", str(name(b"o\xe9.parquet")), "-o", "-", "--output-format", "csv", "--model", str(tiny_model),
                "--prefix", "again", "-q")
    assert r.returncode == 0 and r.stdout.count(b"\n") == 3, r.stderr.decode()
    r = run_cli("tag", str(name(b"caf\xe9.csv")), str(name(b"caf\xe92.csv")), "-o", str(tmp_path / "two.csv"),
                "--model", str(tiny_model), "-q")
    assert r.returncode == 0, r.stderr.decode()
    sources = [row["emotion_source"] for row in csv.DictReader(open(tmp_path / "two.csv", newline=""))]
    assert [Path(s).name for s in sources] == ["caf\\xe9.csv", "caf\\xe9.csv", "caf\\xe92.csv"]
