"""The Python API beyond predict: label_frame on Polars, pandas and pyarrow tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import emolabel
from emolabel.errors import InputError
from emolabel.labels import column_names


def test_label_frame_adds_tag_columns_to_every_kind_of_frame(tiny_model):
    import polars as pl

    lab = emolabel.load(str(tiny_model), device="cpu")
    texts = ["i feel happy", None, "so sad today", ""]
    want = lab.predict_proba(texts)
    out = emolabel.label_frame(pl.DataFrame({"id": [1, 2, 3, 4], "text": texts}), labeler=lab)
    assert isinstance(out, pl.DataFrame) and out.columns == ["id", "text", *column_names(lab.labels)]
    assert out["emotion"].to_list() == lab.predict(texts)
    np.testing.assert_allclose(out["emotion_joy"].to_numpy(), want[:, lab.labels.index("joy")], atol=1e-6)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"body": texts}, index=[10, 20, 30, 40])
    got = emolabel.label_frame(frame, text_column="body", labeler=lab, min_score=0.99)
    assert list(got.index) == [10, 20, 30, 40] and "emotion" not in frame.columns  # a new frame
    assert list(got["emotion_status"]) == ["uncertain", "no text", "uncertain", "no text"]
    table = emolabel.label_frame(pa.table({"text": texts}), labeler=lab)
    assert table.column("emotion").to_pylist() == lab.predict(texts)
    with pytest.raises(InputError, match="Did you mean 'text'"):
        emolabel.label_frame(pl.DataFrame({"text": ["x"]}), text_column="txt", labeler=lab)
    with pytest.raises(InputError, match="already has column"):
        emolabel.label_frame(pl.DataFrame({"text": ["x"], "emotion": ["joy"]}), labeler=lab)
