"""Every file emolabel writes follows one set of rules (emolabel/safe_write.py): never an input (exit
2, even with --overwrite), never an existing file or folder without --overwrite (exit 1, as tag), and
whole or not at all. In real subprocesses: the exit codes are the contract."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

GOLD = "text,label\ni feel happy,joy\ni am sad,sadness\ni love you,love\n"


def fails(r, code: int, message: str) -> None:
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err)
    assert message in err, err
    assert "Traceback" not in err


@pytest.fixture
def gold(tmp_path):
    path = tmp_path / "gold.csv"
    path.write_text(GOLD)
    return path


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if "emolabel-tmp" in p.name]


# -- eval -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_eval_never_writes_predictions_over_its_input(tmp_path, tiny_model, gold, overwrite):
    r = run_cli("eval", str(gold), "--model", str(tiny_model), "--predictions", str(gold), *overwrite)
    fails(r, 2, f"{gold} is also the input {gold}: write the output to another file.")
    assert gold.read_text() == GOLD
    link = tmp_path / "link.csv"  # the same file under another name is still the input
    link.symlink_to(gold)
    fails(run_cli("eval", str(gold), "--model", str(tiny_model), "--predictions", str(link), *overwrite), 2,
          "is also the input")
    assert gold.read_text() == GOLD


def test_eval_predictions_replace_a_file_only_with_overwrite(tmp_path, tiny_model, gold):
    pred = tmp_path / "pred.csv"
    pred.write_text("precious")
    r = run_cli("eval", str(gold), "--model", str(tiny_model), "--predictions", str(pred))
    fails(r, 1, f"{pred} already exists. Pass --overwrite to replace it.")
    assert pred.read_text() == "precious" and r.stdout == b""  # refused before any scoring
    r = run_cli("eval", str(gold), "--model", str(tiny_model), "--predictions", str(pred), "--overwrite")
    assert r.returncode == 0, r.stderr.decode()
    assert pred.read_text().startswith('table,text,gold') and no_temp_files(tmp_path)


def test_eval_refuses_a_predictions_name_without_a_format_before_scoring(tmp_path, tiny_model, gold):
    r = run_cli("eval", str(gold), "--model", str(tiny_model), "--predictions", str(tmp_path / "pred.xlsx"))
    fails(r, 1, "Cannot tell the format of --predictions")
    assert r.stdout == b"" and not (tmp_path / "pred.xlsx").exists()


def test_eval_report_folder_follows_the_same_rules(tmp_path, tiny_model, gold):
    report = tmp_path / "rep"
    report.mkdir()
    (report / "old.txt").write_text("old")
    fails(run_cli("eval", str(gold), "--model", str(tiny_model), "--report", str(report)), 1,
          f"{report} already exists and is not empty. Pass --overwrite to replace it.")
    assert (report / "old.txt").exists()
    # a report folder holding the table (or the model) would delete it when replaced
    fails(run_cli("eval", str(gold), "--model", str(tiny_model), "--report", str(tmp_path), "--overwrite"), 2,
          f"{tmp_path} holds the input {gold}")
    r = run_cli("eval", str(gold), "--model", str(tiny_model), "--report", str(report), "--overwrite")
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in report.iterdir()) == ["calibration.png", "confusion_matrix.png", "metrics.json"]
    assert no_temp_files(tmp_path)


def test_a_report_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    import emolabel.evaluate as ev

    def half(report, folder):
        (folder / "metrics.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(ev, "_draw_report", half)
    report = tmp_path / "rep"
    report.mkdir()
    (report / "metrics.json").write_text('{"old": 1}')
    with pytest.raises(OSError):
        ev.write_report({}, report)
    assert json.loads((report / "metrics.json").read_text()) == {"old": 1}  # the old report, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


# -- tag: the same rules, from the same place ---------------------------------------------------


def test_tag_output_that_is_the_input_is_a_usage_error(tmp_path, tiny_model, gold):
    r = run_cli("tag", str(gold), "--model", str(tiny_model), "-o", str(gold), "--overwrite")
    fails(r, 2, "is also the input")
    assert gold.read_text() == GOLD


# -- finetune: model folder, --log, --save-teacher-logits ---------------------------------------


def finetune(tmp_path, *args: str):
    return run_cli("finetune", str(tmp_path / "gold.csv"), "--validation", str(tmp_path / "gold.csv"), *args)


def test_finetune_refuses_an_existing_model_folder_without_overwrite(tmp_path, gold):
    out = tmp_path / "m"
    out.mkdir()
    (out / "emolabel.json").write_text("{}")
    fails(finetune(tmp_path, "-o", str(out)), 1, f"{out} already exists and is not empty. Pass --overwrite")
    assert (out / "emolabel.json").read_text() == "{}"


def test_finetune_never_writes_over_an_input(tmp_path, gold):
    fails(finetune(tmp_path, "-o", str(tmp_path), "--overwrite"), 2, f"{tmp_path} holds the input")
    fails(finetune(tmp_path, "-o", str(tmp_path / "m"), "--log", str(gold), "--overwrite"), 2,
          f"{gold} is also the input {gold}: write the log to another file.")
    assert gold.read_text() == GOLD and not (tmp_path / "m").exists()


def test_finetune_refuses_an_existing_log_or_teacher_logits_file(tmp_path, gold, tiny_model):
    log = tmp_path / "log.jsonl"
    log.write_text("precious\n")
    fails(finetune(tmp_path, "-o", str(tmp_path / "m"), "--log", str(log)), 1,
          f"{log} already exists. Pass --overwrite to replace it.")
    assert log.read_text() == "precious\n"
    fails(finetune(tmp_path, "-o", str(tmp_path / "m"), "--teacher", str(tiny_model), "--save-teacher-logits",
                   str(log)), 1, f"{log} already exists. Pass --overwrite to replace it.")
    fails(finetune(tmp_path, "-o", str(tmp_path / "m"), "--teacher", str(tiny_model), "--save-teacher-logits",
                   str(tmp_path / "m" / "t.safetensors")), 2, "is inside the model folder")
    assert log.read_text() == "precious\n"


def test_finetune_with_overwrite_replaces_the_folder_whole(tmp_path, tiny_base, gold):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.bin").write_text("from an older model")
    r = finetune(tmp_path, "-o", str(out), "--base", str(tiny_base), "--epochs", "1", "--head", "",
                 "--max-length", "16", "--overwrite")
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in out.iterdir() if p.name != "precision-check.json") == [
        "emolabel.json", "model.safetensors", "tokenizer.json", "train_log.jsonl", "training.json"]
    events = [json.loads(line)["event"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-2:] == ["done", "bf16_check"]  # the check of the saved model last
    assert no_temp_files(tmp_path)


def test_a_failed_finetune_writes_no_log_and_no_folder(tmp_path, gold):
    log = tmp_path / "logs" / "run.jsonl"
    r = finetune(tmp_path, "-o", str(tmp_path / "m"), "--base", str(tmp_path / "nope"), "--log", str(log))
    fails(r, 1, "Cannot load base encoder")
    assert not (tmp_path / "m").exists() and not log.exists()
    assert no_temp_files(tmp_path) and no_temp_files(tmp_path / "logs")
