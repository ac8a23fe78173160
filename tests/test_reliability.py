"""Nothing silently wrong (issue 12): pipes given as paths, resume fingerprints, progress kept or
dropped, exit codes of misused options, and the tag_file library call behind `emolabel tag`."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from helpers import invoke, read_path, write_table

import emolabel
from emolabel import checkpoint
from emolabel.errors import OptionError, OutputError
from emolabel.options import TagOptions


def _table(n: int) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(n)], "text": [f"i feel happy {i % 7} today" for i in range(n)]})


def test_every_tag_option_changes_the_fingerprint_or_says_why_not():
    """A new TagOptions field cannot be forgotten by --resume: it is in output_options() unless
    NOT_OUTPUT names it with a reason."""
    names = {f.name for f in dataclasses.fields(TagOptions)}
    assert set(TagOptions.NOT_OUTPUT) <= names and all(TagOptions.NOT_OUTPUT.values())
    assert set(TagOptions().output_options()) == names - set(TagOptions.NOT_OUTPUT)
    base = TagOptions().output_options()
    for f in dataclasses.fields(TagOptions):
        if f.name in TagOptions.NOT_OUTPUT:
            continue
        changed = dataclasses.replace(TagOptions(), **{f.name: "x" if f.type.startswith("str") else 7})
        assert changed.output_options() != base, f.name


def test_tag_file_is_the_library_call_behind_tag(tmp_path, tiny_model):
    src = write_table(_table(30), tmp_path / "in.csv", "csv")
    summary = emolabel.tag_file(str(src), str(tmp_path / "out.parquet"), model=str(tiny_model), prefix="mood")
    assert summary.rows == 30 and summary.empty == 0
    lib = read_path(tmp_path / "out.parquet", "parquet")
    r = invoke("tag", str(src), "-o", str(tmp_path / "cli.parquet"), "--model", str(tiny_model), "--prefix", "mood")
    assert r.exit_code == 0, r.stderr
    assert read_path(tmp_path / "cli.parquet", "parquet").equals(lib)
    with pytest.raises(OutputError, match="`overwrite`"):  # library words, not CLI flags
        emolabel.tag_file(str(src), str(tmp_path / "out.parquet"), model=str(tiny_model))


def test_a_fifo_as_input_loses_no_rows_and_cannot_be_resumed(tmp_path, tiny_model):
    """The fingerprint used to re-open the input and read its first MiB, stealing rows from a pipe."""
    src = write_table(_table(5000), tmp_path / "in.csv", "csv")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    import threading

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(src.read_bytes())

    t = threading.Thread(target=feed)
    t.start()
    r = run_cli("tag", str(fifo), "-o", str(tmp_path / "out.csv"), "--model", str(tiny_model), "-q")
    t.join()
    assert r.returncode == 0, r.stderr.decode()
    assert read_path(tmp_path / "out.csv", "csv").num_rows == 5000
    r = run_cli("tag", str(fifo), "-o", str(tmp_path / "again.csv"), "--model", str(tiny_model), "--resume")
    assert r.returncode == 2 and b"--resume needs an input file and an output file" in r.stderr


def test_the_fingerprint_sees_a_same_size_edit_in_the_middle_and_a_new_tokenizer(tmp_path, tiny_model):
    import shutil

    big = tmp_path / "big.csv"
    rows = [f"{i},i feel happy number {i:07d}\n" for i in range(200_000)]  # ~7 MB: more than two edges of 1 MiB
    big.write_text("id,text\n" + "".join(rows))
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    before = checkpoint.fingerprint(str(big), model, {})
    st = big.stat()
    data = bytearray(big.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 5] = b"HAPPY"[: len(data[middle : middle + 5])]
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back
    assert checkpoint.fingerprint(str(big), model, {})["input"] != before["input"]
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["truncation"] = None
    (model / "tokenizer.json").write_text(json.dumps(tok))
    assert checkpoint._changes(before["model"], checkpoint.fingerprint(str(big), model, {})["model"]) == ["tokenizer.json"]


def test_an_empty_progress_file_does_not_block_later_runs(tmp_path, tiny_model):
    src = write_table(_table(20), tmp_path / "in.csv", "csv")
    out = tmp_path / "out.csv"
    folder = checkpoint.resume_dir(str(out))
    folder.mkdir()
    (folder / checkpoint.PROGRESS).write_text("")
    r = invoke("tag", str(src), "-o", str(out), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    assert read_path(out, "csv").num_rows == 20 and not folder.exists()


def test_a_failed_final_copy_keeps_the_committed_progress(tmp_path, tiny_model, monkeypatch):
    """Disk full while the parts are copied into the target: the hours of labelling stay for --resume."""
    src = write_table(_table(50), tmp_path / "in.csv", "csv")
    out = tmp_path / "out.parquet"
    from emolabel import outputs

    def full(self, batch, stats=None):
        raise OutputError(f"Disk full while writing {self.target}; nothing was written there.")

    monkeypatch.setattr(outputs.Writer, "write", full)
    with pytest.raises(OutputError, match="Disk full") as e:
        emolabel.tag_file(str(src), str(out), model=str(tiny_model), chunk_rows=10)
    # the message says where the rows are and how to get the space back, not only "nothing was written"
    assert f"The 50 labelled rows so far are kept in {checkpoint.resume_dir(str(out))}" in str(e.value)
    assert "--resume, or delete that folder" in str(e.value)
    monkeypatch.undo()
    assert not out.exists()
    progress = json.loads((checkpoint.resume_dir(str(out)) / checkpoint.PROGRESS).read_text())
    assert progress["rows"] == 50
    summary = emolabel.tag_file(str(src), str(out), model=str(tiny_model), chunk_rows=10, resume=True)
    assert summary.resumed == 50 and pq.read_table(out).num_rows == 50


@pytest.mark.parametrize("args", [["--device", "cuda:9"], ["--device", "tpu"], ["--precision", "int8", "--device", "cuda"],
                                  ["-o", "out.xlsx"]])
def test_misused_options_exit_2_in_a_real_process(tmp_path, tiny_model, args):
    src = write_table(_table(3), tmp_path / "in.csv", "csv")
    extra = [] if "-o" in args else ["-o", str(tmp_path / "out.csv")]
    r = run_cli("tag", str(src), "--model", str(tiny_model), *extra, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    assert b"Traceback" not in r.stderr and b"terminate called" not in r.stderr


def test_library_errors_use_the_librarys_words(tiny_model):
    with pytest.raises(OptionError, match="Unknown `device` 'tpu'"):
        emolabel.load(str(tiny_model), device="tpu")


@pytest.mark.parametrize("content,where", [("id,text\n1,ok\n2,\xe9t\xe9\n", "Latin-1"),
                                           ("id,text\n1,ok\n2,a,b,c\n", "ragged")])
def test_input_errors_exit_1_every_time_in_real_processes(tmp_path, tiny_model, content, where):
    """These printed the right message and then aborted with exit 134 about half the time."""
    src = tmp_path / "bad.csv"
    src.write_bytes(content.encode("latin-1"))
    for _ in range(3):
        r = run_cli("tag", str(src), "-o", str(tmp_path / "out.csv"), "--model", str(tiny_model), cwd=tmp_path)
        assert r.returncode == 1, (where, r.returncode, r.stderr.decode())
        assert b"terminate called" not in r.stderr and b"Traceback" not in r.stderr


def test_predict_refuses_a_bare_string(tiny_model):
    lb = emolabel.load(str(tiny_model), device="cpu")
    with pytest.raises(TypeError, match="list of texts"):
        lb.predict("i am happy")
    assert len(lb.predict(["i am happy"])) == 1


@pytest.mark.parametrize("change", [{"temperature": 0}, {"temperature": -1}, {"temperature": "1"},
                                    {"labels": ["a", "score"]}, {"labels": "ab"}])
def test_a_broken_model_config_is_refused_on_load(tmp_path, tiny_model, change):
    import shutil

    from emolabel.errors import ModelError

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "emolabel.json").read_text()) | change
    (folder / "emolabel.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError):
        emolabel.load(str(folder), device="cpu")


def test_non_finite_weights_are_refused_on_load(tmp_path, tiny_model):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from emolabel.errors import ModelError

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.startswith("head."))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="NaN or infinite"):
        emolabel.load(str(folder), device="cpu")
    r = run_cli("tag", "-", "--model", str(folder), input=b"text\ni feel happy\n")
    assert r.returncode == 1 and b"NaN or infinite" in r.stderr


def test_importing_the_library_changes_no_environment_variable():
    code = ("import os; before = dict(os.environ); import emolabel, emolabel.cli, emolabel.inference, "
            "emolabel.model, emolabel.pipeline, emolabel.train, emolabel.evaluate; "
            "print(sorted(k for k in os.environ if os.environ.get(k) != before.get(k)))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_empty_prefix_is_a_usage_error_and_outputs_get_the_usual_mode(tmp_path, tiny_model):
    src = write_table(_table(3), tmp_path / "in.csv", "csv")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--prefix", "")
    assert r.exit_code == 2 and "--prefix cannot be empty" in r.stderr
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert r.exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "o.csv").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_an_open_quote_that_never_closes_is_an_error_naming_its_line(tmp_path, tiny_model):
    """It swallowed every later row into one text: 2 rows out of 5, exit 0 (issue 12, item 6)."""
    src = tmp_path / "q.csv"
    src.write_text('id,text\n1,ok\n2,"broken start\n3,fine\n4,fine\n5,also fine\n')
    r = run_cli("tag", str(src), "-o", str(tmp_path / "out.csv"), "--model", str(tiny_model))
    assert r.returncode == 1 and b"line 3: a quoted field opens here and never closes" in r.stderr
    assert not (tmp_path / "out.csv").exists()
    ok = tmp_path / "ok.csv"  # escaped quotes and a real multi-line text are fine
    ok.write_text('id,text\n1,"ok, ""quoted"" fine"\n2,"multi\nline"\n3,x\n')
    r = run_cli("tag", str(ok), "-o", str(tmp_path / "ok.out.csv"), "--model", str(tiny_model))
    assert r.returncode == 0 and read_path(tmp_path / "ok.out.csv", "csv").num_rows == 3


def test_the_opening_quote_is_found_across_pieces():
    import io

    from emolabel.csv_reader import _RowBlocks

    body = b"".join(b'%d,"row %d, quoted"\n' % (i, i) for i in range(5000)) + b'5000,"never closed\n5001,x\n'
    blocks = _RowBlocks(b"id,text\n", io.BytesIO(body), piece=4096)
    while blocks.read(1 << 20):
        pass
    assert blocks.unclosed and blocks.open_line == 5002  # header is line 1


def test_a_json_lines_integer_field_is_never_rounded(tmp_path, tiny_model):
    """1.5 after the first chunk was written as 1 with exit 0 (issue 12, item 5); then it was refused.
    JSON Lines out keeps each value as read; Parquet out types the key over the whole file (float64)."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": "i feel happy", "rating": 1}) + "\n" for _ in range(20))
                   + json.dumps({"text": "i feel sad", "rating": 1.5}) + "\n")
    r = invoke("tag", str(src), "-o", str(tmp_path / "out.jsonl"), "--model", str(tiny_model), "--chunk-rows", "10")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert '"rating": 1,' in lines[0] and '"rating": 1.5,' in lines[-1]
    r = invoke("tag", str(src), "-o", str(tmp_path / "out.parquet"), "--model", str(tiny_model), "--chunk-rows", "10")
    assert r.exit_code == 0, r.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("rating").to_pylist() == [1.0] * 20 + [1.5]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_gzip_on_stdin_is_detected_and_read(tmp_path, tiny_model, fmt):
    """It said 'pass --encoding latin-1' (issue 15): the gzip magic bytes now tell."""
    import gzip

    data = write_table(_table(7), tmp_path / f"in.{fmt}", fmt).read_bytes()
    r = invoke("tag", "-", "--model", str(tiny_model), input=gzip.compress(data))
    assert r.exit_code == 0, r.stderr
    from helpers import read_bytes

    assert [str(v) for v in read_bytes(r.stdout_bytes, fmt).column("id").to_pylist()] == [str(i) for i in range(7)]


def test_a_write_error_while_the_queue_is_full_ends_the_run_instead_of_hanging():
    """The writer thread stopped taking items after an error; a main thread blocked on the full
    queue (the last chunk) then waited forever."""
    import threading
    import time

    from conftest import PATIENCE

    from emolabel.pipeline import _BackgroundWriter

    class Failing:
        def write(self, batch, stats=None):
            time.sleep(0.2)  # slower than the producer: the queue is full when the error comes
            raise OSError("disk full")

    result: list = []

    def run() -> None:
        try:
            with _BackgroundWriter(Failing()) as out:
                for _ in range(4):
                    out.submit(pa.record_batch({"a": [1]}))
        except OSError as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(PATIENCE)  # a hang safety net; it ends in about a second
    assert not t.is_alive() and result and "disk full" in str(result[0])


def test_an_output_that_appears_while_a_run_labels_is_not_replaced(tmp_path, tiny_model, monkeypatch):
    """A second run checked that `out` did not exist, then waited for the lock while the first run
    finished it: the second replaced the first's output, exit 0, without --overwrite (issue 12,
    item 4, found by a hostile pass). The check is made again once the lock is taken."""
    src = write_table(_table(50), tmp_path / "in.csv", "csv")
    out = tmp_path / "out.csv"
    take_lock = checkpoint._lock

    def first_run_finishes_meanwhile(folder, target):
        out.write_text("the first run's rows\n")
        return take_lock(folder, target)

    monkeypatch.setattr(checkpoint, "_lock", first_run_finishes_meanwhile)
    with pytest.raises(OutputError, match="created by someone else"):
        emolabel.tag_file(str(src), str(out), model=str(tiny_model), device="cpu")
    assert out.read_text() == "the first run's rows\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no progress folder left
    monkeypatch.undo()
    emolabel.tag_file(str(src), str(out), model=str(tiny_model), device="cpu", overwrite=True)  # asked: replaced
    assert out.read_text().startswith("id,text,emotion")


def test_a_writer_without_overwrite_leaves_a_file_that_appeared_at_its_target(tmp_path):
    """Runs that cannot take the lock (stdin in) check at the last moment, just before the rename."""
    from emolabel import formats
    from emolabel.outputs import Writer

    out = tmp_path / "out.csv"
    table = _table(3)
    w = Writer(str(out), formats.CSV, table.schema, overwrite=False)
    w.write(table.to_batches()[0])
    out.write_text("someone else's\n")
    with pytest.raises(OutputError, match="created by someone else"):
        w.commit()
    assert out.read_text() == "someone else's\n" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_resume_with_nothing_to_resume_says_so(tmp_path, tiny_model):
    """A typo in -o with --resume used to label the whole input again without a word."""
    src = write_table(_table(5), tmp_path / "in.csv", "csv")
    with pytest.warns(emolabel.errors.EmolabelWarning, match="Nothing to resume for .*labelling from the first row"):
        emolabel.tag_file(str(src), str(tmp_path / "out.csv"), model=str(tiny_model), resume=True)
    r = invoke("tag", str(src), "-o", str(tmp_path / "out2.csv"), "--model", str(tiny_model), "--resume")
    assert r.exit_code == 0 and "Nothing to resume for" in r.stderr


def _interrupted_at_first_write(src, out, tiny_model, monkeypatch, **options):
    """A run of `src` into `out` that dies at its first write: its progress is kept for --resume."""
    from emolabel import outputs

    def full(self, batch, stats=None):
        raise OutputError(f"Disk full while writing {self.target}; nothing was written there.")

    monkeypatch.setattr(outputs.Writer, "write", full)
    with pytest.raises(OutputError):
        emolabel.tag_file(str(src), str(out), model=str(tiny_model), chunk_rows=10, **options)
    monkeypatch.undo()


def test_resume_takes_another_batch_shape_where_the_forward_is_batch_invariant(tmp_path, tiny_model, monkeypatch):
    """On the CPU in fp32 (and bf16) a row's numbers do not depend on its batch (issue 21), so a
    resumed run may change --batch-size, --max-tokens and --chunk-rows and still write the bytes
    of an uninterrupted run."""
    src = write_table(_table(50), tmp_path / "in.csv", "csv")
    whole = tmp_path / "whole.csv"
    emolabel.tag_file(str(src), str(whole), model=str(tiny_model), chunk_rows=10)
    out = tmp_path / "out.csv"
    _interrupted_at_first_write(src, out, tiny_model, monkeypatch)
    r = invoke("tag", str(src), "-o", str(out), "--model", str(tiny_model), "--chunk-rows", "7", "--resume",
               "--batch-size", "3", "--max-tokens", "64")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes() == whole.read_bytes()


def test_resume_refuses_another_batch_size_where_batches_are_padded_and_says_why(tmp_path, tiny_model, monkeypatch):
    from emolabel.inference import int8_available

    if not int8_available():
        pytest.skip("int8 (padded batches) needs fbgemm or qnnpack")
    src = write_table(_table(50), tmp_path / "in.csv", "csv")
    out = tmp_path / "out.csv"
    _interrupted_at_first_write(src, out, tiny_model, monkeypatch, precision="int8")
    r = invoke("tag", str(src), "-o", str(out), "--model", str(tiny_model), "--chunk-rows", "10", "--resume",
               "--batch-size", "3", "--precision", "int8")
    assert r.exit_code == 1 and "options.batch_size changed" in r.stderr
    assert "move with the shape of its batch" in r.stderr and "Traceback" not in r.stderr
