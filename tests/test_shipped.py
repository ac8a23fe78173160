"""Integration tests with the shipped model (offline; the data tests skip without ../shared)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import EMOTION_DATA, REPO, run_cli

from emolabel.config import EMOTIONS, default_model_dir

SHIPPED = REPO / "weights" / "emotion-minilm"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped model in weights/")]
needs_data = pytest.mark.skipif(not (EMOTION_DATA / "test.csv").exists(),
                                reason="../shared/data/emotion/test.csv is not here (the dataset is not in the repo)")


@pytest.fixture(scope="module")
def labeler():
    import emolabel

    return emolabel.load(device="cpu", precision="fp32")


def test_default_model_is_the_shipped_one():
    assert default_model_dir().resolve() == SHIPPED.resolve()
    cfg = json.loads((SHIPPED / "emolabel.json").read_text())
    assert cfg["labels"] == EMOTIONS
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size < 50e6


def test_tag_without_model_option_uses_the_shipped_model():
    r = run_cli("tag", str(REPO / "examples" / "posts.csv"), "-o", "-", "--output-format", "jsonl", cwd=REPO.parent)
    assert r.returncode == 0, r.stderr.decode()
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 10
    got = {row["id"]: row["emotion"] for row in rows}
    assert got["2"] == "sadness" and got["4"] == "fear" and got["6"] == "love" and got["7"] is None


def test_obvious_texts(labeler):
    texts = ["i feel so happy and grateful today", "i feel so lonely and miserable",
             "i am furious and so angry at them", "i feel scared and terrified of the dark"]
    assert labeler.predict(texts) == ["joy", "sadness", "anger", "fear"]


def _test_split():
    with open(EMOTION_DATA / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


@needs_data
def test_numbers_of_the_model_card_on_the_test_split(labeler):
    """A guard that the shipped files are the model the card describes (measured: 92.80%, 0.8949,
    ECE 0.049). Issue 20's targets (93.5%, 0.900, ECE 0.03) are not met: see the card."""
    from emolabel.evaluate import evaluate_probs

    texts, y = _test_split()
    m = evaluate_probs(labeler.predict_proba(texts), y, labeler.labels)
    assert m["accuracy"] >= 0.926
    assert m["macro_f1"] >= 0.892
    assert m["ece"] < 0.06


EXTRA = EMOTION_DATA.parent / "extra"


@pytest.mark.skipif(not (EXTRA / "goemotions_validation.csv").exists(), reason="../shared/data/extra is not here")
def test_it_holds_on_reddit_comments_and_mixed_case_tweets(labeler):
    """What the wider training was for: the CARER-only model was right on 48% of GoEmotions and 32%
    of TEC validation rows (measured: 83.5% and 62.2% now)."""
    from emolabel.data import labelled_data, read_table

    for name, floor in (("goemotions_validation.csv", 0.80), ("tec_validation.csv", 0.58)):
        data, _ = labelled_data(read_table(str(EXTRA / name), None), name, "text", "label", labeler.labels)
        acc = (labeler.predict_proba(data.texts).argmax(1) == data.labels).mean()
        assert acc >= floor, (name, acc)


def test_emoji_and_short_real_texts_get_sensible_labels(labeler):
    """issue 11's new-user tries: 'i am sad' was anger 0.71, 'This made me cry.' anger 0.97."""
    got = labeler.predict(["i am sad", "This made me cry.", "👍", "I love this product so much 😍"])
    assert got == ["sadness", "sadness", "joy", "love"]


@needs_data
def test_int8_on_cpu_costs_under_0_3_points(labeler):
    import emolabel

    texts, y = _test_split()
    int8 = emolabel.load(device="cpu", precision="int8")
    exact = (labeler.predict_proba(texts).argmax(1) == y).mean()
    fast = (int8.predict_proba(texts).argmax(1) == y).mean()
    assert exact - fast <= 0.003  # issue 4's budget for an approximation (measured: 0.10 points)


@needs_data
def test_default_precision_gives_a_row_the_same_output_whatever_its_neighbours():
    """Issue 12: with int8 the test split's labels changed on 17-28 of 2,000 rows under shuffling,
    another batch size or chunk size. The default now gives each row the same label everywhere."""
    import emolabel

    texts, _ = _test_split()
    base = emolabel.load(device="cpu").predict_proba(texts)
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = np.empty_like(base)
    shuffled[perm] = emolabel.load(device="cpu", batch_size=8).predict_proba([texts[i] for i in perm])
    alone = np.stack([emolabel.load(device="cpu").predict_proba([t])[0] for t in texts[:50]])
    assert (shuffled.argmax(1) == base.argmax(1)).all()
    assert np.abs(shuffled - base).max() < 1e-5 and np.abs(alone - base[:50]).max() < 1e-5


def test_fp32_leaves_tf32_off(labeler):
    """`--precision fp32` is the README's setting for per-row outputs on a GPU: TF32 (10-bit
    mantissa products) would round like bf16, so nothing in emolabel may turn it on."""
    import torch

    labeler.predict_proba(["i am happy"])
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32


@needs_data
def test_styled_text_costs_under_one_point(labeler):
    from emolabel.styles import mixed

    texts, y = _test_split()
    clean = (labeler.predict_proba(texts).argmax(1) == y).mean()
    styled = (labeler.predict_proba([mixed(t) for t in texts]).argmax(1) == y).mean()
    assert clean - styled < 0.01
