"""Faults with real subprocesses and signals: SIGINT, SIGTERM, kill -9; deterministic output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PATIENCE

pytestmark = pytest.mark.slow  # 150,000-row runs in real subprocesses


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """Enough rows that the tiny model needs many seconds: time to interrupt it."""
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    words = "i feel so happy sad angry today love afraid little bit scared surprised".split()
    texts = [" ".join(words[(i + k) % len(words)] for k in range(5 + i % 40)) for i in range(150_000)]
    pq.write_table(pa.table({"id": range(len(texts)), "text": texts}), path)
    return path


def start(big_input, tiny_model, target, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "emolabel", "tag", str(big_input), "-o", str(target), "--model", str(tiny_model),
         "--chunk-rows", "2000", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_for_progress(folder, proc, parts=2, timeout=PATIENCE):
    """Until the run has committed `parts` chunks to its resume folder beside the target."""
    end = time.time() + timeout
    progress = folder / ".out.parquet.emolabel-resume" / "progress.json"
    while time.time() < end:
        if progress.exists() and proc.poll() is None:
            try:
                if len(json.loads(progress.read_text())["parts"]) >= parts:
                    return
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    raise AssertionError("the run never committed a chunk")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_quickly_and_leaves_nothing(tmp_path, big_input, tiny_model, sig, code):
    target = tmp_path / "out.parquet"
    proc = start(big_input, tiny_model, target)
    wait_for_progress(tmp_path, proc)
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=PATIENCE)
    assert time.time() - t0 < 60  # 'within seconds'; generous for a loaded machine
    assert proc.returncode == code, err.decode()
    assert b"Interrupted" in err and b"Traceback" not in err, err.decode()
    assert b"run the same command with --resume to continue" in err
    assert not target.exists()
    assert os.listdir(tmp_path) == [".out.parquet.emolabel-resume"]  # the committed progress only


def kill_9_after_progress(big_input, tiny_model, target):
    """A run killed with SIGKILL once it has committed a few chunks."""
    proc = start(big_input, tiny_model, target)
    wait_for_progress(target.parent, proc)
    proc.kill()
    proc.communicate(timeout=PATIENCE)


def test_kill_9_leaves_no_file_at_the_target(tmp_path, big_input, tiny_model):
    target = tmp_path / "out.parquet"
    kill_9_after_progress(big_input, tiny_model, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".out.parquet.emolabel-resume"]  # the only trace


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_output_is_byte_identical_across_runs(tmp_path, tiny_model, fmt):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},i feel {'happy ' * (i % 7)}today\n" for i in range(3000)))
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}.{fmt}"
        r = subprocess.run([sys.executable, "-m", "emolabel", "tag", str(src), "-o", str(out), "--model",
                            str(tiny_model), "--chunk-rows", "500", "-q"], capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, big_input, tiny_model):
    ref = tmp_path_factory.mktemp("ref") / "out.parquet"
    r = subprocess.run([sys.executable, "-m", "emolabel", "tag", str(big_input), "-o", str(ref), "--model",
                        str(tiny_model), "--chunk-rows", "2000", "-q"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    return ref.read_bytes()


@pytest.mark.parametrize("how", ["sigint", "kill9"])
def test_resume_after_interruption_gives_the_uninterrupted_output(tmp_path, big_input, tiny_model, how, uninterrupted):
    work = tmp_path / "w"
    work.mkdir()
    target = work / "out.parquet"
    proc = start(big_input, tiny_model, target)
    wait_for_progress(work, proc, parts=3)
    proc.send_signal(signal.SIGINT) if how == "sigint" else proc.kill()
    proc.communicate(timeout=PATIENCE)
    assert not target.exists()
    again = start(big_input, tiny_model, target)  # without --resume: refused, the progress is kept
    _, err = again.communicate(timeout=PATIENCE)
    assert again.returncode == 1 and b"Pass --resume to continue it" in err
    done = json.loads((work / ".out.parquet.emolabel-resume" / "progress.json").read_text())["rows"]
    assert done >= 4000  # three committed chunks: the first is 256 rows, then 1,744 and 2,000
    resumed = start(big_input, tiny_model, target, "--resume")
    _, err = resumed.communicate(timeout=PATIENCE)
    assert resumed.returncode == 0, err.decode()
    assert f"resuming after {done:,} committed rows".encode() in err
    assert f"{done:,} of them from the interrupted run".encode() in err
    assert os.listdir(work) == ["out.parquet"]
    assert target.read_bytes() == uninterrupted


def test_resume_refuses_when_the_options_or_input_changed(tmp_path, big_input, tiny_model):
    target = tmp_path / "out.parquet"
    kill_9_after_progress(big_input, tiny_model, target)
    r = subprocess.run([sys.executable, "-m", "emolabel", "tag", str(big_input), "-o", str(target), "--model",
                        str(tiny_model), "--chunk-rows", "2000", "--prefix", "mood", "--resume"], capture_output=True)
    assert r.returncode == 1
    assert b"Cannot resume" in r.stderr and b"options.prefix changed" in r.stderr and b"Traceback" not in r.stderr


def test_resume_needs_files(tiny_model):
    r = subprocess.run([sys.executable, "-m", "emolabel", "tag", "-", "--model", str(tiny_model), "--resume"],
                       input=b"text\nhi\n", capture_output=True)
    assert r.returncode == 2 and b"--resume needs an input file and an output file" in r.stderr


def test_a_second_run_to_the_same_output_is_refused_while_the_first_holds_it(tmp_path, big_input, tiny_model,
                                                                             uninterrupted):
    """Two runs with one -o shared the progress folder: rows mixed from both, or lost, exit 0 (issue 12)."""
    work = tmp_path / "w"
    work.mkdir()
    target = work / "out.parquet"
    first = start(big_input, tiny_model, target)
    wait_for_progress(work, first, parts=1)
    second = start(big_input, tiny_model, target, "--overwrite")
    _, err = second.communicate(timeout=PATIENCE)
    assert second.returncode == 1 and b"Another emolabel run is writing" in err, err
    _, err = first.communicate(timeout=PATIENCE)
    assert first.returncode == 0, err.decode()
    assert target.read_bytes() == uninterrupted
    assert os.listdir(work) == ["out.parquet"]
