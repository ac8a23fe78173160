"""finetune's option checks and its bf16 check (issues 21, 22): a bad option value is a usage error
(exit 2) before any table is read, in the library's words there and the CLI's flags here; the model
it writes carries its bf16 verdict (precision-check.json) and the summary says it in one line."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli
from helpers import invoke
from test_finetune import ROWS, write_csv

from emolabel.config import EMOTIONS, TrainConfig
from emolabel.errors import OptionError
from emolabel.invariant import cpu_has_bf16
from emolabel.train import finetune

TINY = {"head_hidden": [16], "max_length": 32}


@pytest.fixture
def tables(tmp_path):
    train = write_csv(tmp_path / "train.csv", [(t, str(EMOTIONS.index(lab))) for t, lab in ROWS * 4])
    valid = write_csv(tmp_path / "valid.csv", list(ROWS))
    return str(train), str(valid)


@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "--lr must be a number above 0, not nan."),  # was: diverged after an epoch, exit 1
    (["--head-lr", "-1"], "--head-lr must be a number above 0, not -1.0."),  # was: AdamW's traceback
    (["--weight-decay", "-0.5"], "--weight-decay must be a number 0 or more, not -0.5."),  # the same
    (["--head", "-5"], "comma-separated positive integers, e.g. 512,256"),  # was: a ModelError once loaded, exit 1
    (["--device", "tpu"], "Unknown --device 'tpu': use auto, cpu, cuda or cuda:N."),  # was: once the base loaded
])
def test_a_bad_option_value_exits_2_before_any_work(tmp_path, tiny_base, tables, args, message):
    out = tmp_path / "m"
    r = run_cli("finetune", tables[0], "--validation", tables[1], "-o", str(out), "--base", str(tiny_base),
                "--epochs", "1", *args)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert message in " ".join(err.split()), err
    assert not out.exists() and not list(tmp_path.glob(".m*"))  # no model, no log, no checkpoint


def test_teacher_options_that_do_not_go_together_say_the_flags(tmp_path, tables, tiny_model):
    """The library's rule, in the CLI's flags (`teachers` is --teacher): exit 2."""
    (tmp_path / "t.safetensors").write_bytes(b"x")
    r = run_cli("finetune", tables[0], "--validation", tables[1], "-o", str(tmp_path / "m"),
                "--teacher", str(tiny_model), "--teacher-logits", str(tmp_path / "t.safetensors"))
    assert r.returncode == 2 and "Give --teacher or --teacher-logits, not both." in r.stderr.decode()


@pytest.mark.parametrize("kwargs,message", [
    ({"objective": "best"}, "Unknown `objective` 'best': use mean-macro-f1, first-macro-f1."),
    ({"save_dtype": "fp8"}, "Unknown `save_dtype` 'fp8': use fp32, fp16, bf16."),
    ({"input_format": "xlsx"}, "Unknown `input_format` 'xlsx'"),
    ({"model_options": {"pooling": "max"}}, "`pooling` must be one of cls, mean, not 'max'."),
    ({"model_options": {"heads": [8]}}, "Unknown model option `heads`"),
    ({"train_config": TrainConfig(lr=math.inf)}, "`lr` must be a number above 0, not inf."),
    ({"train_config": TrainConfig(epochs=0)}, "`epochs` must be a whole number, at least 1, not 0."),
    ({"train_config": TrainConfig(warmup=1.5)}, "`warmup` must be a number from 0 to 1, not 1.5."),
    ({"labels": ["joy", "joy"]}, "`labels` must be at least two distinct names"),
    ({"teachers": ["a"], "teacher_logits": "b"}, "Give `teachers` or `teacher_logits`, not both."),
    ({"save_teacher_logits": "t.safetensors"}, "`save_teacher_logits` needs `teachers`"),
    ({"checkpoint_minutes": -1}, "`checkpoint_minutes` must be 0 or more"),
])
def test_the_library_refuses_a_bad_value_in_its_own_words(tmp_path, tables, kwargs, message):
    """No base is given: the option is refused before a table is read or a model loads."""
    with pytest.raises(OptionError) as e:
        finetune(tables[0], tables[1], tmp_path / "m", base=str(tmp_path / "no-base"), **kwargs)
    assert message in str(e.value) and "--" not in str(e.value)


def _finetune(tables, out, base, events):
    return finetune(tables[0], tables[1], out, base=str(base), train_config=TrainConfig(epochs=1, batch_size=8),
                    model_options=TINY, device="cpu", on_event=events.append)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units: finetune runs no bf16 check")
def test_finetune_records_the_bf16_check_of_the_weights_it_wrote(tmp_path, tiny_base, tables):
    from emolabel import precision_check
    from emolabel.files import file_sha256

    events = []
    out = tmp_path / "m"
    _finetune(tables, out, tiny_base, events)
    record = json.loads((out / "precision-check.json").read_text())
    assert record["weights_sha256"] == file_sha256(out / "model.safetensors")
    assert [t["path"] for t in record["tables"]] == [tables[1]]  # the validation table, read once for both
    check = [e for e in events if e["event"] == "bf16_check"]
    assert len(check) == 1 and check[0]["checked"] and check[0]["passed"] == record["passed"]
    assert precision_check.passed(out) == record["passed"]
    assert check[0]["worst_table"] == tables[1]
    t = record["tables"][0]
    assert check[0]["accuracy_change"] == pytest.approx(t["accuracy_bf16"] - t["accuracy_fp32"])


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units: finetune runs no bf16 check")
def test_the_cli_summary_says_whether_bf16_passed(tmp_path, tiny_base, tables):
    r = invoke("finetune", tables[0], "--validation", tables[1], "-o", str(tmp_path / "m"), "--base", str(tiny_base),
               "--epochs", "1", "--head", "16", "--max-length", "32")
    assert r.exit_code == 0, r.stderr
    line = [x for x in r.stderr.splitlines() if x.startswith("bf16 check")]
    assert len(line) == 1, r.stderr
    assert line[0].startswith(("bf16 check passed (worst table", "bf16 check failed (worst table"))
    assert line[0].endswith(("--precision auto runs this model in bf16 on a CPU with bf16 units",
                             "--precision auto keeps it in fp32"))
    log = [json.loads(x) for x in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "bf16_check"  # in the log too


def test_without_bf16_units_no_check_runs_and_the_summary_says_auto_stays_fp32(tmp_path, tiny_base, tables,
                                                                              monkeypatch):
    import emolabel.train

    monkeypatch.setattr(emolabel.train, "cpu_has_bf16", lambda: False)
    r = invoke("finetune", tables[0], "--validation", tables[1], "-o", str(tmp_path / "m"), "--base", str(tiny_base),
               "--epochs", "1", "--head", "16", "--max-length", "32")
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "m" / "precision-check.json").exists()
    assert ("bf16 check not run: this CPU has no bf16 units (AVX512-BF16 or AMX); --precision auto keeps fp32"
            in r.stderr)


def test_a_signal_during_the_bf16_check_keeps_the_saved_model_and_exits_128_plus_it(tmp_path, tiny_base, tables,
                                                                                   monkeypatch):
    """The model is whole once saved: a SIGTERM in the check after it (signals.py's Interrupted) says so,
    keeps the model and its log, and exits 143 without a check on record."""
    import signal

    import emolabel.train
    from emolabel import precision_check
    from emolabel.signals import Interrupted

    def stop(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(emolabel.train, "cpu_has_bf16", lambda: True)  # the check runs, wherever this runs
    monkeypatch.setattr(precision_check, "check", stop)
    out = tmp_path / "m"
    r = invoke("finetune", tables[0], "--validation", tables[1], "-o", str(out), "--base", str(tiny_base),
               "--epochs", "1", "--head", "16", "--max-length", "32")
    assert r.exit_code == 143, r.stderr
    assert (f"Interrupted (SIGTERM) during the bf16 check: the model is saved in {out}, without a check "
            f"(emolabel check-bf16 --model {out} runs it).") in " ".join(r.stderr.split())
    assert (out / "model.safetensors").exists() and (out / "train_log.jsonl").exists()
    assert not (out / "precision-check.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--device", "tpu"], "Unknown --device 'tpu': use auto, cpu, cuda or cuda:N."),
    (["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["--precision", "fp8"], "Invalid value for '--precision'"),
])
def test_eval_a_bad_option_value_exits_2(tmp_path, tiny_model, tables, args, message):
    r = run_cli("eval", tables[1], "--model", str(tiny_model), "--predictions", str(tmp_path / "p.csv"), *args)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and message in " ".join(err.split()), err
    assert not (tmp_path / "p.csv").exists()


def test_a_signal_before_any_epoch_finished_saves_nothing_keeps_the_checkpoint_and_exits_143(tmp_path, tiny_base,
                                                                                           tables, monkeypatch):
    """finetune on signals.py: SIGTERM (its Interrupted) in epoch 1 leaves no model and no log, says where
    the progress is kept, and exits 128 + 15."""
    import signal

    from emolabel import train_loop
    from emolabel.signals import Interrupted
    from emolabel.train_resume import CHECKPOINT, checkpoint_dir

    real, calls = train_loop._loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise Interrupted(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_loop, "_loss", loss)
    out = tmp_path / "m"
    r = invoke("finetune", tables[0], "--validation", tables[1], "-o", str(out), "--base", str(tiny_base),
               "--epochs", "1", "--batch-size", "4", "--head", "16", "--max-length", "32", "--checkpoint-every", "0")
    assert r.exit_code == 143, r.stderr
    assert (f"Interrupted (SIGTERM): no model was saved. The progress is kept in {checkpoint_dir(out)}: run the "
            "same command with --resume to go on.") in " ".join(r.stderr.split())
    assert not out.exists() and (checkpoint_dir(out) / CHECKPOINT).exists()
    assert not list(tmp_path.glob(".m-train_log.jsonl*"))  # the log of a run that saved nothing is removed
