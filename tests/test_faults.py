"""Faults with real subprocesses and signals: SIGINT, SIGTERM, kill -9; deterministic output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """Enough rows that the tiny model needs many seconds: time to interrupt it."""
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    words = "i feel so happy sad angry today love afraid little bit scared surprised".split()
    texts = [" ".join(words[(i + k) % len(words)] for k in range(5 + i % 40)) for i in range(400_000)]
    pq.write_table(pa.table({"id": range(len(texts)), "text": texts}), path)
    return path


def start(big_input, tiny_model, target, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "emolabel", "tag", str(big_input), "-o", str(target), "--model", str(tiny_model),
         "--chunk-rows", "2000", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_for_temp(folder, proc, timeout=60.0):
    """Until the run has written something: its temporary file beside the target exists."""
    end = time.time() + timeout
    while time.time() < end:
        if list(folder.glob(".out.parquet.*.emolabel-tmp")) and proc.poll() is None:
            time.sleep(1.0)
            return
        time.sleep(0.1)
    raise AssertionError("the run never started writing")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_quickly_and_leaves_nothing(tmp_path, big_input, tiny_model, sig, code):
    target = tmp_path / "out.parquet"
    proc = start(big_input, tiny_model, target)
    wait_for_temp(tmp_path, proc)
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.time() - t0 < 10
    assert proc.returncode == code, err.decode()
    assert b"Interrupted" in err and b"Traceback" not in err, err.decode()
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # the temporary file is gone too


def test_kill_9_leaves_no_file_at_the_target(tmp_path, big_input, tiny_model):
    target = tmp_path / "out.parquet"
    proc = start(big_input, tiny_model, target)
    wait_for_temp(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=30)
    assert not target.exists()
    assert all(p.name.endswith(".emolabel-tmp") for p in tmp_path.iterdir())  # the only trace


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
