"""Metrics against hand-computed numbers; the eval command and its report; normalization; styles."""

from __future__ import annotations

import json

import numpy as np
import pytest
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
    assert metrics["rows"] == 3 and len(metrics["confusion_matrix"]) == 6
    assert set(metrics["styles"]) == set(STYLES)
    png = (tmp_path / "rep" / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_normalization_maps_social_text_to_the_training_style():
    got = normalize_list(["I DON'T know u r great!!! 😂 https://x.co/abc @bob", None, "  ",
                          "Ｆｕｌｌ café &amp; more", "cuz i feel SAD..."], "social-v1")
    assert got == ["i dont know you are great", None, "", "full café and more", "because i feel sad"]
    assert normalize_list(["Keep AS is!"], "none") == ["Keep AS is!"]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_styles_are_deterministic_and_normalize_back(style):
    text = "i dont know why but i feel really happy because you are here"
    styled = STYLES[style](text)
    assert styled == STYLES[style](text)
    if style in ("capitals", "emoji", "links", "slang"):
        assert normalize_list([styled], "social-v1")[0] == text
