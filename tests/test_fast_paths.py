"""Fast paths must return what the plain path returns."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest
from conftest import EMOTION_DATA, REPO

from emolabel.inference import Labeler, TextEncoder
from emolabel.styles import STYLES

SHIPPED = REPO / "weights" / "emotion-minilm"

HOSTILE = [
    "café naïve résumé Ünïcödé", "日本語のテキストです", "中文 测试 混合 english", "אני שמח מאוד", "مرحبا بالعالم",
    "zero\u200bwidth\u200djoiner", "emoji 😂😭❤️ only", "Ｆｕｌｌ－ｗｉｄｔｈ", "tabs\tand\nnewlines\r\n", "ÆØÅ æøå ß",
    "i can't — won't “quote” ‘this’", "x" * 300, "ﬁ ligature", "Ωmega μ", "", "   ",
]


def texts_for_check() -> list[str]:
    texts = list(HOSTILE)
    if (EMOTION_DATA / "test.csv").exists():
        with open(EMOTION_DATA / "test.csv", newline="") as f:
            clean = [r["text"] for r in csv.DictReader(f)]
        texts += clean
        texts += [STYLES["mixed"](t) for t in clean[:500]]
    return texts


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_fast_tokenization_gives_identical_ids(which, tiny_model):
    folder = tiny_model if which == "tiny" else SHIPPED
    if not (folder / "tokenizer.json").exists():
        pytest.skip("the shipped model is not in weights/")
    fast = TextEncoder(folder, 128, "social-v1")
    plain = TextEncoder(folder, 128, "social-v1", fast=False)
    assert fast.fast and not plain.fast
    arr = pa.array(texts_for_check(), pa.string())
    a = [e.ids for e in fast.encode(fast.normalize(arr).to_pylist())]
    b = [e.ids for e in plain.encode(plain.normalize(arr).to_pylist())]
    assert a == b


def test_token_budget_batches_match_one_by_one(tiny_model):
    texts = texts_for_check()[:300]
    big = Labeler(tiny_model, device="cpu", precision="fp32", batch_size=512, max_tokens=1 << 16).predict_proba(texts)
    one = Labeler(tiny_model, device="cpu", precision="fp32", batch_size=1).predict_proba(texts)
    np.testing.assert_allclose(big, one, atol=1e-5)


def test_int8_on_cpu_agrees_with_fp32(tiny_model):
    """The opt-in int8 path: same labels as fp32 on nearly every text, close probabilities."""
    texts = texts_for_check()[:1000]
    fp32 = Labeler(tiny_model, device="cpu", precision="fp32").predict_proba(texts)
    assert Labeler(tiny_model, device="cpu").precision == "fp32"  # the CPU default: batch-independent
    int8 = Labeler(tiny_model, device="cpu", precision="int8").predict_proba(texts)
    ok = ~np.isnan(fp32[:, 0])
    assert (np.isnan(int8[:, 0]) == ~ok).all()
    assert (int8[ok].argmax(1) == fp32[ok].argmax(1)).mean() > 0.97
    assert np.abs(int8[ok] - fp32[ok]).max() < 0.05
