"""finetune --resume: an interrupted run, resumed, ends with the same weights as an unbroken one,
bit for bit, in fp32 and in bf16 autocast; a resume with other tables or options is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_finetune import ROWS, write_csv

from emolabel import train_loop
from emolabel.config import EMOTIONS, TrainConfig
from emolabel.errors import InputError
from emolabel.train import finetune
from emolabel.train_resume import CHECKPOINT, checkpoint_dir

TINY = {"head_hidden": [16], "max_length": 32}


@pytest.fixture
def tables(tmp_path):
    ids = [(t, str(EMOTIONS.index(lab))) for t, lab in ROWS]
    a = write_csv(tmp_path / "a.csv", ids * 6)  # 36 rows
    b = write_csv(tmp_path / "b.csv", ids * 3)  # 18 rows, drawn at 0.5: a random half each epoch
    va = write_csv(tmp_path / "va.csv", ids)
    return [str(a), f"{b}@0.5"], [str(va)]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def run(tables, out, base, precision, **kw):
    cfg = TrainConfig(epochs=3, batch_size=4, patience=5, precision=precision, seed=5)
    return finetune(tables[0], tables[1], out, base=str(base), train_config=cfg, model_options=TINY, device="cpu", **kw)


def interrupt_at(monkeypatch, call: int):
    """KeyboardInterrupt as the `call`-th training step starts (as Ctrl-C or a kill would land)."""
    real, calls = train_loop._loss, [0]

    def loss(*a, **k):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_loop, "_loss", loss)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stop_at", [4, 17])  # in epoch 1 (nothing to keep yet), and in epoch 2
def test_an_interrupted_run_resumed_ends_with_the_same_weights(tmp_path, tiny_base, tables, monkeypatch,
                                                              precision, stop_at):
    whole = run(tables, tmp_path / "whole", tiny_base, precision, checkpoint_minutes=None)
    assert not checkpoint_dir(tmp_path / "whole").exists()  # minutes None: no checkpoint at all

    interrupt_at(monkeypatch, stop_at)
    out = tmp_path / "broken"
    if stop_at < 13:  # 45 rows an epoch in batches of 4: 12 steps; no epoch finished, nothing saved
        with pytest.raises(KeyboardInterrupt):
            run(tables, out, tiny_base, precision, checkpoint_minutes=0)
    else:
        assert run(tables, out, tiny_base, precision, checkpoint_minutes=0)["stopped"]
    assert (checkpoint_dir(out) / CHECKPOINT).exists()
    monkeypatch.undo()

    events = []
    resumed = run(tables, out, tiny_base, precision, checkpoint_minutes=0, resume=True, on_event=events.append)
    assert [e for e in events if e["event"] == "resume"][0]["step"] == stop_at - 1
    for name, w in weights(tmp_path / "whole").items():
        assert torch.equal(w, weights(out)[name]), name
    assert resumed["temperature"] == whole["temperature"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    assert not checkpoint_dir(out).exists()  # done: the checkpoint is removed


def test_resume_refuses_other_tables_or_options_and_names_them(tmp_path, tiny_base, tables, monkeypatch):
    interrupt_at(monkeypatch, 5)
    out = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        run(tables, out, tiny_base, "fp32", checkpoint_minutes=0)
    monkeypatch.undo()
    first = tables[0][0]
    original = open(first, "rb").read()
    with open(first, "ab") as f:
        f.write(b"i am happy again,1\r\n")
    with pytest.raises(InputError, match=r"training table 1 \(its contents\) changed"):
        run(tables, out, tiny_base, "fp32", resume=True)
    with open(first, "wb") as f:
        f.write(original)
    cfg = TrainConfig(epochs=4, batch_size=4, patience=5, precision="fp32", seed=5)
    with pytest.raises(InputError, match="epochs changed"):
        finetune(tables[0], tables[1], out, base=str(tiny_base), train_config=cfg, model_options=TINY, device="cpu",
                 resume=True)
    run(tables, out, tiny_base, "fp32", resume=True)  # the same again: goes on


def test_resume_with_nothing_to_resume_says_so(tmp_path, tiny_base, tables):
    events = []
    run(tables, tmp_path / "m", tiny_base, "fp32", resume=True, on_event=events.append)
    assert any(e["event"] == "nothing_to_resume" for e in events)


def test_kill_9_then_resume_in_real_processes_gives_the_same_model_file(tmp_path, tiny_base, tables):
    """The CLI: SIGKILL while training (no clean-up at all), then the same command with --resume."""
    args = ["finetune", *tables[0], "--validation", tables[1][0], "--base", str(tiny_base), "--epochs", "3",
            "--batch-size", "4", "--seed", "5", "--head", "16", "--max-length", "32", "--device", "cpu",
            "--train-precision", "fp32", "-q"]
    assert run_cli(*args, "-o", str(tmp_path / "whole")).returncode == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "emolabel", *args, "-o", str(out), "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = checkpoint_dir(out) / CHECKPOINT
    while proc.poll() is None and not ckpt.exists():  # no wall-clock limit: wait for the first checkpoint
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before the kill landed")
    r = run_cli(*args, "-o", str(out), "--resume")
    assert r.returncode == 0, r.stderr.decode()
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    r = run_cli(*args, "-o", str(out), "--resume")  # a finished folder: nothing to resume, and not empty
    assert r.returncode == 1 and b"exists and is not empty" in r.stderr
