"""Help for every command, python -m emolabel, and a --help that does not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_cli
from helpers import invoke

from emolabel.cli import cli

COMMANDS = sorted(cli.commands)


def test_commands():
    assert COMMANDS == ["check-bf16", "eval", "finetune", "label", "tag"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    assert "Examples:" in r.stdout
    assert f"emolabel {command}" in r.stdout


def test_python_dash_m():
    r = run_cli("--help")
    assert r.returncode == 0
    assert b"Commands:" in r.stdout
    assert run_cli("--version").stdout.decode().strip() == "emolabel, version 0.1.0"


def test_help_does_not_import_torch():
    code = ("import sys; from emolabel.cli import cli; "
            "sys.argv=['emolabel','tag','--help']\n"
            "try: cli()\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


def test_misused_option_exits_2():
    r = invoke("tag", "x.csv", "--device")
    assert r.exit_code == 2
    r = invoke("tag", "x.csv", "--input-format", "xlsx")
    assert r.exit_code == 2
    r = invoke("finetune", "x.csv", "--dropout", "1")  # every unit dropped: a usage error, before any work
    assert r.exit_code == 2 and "--dropout" in r.stderr


@pytest.mark.parametrize("total", [None, 100])
def test_progress_bar_renders_on_a_terminal(total):
    import io

    from rich.console import Console

    from emolabel.cli import _Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with _Progress(console, quiet=False) as progress:
        progress.start(total, 0)
        progress.advance(40)
        progress.advance(60)
        assert progress._progress.tasks[0].completed == 100
    assert "rows" in buf.getvalue()
    quiet = io.StringIO()
    with _Progress(Console(file=quiet), quiet=False) as progress:  # not a terminal: nothing drawn
        progress.start(total, 0)
        progress.advance(5)
        assert progress._progress is None
    assert quiet.getvalue() == ""


def test_summary_draws_the_label_distribution_on_a_terminal_only():
    import io
    from collections import Counter

    from rich.console import Console

    from emolabel.cli import _print_summary
    from emolabel.summary import Summary

    s = Summary(rows=10, empty=1, label_counts=Counter(joy=6, sadness=3), seconds=1.0)
    tty = io.StringIO()
    _print_summary(Console(file=tty, force_terminal=True, width=100, color_system=None), s, "out.csv")
    lines = tty.getvalue().splitlines()
    assert lines[0].startswith("  joy ") and lines[0].count("█") == 30 and "6 (67%)" in lines[0]
    assert lines[1].count("█") == 15 and lines[2].startswith("tagged 10 rows")
    pipe = io.StringIO()
    _print_summary(Console(file=pipe, width=100), s, "out.csv")
    assert "█" not in pipe.getvalue() and pipe.getvalue().startswith("tagged 10 rows")


def test_label_gives_a_quick_answer_for_texts_on_the_command_line(tiny_model):
    import json

    from helpers import invoke

    from emolabel.inference import Labeler

    texts = ["i feel happy today", "i am sad", ""]
    want = Labeler(tiny_model, device="cpu").predict_proba(texts)
    r = invoke("label", *texts, "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[2] == "(no text)\t"
    assert lines[0].endswith("\ti feel happy today") and lines[0].split()[0] in EMOTION_NAMES
    r = invoke("label", "-", "--model", str(tiny_model), "--json", "--min-score", "0.99", input=b"i am sad\n")
    row = json.loads(r.stdout)
    assert row["text"] == "i am sad" and row["emotion"] is None and row["emotion_status"] == "uncertain"
    assert abs(row["emotion_score"] - float(want[1].max())) < 1e-6


EMOTION_NAMES = ["sadness", "joy", "love", "anger", "fear", "surprise"]


def test_the_cli_choices_come_from_the_registries_the_library_checks():
    from emolabel import config, formats

    assert list(config.FORMATS) == [f.name for f in formats.REGISTRY.values() if f.readable and f.writable]
    opts = {p.name: p for p in cli.commands["tag"].params}
    assert list(opts["input_format"].type.choices) == list(formats.readable())
    assert list(opts["output_format"].type.choices) == list(formats.writable())
    assert list(opts["precision"].type.choices) == list(config.PRECISIONS)
    ft = {p.name: p for p in cli.commands["finetune"].params}
    assert list(ft["normalization"].type.choices) == list(config.NORMALIZATIONS)
    assert ft["epochs"].default == config.TrainConfig.epochs and ft["lr"].default == config.TrainConfig.lr


def test_label_reads_stdin_in_the_place_of_dash_and_names_text_that_is_not_utf8(tiny_model):
    import os

    r = run_cli("label", "i am sad", "-", "so happy", "--model", str(tiny_model), input=b"one\r\n\nthree\n")
    assert r.returncode == 0, r.stderr.decode()
    assert [line.split("\t")[1] for line in r.stdout.decode().splitlines()] == ["i am sad", "one", "", "three",
                                                                               "so happy"]
    r = run_cli("label", "fine", "-", "--model", str(tiny_model), input=b"ok\ncaf\xe9\n")
    assert r.returncode == 1 and r.stdout == b"" and b"Traceback" not in r.stderr
    assert r.stderr.decode() == ("Error: stdin line 2 is not UTF-8 text (byte 0xe9 at position 3: b'caf\\xe9'). "
                                 "Convert it first, e.g. iconv -f latin1 -t utf-8.\n")
    r = invoke("label", "fine", os.fsdecode(b"caf\xe9"), "--model", str(tiny_model))
    assert r.exit_code == 1 and r.stderr.startswith("Error: TEXT argument 2 is not UTF-8 text (byte 0xe9")
    r = invoke("label", "-", "-", "--model", str(tiny_model), input=b"x\n")
    assert r.exit_code == 2 and "- (stdin) can be given once." in r.stderr
