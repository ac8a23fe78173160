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


def test_tag_file_takes_paths_and_names_an_argument_of_the_wrong_type(tmp_path, tiny_model):
    from pathlib import Path

    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("text\ni feel happy\nso sad\n")
    assert emolabel.tag_file(tmp_path / "a.csv", tmp_path / "o.csv", model=tiny_model).rows == 2
    assert emolabel.tag_file([tmp_path / "a.csv", Path(tmp_path / "b.csv")], tmp_path / "o2.csv",
                             model=str(tiny_model)).rows == 4
    src, out = str(tmp_path / "a.csv"), str(tmp_path / "o3.csv")
    for fields, message in [
        ({"min_score": "0.5"}, "`min_score` must be a number or None, not str '0.5'."),
        ({"limit": "2"}, "`limit` must be an int or None, not str '2'."),
        ({"limit": True}, "`limit` must be an int or None, not bool True."),
        ({"text_column": None}, "`text_column` must be a str, not None."),
        ({"text_col": "body"}, "Unknown option(s) `text_col`. Did you mean `text_column`?"),
    ]:
        with pytest.raises(TypeError) as e:
            emolabel.tag_file(src, out, model=str(tiny_model), **fields)
        assert str(e.value).startswith(message)
    with pytest.raises(TypeError, match=r"^`input` must be a path \(a str or Path, '-' for stdin, or a list of them\), "
                                        "not int 3.$"):
        emolabel.tag_file(3, out)
    with pytest.raises(TypeError, match="^`options` must be a TagOptions, not dict"):
        emolabel.tag_file(src, out, {"model": str(tiny_model)})
    assert not (tmp_path / "o3.csv").exists()


def test_every_entry_point_checks_the_shared_options_with_tag_files_words(tiny_model):
    """tag_file, label_frame, Labeler and predict take some of the same options: one check, one message."""
    import polars as pl

    from emolabel.errors import OptionError
    from emolabel.inference import Labeler
    from emolabel.options import TagOptions

    lab = emolabel.load(str(tiny_model), device="cpu")
    frame = pl.DataFrame({"text": ["i feel happy"]})
    for call, option in [
        (lambda: emolabel.label_frame(frame, labeler=lab, min_score=2), {"min_score": 2}),
        (lambda: lab.predict(["i feel happy"], min_score=2), {"min_score": 2}),
        (lambda: emolabel.label_frame(frame, labeler=lab, prefix=""), {"prefix": ""}),
        (lambda: emolabel.label_frame(frame, labeler=lab, prefix=" "), {"prefix": " "}),
        (lambda: Labeler(tiny_model, device="cpu", threads=0), {"threads": 0}),
        (lambda: emolabel.load(str(tiny_model), max_length=1), {"max_length": 1}),
    ]:
        with pytest.raises(OptionError) as want:
            TagOptions(**option).check()
        with pytest.raises(OptionError) as got:
            call()
        assert str(got.value) == str(want.value)
    with pytest.raises(TypeError, match=r"^`batch_size` must be an int or None, not str '3'\.$"):
        emolabel.load(str(tiny_model), batch_size="3")
    with pytest.raises(TypeError, match=r"^`min_score` must be a number or None, not str '0\.5'\.$"):
        emolabel.label_frame(frame, labeler=lab, min_score="0.5")
    with pytest.raises(OptionError, match="Give `labeler` or `model`, not both"):
        emolabel.label_frame(frame, labeler=lab, model=str(tiny_model))
    assert emolabel.label_frame(frame, model=tiny_model)["emotion"].to_list() == lab.predict(["i feel happy"])


def test_predict_names_an_item_that_is_not_text(tiny_model):
    lab = emolabel.load(str(tiny_model), device="cpu")
    with pytest.raises(TypeError, match=r"^texts\[0\] is int 1, not a str \(or None for no text\)"):
        lab.predict([1, "x"])
    with pytest.raises(InputError, match=r"^texts\[1\] is not text: 'caf\\udce9' holds '\\udce9' at position 3, a "
                                         "lone surrogate"):
        lab.predict_proba(["x", "caf\udce9"])
    with pytest.raises(InputError, match=r"^texts\[0\] holds bytes that are not UTF-8 text"):
        lab.predict([b"caf\xe9"])
    assert lab.predict(("i feel happy", None)) == lab.predict(t for t in ["i feel happy", None]) == lab.predict(
        ["i feel happy", None])
    assert lab.prepare(["i feel happy", None]).n == 2  # a list, as well as an Arrow array


def test_label_frame_refuses_what_it_cannot_label_by_name(tiny_model):
    import polars as pl

    pd = pytest.importorskip("pandas")
    lab = emolabel.load(str(tiny_model), device="cpu")
    with pytest.raises(TypeError, match=r"not a polars LazyFrame: pass frame\.collect\(\)"):
        emolabel.label_frame(pl.DataFrame({"text": ["x"]}).lazy(), labeler=lab)
    with pytest.raises(TypeError, match=r"not a pandas Series: pass series\.to_frame\('text'\)"):
        emolabel.label_frame(pd.Series(["x"]), labeler=lab)
    with pytest.raises(InputError, match="^The frame has 2 columns named 'text'"):
        emolabel.label_frame(pd.DataFrame([["x", "y"]], columns=["text", "text"]), labeler=lab)
    with pytest.raises(InputError, match="^The frame has 2 columns named 'text'"):
        emolabel.label_frame(pa.Table.from_arrays([pa.array(["x"])] * 2, names=["text", "text"]), labeler=lab)
    twice = emolabel.label_frame(pd.DataFrame([["x", "a", "b"]], columns=["text", "id", "id"]), labeler=lab)
    assert list(twice.columns) == ["text", "id", "id", *column_names(lab.labels)]
    mixed = pd.DataFrame({"text": ["x", 5, None]}, index=[10, 20, 30], dtype=object)
    with pytest.raises(TypeError, match=r"^Column 'text' of the frame, row 2 \(index 20\), is int 5, not a str"):
        emolabel.label_frame(mixed, labeler=lab)
    with pytest.raises(InputError, match=r"^Column 'text' of the frame, row 1 \(index 0\), is not text"):
        emolabel.label_frame(pd.DataFrame({"text": pd.Series(["caf\udce9"], dtype=object)}), labeler=lab)
    with pytest.raises(InputError) as e:  # a frame has no input format or delimiter to suggest
        emolabel.label_frame(pl.DataFrame({"body": ["x"]}), labeler=lab)
    assert str(e.value) == "Column 'text' not found in the frame. Available columns: body. Use `text_column` to choose."
