"""Metrics against hand-computed numbers; the eval command and its report; normalization; styles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PATIENCE
from helpers import invoke

from emolabel.evaluate import classification_metrics, evaluate_probs, expected_calibration_error
from emolabel.normalize import normalize_list
from emolabel.styles import STYLES


def test_metrics_match_a_hand_computed_confusion_matrix():
    # true:  0 0 0 1 1 2 ; predicted: 0 0 1 1 2 2
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert m["recall"] == pytest.approx([2 / 3, 0.5, 1.0])
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert m["f1"] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["support"] == [3, 2, 1]


def test_macro_f1_is_over_the_labels_the_table_has():
    """A table without a label (TEC has no love) is not marked down for it; predicting that label
    is still a miss, through the recall of the row's true label."""
    y_true = np.array([0, 0, 1, 1])
    m = classification_metrics(y_true, np.array([0, 0, 1, 1]), 3)  # label 2 absent, never predicted
    assert m["macro_f1"] == pytest.approx(1.0)
    m = classification_metrics(y_true, np.array([0, 2, 1, 1]), 3)  # one row predicted as the absent label
    assert m["macro_f1"] == pytest.approx((2 * 1 * 0.5 / 1.5 + 1.0) / 2)  # labels 0 and 1 only


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 0, 1])) == pytest.approx(0.5)


def test_rows_without_text_count_as_wrong():
    probs = np.array([[0.9, 0.1], [np.nan, np.nan]])
    m = evaluate_probs(probs, np.array([0, 0]), ["a", "b"])
    assert m["accuracy"] == 0.5 and m["rows_without_text"] == 1


def test_eval_command_prints_and_writes_a_report(tmp_path, tiny_model):
    (tmp_path / "test.csv").write_text("text,label\ni feel happy,1\ni am sad,0\ni love you,2\n,3\n")
    r = invoke("eval", str(tmp_path / "test.csv"), "--model", str(tiny_model), "--report", str(tmp_path / "rep"),
               "--styles")
    assert r.exit_code == 0, r.stderr
    assert "accuracy" in r.stdout and "confusion matrix" in r.stdout and "mixed" in r.stdout
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    (table,) = metrics["tables"]
    assert table["rows"] == 4 and table["rows_without_text"] == 1 and len(table["confusion_matrix"]) == 6
    assert set(table["styles"]) == set(STYLES)
    assert list(table["per_class"]) == ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert table["per_class"]["joy"]["support"] == 1 and len(table["sha256"]) == 64
    assert metrics["model"] == str(tiny_model) and metrics["precision"] in ("int8", "fp32")
    assert metrics["device"] == "cpu"
    for name in ("confusion_matrix.png", "calibration.png"):
        png = (tmp_path / "rep" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_eval_over_several_tables_reports_each_and_the_mean(tmp_path, tiny_model):
    (tmp_path / "a.csv").write_text("text,label\ni feel happy,1\ni am sad,0\ni love you,2\n")
    (tmp_path / "b.csv").write_text("text,label\ni am angry,anger\ni feel afraid,fear\n")
    r = invoke("eval", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--model", str(tiny_model),
               "--report", str(tmp_path / "rep"), "--predictions", str(tmp_path / "pred.csv"))
    assert r.exit_code == 0, r.stderr
    assert "a.csv" in r.stdout and "b.csv" in r.stdout and "mean" in r.stdout
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    a, b = metrics["tables"]
    assert (a["rows"], b["rows"]) == (3, 2)
    assert metrics["mean"]["accuracy"] == pytest.approx((a["accuracy"] + b["accuracy"]) / 2)
    assert (tmp_path / "rep" / "confusion_matrix-a.png").exists() and (tmp_path / "rep" / "confusion_matrix-b.png").exists()
    import pyarrow.csv as pa_csv

    pred = pa_csv.read_csv(tmp_path / "pred.csv").to_pylist()
    assert [p["gold"] for p in pred] == ["joy", "sadness", "love", "anger", "fear"]
    assert all(p["wrong"] == (p["gold"] != p["predicted"]) for p in pred)
    assert sum(not p["wrong"] for p in pred[:3]) == round(a["accuracy"] * 3)
    b_row = next(line for line in r.stdout.splitlines() if "b.csv" in line and "%" in line)
    cells = [c.strip() for c in b_row.split("│")[1:-1]]  # table, rows, accuracy, macro-F1, six F1s, ECE
    assert cells[4:10].count("-") == 4, cells  # b.csv has anger and fear only: no F1 of 0.000 for the rest


def test_eval_counts_rows_without_text_as_wrong_and_keeps_them_in_the_predictions(tmp_path, tiny_model):
    """A 60-row table is reported as 60 rows, its empty row counted as wrong and named on a line of
    its own; the predictions file has all 60 rows, in order."""
    import pyarrow.csv as pa_csv

    texts = [f"i feel happy {i}" for i in range(60)]
    texts[17] = ""
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"{t},joy\n" for t in texts))
    r = invoke("eval", str(tmp_path / "t.csv"), "--model", str(tiny_model), "--report", str(tmp_path / "rep"),
               "--predictions", str(tmp_path / "pred.csv"))
    assert r.exit_code == 0, r.stderr
    assert "(60 rows)" in r.stdout and "t.csv: 1 row of 60 has no text, counted as wrong" in r.stdout
    (table,) = json.loads((tmp_path / "rep" / "metrics.json").read_text())["tables"]
    assert table["rows"] == 60 and table["rows_without_text"] == 1 and sum(table["support"]) == 60
    pred = pa_csv.read_csv(tmp_path / "pred.csv", convert_options=pa_csv.ConvertOptions(
        strings_can_be_null=False)).to_pylist()
    assert [p["text"] for p in pred] == texts
    assert pred[17]["wrong"] is True and pred[17]["predicted"] == ""
    assert table["accuracy"] == pytest.approx(sum(not p["wrong"] for p in pred) / 60)


def test_a_missing_label_is_counted_in_the_singular(tmp_path, tiny_model):
    (tmp_path / "t.csv").write_text("text,label\ni feel happy,joy\ni am sad,\n")
    r = invoke("eval", str(tmp_path / "t.csv"), "--model", str(tiny_model))
    assert r.exit_code == 1 and "row 2 has no label in column 'label' (1 such row)." in r.stderr


def test_eval_checks_the_data_before_loading_the_model(tmp_path, tiny_model, monkeypatch):
    import emolabel.inference

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(emolabel.inference, "Labeler", boom)
    (tmp_path / "t.csv").write_text("text,label\ni feel happy,joyful\n")
    r = invoke("eval", str(tmp_path / "t.csv"), "--model", str(tiny_model))
    assert r.exit_code == 1 and "joyful" in r.stderr
    assert "--labels" not in r.stderr and "The model knows these labels only" in r.stderr  # eval has no --labels


def test_eval_report_without_matplotlib_is_a_clear_error(tmp_path, tiny_model, monkeypatch):
    import emolabel.evaluate

    monkeypatch.setattr(emolabel.evaluate, "plotting_available", lambda: False)
    (tmp_path / "t.csv").write_text("text,label\ni feel happy,1\n")
    r = invoke("eval", str(tmp_path / "t.csv"), "--model", str(tiny_model), "--report", str(tmp_path / "rep"))
    assert r.exit_code == 1 and "pip install 'emolabel[report]'" in r.stderr
    assert not (tmp_path / "rep").exists()


def test_selective_accuracy_trades_coverage_for_accuracy():
    from emolabel.evaluate import selective_accuracy

    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [np.nan, np.nan]])
    got = selective_accuracy(probs, np.array([0, 1, 1, 0]), (0.0, 0.6, 0.8))
    assert got[0] == {"min_score": 0.0, "coverage": 0.75, "accuracy": pytest.approx(2 / 3)}
    assert got[1] == {"min_score": 0.6, "coverage": 0.5, "accuracy": 1.0}
    assert got[2] == {"min_score": 0.8, "coverage": 0.25, "accuracy": 1.0}


def test_normalization_maps_social_text_to_the_training_style():
    got = normalize_list(["I DON'T know u r great!!! 😂 https://x.co/abc @bob", None, "  ",
                          "Ｆｕｌｌ café &amp; more", "cuz i feel SAD..."], "social-v1")
    assert got == ["i dont know you are great", None, "", "full café and more", "because i feel sad"]
    assert normalize_list(["Keep AS is!"], "none") == ["Keep AS is!"]


def test_social_v2_keeps_what_emoji_and_emoticons_say():
    got = normalize_list(["OMG it's here!!!!! 🎉🎉🎉", "👍", "This made me cry 😭", "love it ❤️ <3", "ok :) :D",
                          "great 👍🏽 job", "USA 🇺🇸", "ratio 3:1, see (a) or b:c", None, "I DON'T know u r great!!!"],
                         "social-v2")
    assert got == ["omg its here party popper", "thumbs up sign", "this made me cry loudly crying face",
                   "love it red heart red heart", "ok smiling face grinning face", "great thumbs up sign job",
                   "usa", "ratio 3 1 see a or b c", None, "i dont know you are great"]
    # v1 is unchanged: models trained with it label exactly as before
    assert normalize_list(["OMG 🎉 :)", "👍"], "social-v1") == ["omg", ""]


def test_social_v2_gives_an_emoji_only_row_a_label(tiny_model, tmp_path):
    from conftest import make_tiny_model

    from emolabel.inference import Labeler

    v2 = make_tiny_model(tmp_path / "v2", normalization="social-v2")
    assert Labeler(tiny_model, device="cpu").predict(["👍"]) == [None]  # the fixture is social-v1
    assert Labeler(v2, device="cpu").predict(["👍"])[0] is not None


@pytest.mark.parametrize("style", sorted(STYLES))
def test_styles_are_deterministic_and_normalize_back(style):
    text = "i dont know why but i feel really happy because you are here"
    styled = STYLES[style](text)
    assert styled == STYLES[style](text)
    if style in ("capitals", "emoji", "links", "slang"):
        assert normalize_list([styled], "social-v1")[0] == text


def test_eval_scores_what_predict_proba_does_a_few_batches_at_a_time(tiny_model):
    from emolabel.evaluate import predict_proba
    from emolabel.inference import Labeler

    lb = Labeler(tiny_model, device="cpu", batch_size=4)
    texts = ["happy " * (k % 13) + "sad" for k in range(200)] + ["👍", "i feel fine"]  # 👍: no text (social-v1)
    counts: list[int] = []
    got = predict_proba(lb, texts, counts.append)
    np.testing.assert_array_equal(got, lb.predict_proba(texts))  # bit for bit, the no-text row's NaN too
    assert sum(counts) == len(texts) and len(counts) > 1


def test_eval_progress_counts_rows_of_each_table_on_a_terminal():
    from io import StringIO

    from rich.console import Console

    from emolabel.cli_train import EvalProgress

    out = StringIO()
    with EvalProgress(Console(file=out, force_terminal=True, width=120)) as progress:
        progress.start(1500)
        progress.advance("data/a.csv", 1000)
        assert "a.csv" in out.getvalue() and "1,000/1,500 rows" in out.getvalue()
        progress.advance("data/b.csv (emoji)", 500)
        assert (progress.rows, progress.total, progress.what) == (1500, 1500, "data/b.csv (emoji)")
        assert "b.csv (emoji)" in out.getvalue() and "1,500/1,500 rows" in out.getvalue()
    quiet = StringIO()
    off = EvalProgress(Console(file=quiet))  # not a terminal: counts, draws nothing
    off.start(10)
    off.advance("a.csv", 10)
    assert not off.on and off.rows == 10 and quiet.getvalue() == ""


@pytest.fixture(scope="module")
def big_labelled(tmp_path_factory):
    """A small table, then one big enough that the tiny model needs many seconds for it."""
    import csv

    folder = tmp_path_factory.mktemp("eval-big")
    words = "i feel so happy sad angry today love afraid little bit scared surprised".split()
    with open(folder / "small.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), ("i feel happy", "1"), ("i am sad", "0")])
    with open(folder / "big.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("text", "label"))
        w.writerows((" ".join(words[(i + k) % len(words)] for k in range(5 + i % 40)), str(i % 6))
                    for i in range(200_000))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_eval_with_a_message_and_128_plus_its_number(tmp_path, tiny_model, big_labelled, sig, code):
    """Sent once the small table is scored and the big one has begun: one line, no traceback, nothing written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "emolabel", "eval", str(big_labelled / "small.csv"),
                                 str(big_labelled / "big.csv"), "--model", str(tiny_model), "--device", "cpu",
                                 "--predictions", str(tmp_path / "pred.csv")],
                                stdout=subprocess.PIPE, stderr=err, env=dict(os.environ, COLUMNS="200"))
        deadline = time.time() + PATIENCE  # a safety net against a hang, not a speed check
        while time.time() < deadline and proc.poll() is None and "scored" not in err_path.read_text():
            time.sleep(0.05)
        assert proc.poll() is None, err_path.read_text()  # still at work on the big table
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=PATIENCE)
    text = err_path.read_text()
    assert proc.returncode == code, text
    assert "Traceback" not in text and out == b""
    assert text.strip().splitlines()[-1] == f"Interrupted ({sig}): nothing was written."
    assert "big.csv" not in text and not (tmp_path / "pred.csv").exists()
