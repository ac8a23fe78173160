"""Which columns tag writes (`columns`, `probabilities`, `score`, `top_k`; selection.Selection) and the
count of texts that look non-English (language.looks_non_english), on the tiny model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from conftest import REPO, run_cli
from helpers import EXT, interrupt_after_two_chunks, invoke, read_path, write_table

from emolabel.config import EMOTIONS
from emolabel.errors import EmolabelWarning, OptionError, OutputError
from emolabel.language import looks_non_english

FORMATS = ["csv", "parquet", "jsonl"]
PROBS = [f"emotion_{e}" for e in EMOTIONS]

NON_ENGLISH = [
    "ärgerlich",
    "Ich bin so wütend auf dich",
    "Das ist mir egal, ich habe keine Zeit",
    "Je suis très heureux aujourd'hui",
    "C'est pas grave, on verra demain",
    "Estoy muy feliz hoy",
    "No sé qué hacer con mi vida",
    "我今天很开心",
    "Я так счастлив сегодня",
    "Мне очень грустно",
]
ENGLISH = [
    "i feel so happy today",
    "lmaooo ur so extra 💀",
    "omg this is lit af 🔥🔥",
    "ngl thats lowkey sus",
    "i can't even rn 😭😭",
    "la la land was amazing",
    "i love this café",
    "¯\\_(ツ)_/¯ whatever",
    "de-stress weekend, finally",
    "Beyoncé slayed tonight, I'm so happy",
    "😂😂😂",
    "",
    None,
]


def sample(n: int = 40) -> pa.Table:
    words = "i feel so happy sad angry today love afraid little bit scared surprised".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(n)]
    texts[3], texts[5] = None, "ärgerlich"
    return pa.table({"id": [str(i) for i in range(n)], "text": texts, "note": [f"n{i}" for i in range(n)]})


def tag(tmp_path, tiny_model, fmt="parquet", name="out", **options):
    from emolabel import tag_file

    src = tmp_path / f"in{EXT[fmt]}"
    if not src.exists():
        write_table(sample(), src, fmt)
    dst = tmp_path / f"{name}{EXT[fmt]}"
    summary = tag_file(str(src), str(dst), model=str(tiny_model), chunk_rows=7, **options)
    return read_path(dst, fmt), summary


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_option_writes_its_columns_in_every_format(tmp_path, tiny_model, fmt):
    """Chunks of 7 rows: the schema of every chunk is the first's (Parquet would refuse another)."""
    full, _ = tag(tmp_path, tiny_model, fmt, "full")
    assert full.column_names == ["id", "text", "note", "emotion", "emotion_score", *PROBS]  # today's output

    out, _ = tag(tmp_path, tiny_model, fmt, "cols", columns=["note", "id"])
    assert out.column_names == ["note", "id", "emotion", "emotion_score", *PROBS]
    assert out.column("id").to_pylist() == full.column("id").to_pylist()

    out, _ = tag(tmp_path, tiny_model, fmt, "slim", probabilities=False)
    assert out.column_names == ["id", "text", "note", "emotion", "emotion_score"]

    out, _ = tag(tmp_path, tiny_model, fmt, "noscore", score=False)
    assert out.column_names == ["id", "text", "note", "emotion", *PROBS]

    if fmt == "csv":  # a row without text would be a blank line, which CSV readers skip
        with pytest.raises(OptionError, match="A CSV of the 'emotion' column alone would write"):
            tag(tmp_path, tiny_model, fmt, "none", columns=[], probabilities=False, score=False)
    else:
        out, _ = tag(tmp_path, tiny_model, fmt, "none", columns=[], probabilities=False, score=False)
        assert out.column_names == ["emotion"]
        assert out.column("emotion").to_pylist() == full.column("emotion").to_pylist()

    out, _ = tag(tmp_path, tiny_model, fmt, "top", columns=["id"], probabilities=False, top_k=3)
    top = [f"emotion_top{i}{s}" for i in (1, 2, 3) for s in ("", "_score")]
    assert out.column_names == ["id", "emotion", "emotion_score", *top]
    _check_top_k(out, full, 3)


def _check_top_k(out: pa.Table, full: pa.Table, k: int) -> None:
    """top1 is the label and its score the label's score; each topN_score is the probability
    column of the label it names; best first."""
    rows, probs = out.to_pylist(), full.to_pylist()
    for row, ref in zip(rows, probs):
        if ref["emotion"] is None:
            assert all(row[f"emotion_top{i}"] is None and row[f"emotion_top{i}_score"] is None for i in range(1, k + 1))
            continue
        assert row["emotion_top1"] == ref["emotion"] and row["emotion_top1_score"] == pytest.approx(ref["emotion_score"])
        scores = [row[f"emotion_top{i}_score"] for i in range(1, k + 1)]
        assert scores == sorted(scores, reverse=True)
        assert len({row[f"emotion_top{i}"] for i in range(1, k + 1)}) == k
        for i in range(1, k + 1):
            assert row[f"emotion_top{i}_score"] == pytest.approx(ref[f"emotion_{row[f'emotion_top{i}']}"], abs=1e-6)


def test_unknown_column_is_exit_2_with_did_you_mean(tmp_path, tiny_model):
    src = write_table(sample(), tmp_path / "in.csv", "csv")
    r = run_cli("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--columns", "id,txet")
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert ("Error: --columns names 'txet', which " + str(src) + " does not have. Did you mean 'text'? "
            "Its columns: id, text, note.") in r.stderr.decode()
    assert not (tmp_path / "o.csv").exists()


def test_misused_selection_options_are_exit_2(tmp_path, tiny_model):
    src = write_table(sample(), tmp_path / "in.csv", "csv")
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--top-k", "7")
    assert r.exit_code == 2 and "--top-k 7 is more than the model's 6 labels" in r.stderr
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model), "--columns", "id,id")
    assert r.exit_code == 2 and "--columns names 'id', which is named twice" in r.stderr
    with pytest.raises(TypeError, match="`columns` must be a list of column names"):
        tag(tmp_path, tiny_model, columns="id")


def test_cli_options_reach_the_output(tmp_path, tiny_model):
    src = write_table(sample(), tmp_path / "in.csv", "csv")
    dst = tmp_path / "o.jsonl"
    r = invoke("tag", str(src), "-o", str(dst), "--model", str(tiny_model), "--columns", "id, note", "--no-score",
               "--no-probabilities", "--top-k", "2")
    assert r.exit_code == 0, r.stderr
    assert read_path(dst, "jsonl").column_names == ["id", "note", "emotion", "emotion_top1", "emotion_top1_score",
                                                   "emotion_top2", "emotion_top2_score"]


def test_counts_without_score_or_probabilities(tmp_path, tiny_model):
    """The summary counts from the label (and status) columns: right with the others left out."""
    _, full = tag(tmp_path, tiny_model, "parquet", "full", min_score=0.2)
    out, slim = tag(tmp_path, tiny_model, "parquet", "slim", min_score=0.2, score=False, probabilities=False)
    assert out.column_names == ["id", "text", "note", "emotion", "emotion_status"]
    assert (slim.empty, slim.uncertain, slim.label_counts) == (full.empty, full.uncertain, full.label_counts)
    assert slim.empty == 1


def test_resume_keeps_the_selection_and_refuses_another(tmp_path, tiny_model, monkeypatch):
    from emolabel import checkpoint

    whole, _ = tag(tmp_path, tiny_model, "parquet", "whole", columns=["id"], top_k=2, score=False)
    interrupt_after_two_chunks(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tag(tmp_path, tiny_model, "parquet", "cut", columns=["id"], top_k=2, score=False)
    monkeypatch.undo()
    with pytest.raises(OutputError, match=r"options\.top_k changed"):
        tag(tmp_path, tiny_model, "parquet", "cut", columns=["id"], top_k=3, score=False, resume=True)
    with pytest.raises(OutputError, match=r"options\.columns changed"):
        tag(tmp_path, tiny_model, "parquet", "cut", columns=["note"], top_k=2, score=False, resume=True)
    out, summary = tag(tmp_path, tiny_model, "parquet", "cut", columns=["id"], top_k=2, score=False, resume=True)
    assert summary.resumed in (7, 14) and out.equals(whole)  # the writer thread may not have committed the second
    assert summary.non_english == 1  # the committed chunks' count is kept
    assert not checkpoint.resume_dir(str(tmp_path / "cut.parquet")).exists()


def test_label_frame_takes_the_same_options(tmp_path, tiny_model):
    import polars as pl

    import emolabel

    table = sample()
    full, _ = tag(tmp_path, tiny_model, "parquet", "full")
    with pytest.warns(EmolabelWarning, match="1 of 40 texts look non-English; labels there are unreliable"):
        out = emolabel.label_frame(table, model=str(tiny_model), columns=["id"], probabilities=False, top_k=2)
    assert out.column_names == ["id", "emotion", "emotion_score", *(f"emotion_top{i}{s}" for i in (1, 2)
                                                                   for s in ("", "_score"))]
    _check_top_k(out, full, 2)
    frame = pl.from_arrow(table)
    with pytest.warns(EmolabelWarning):
        df = emolabel.label_frame(frame, model=str(tiny_model), columns=["note", "id"], score=False)
    assert df.columns == ["note", "id", "emotion", *PROBS]
    with pytest.warns(EmolabelWarning):
        pdf = emolabel.label_frame(table.to_pandas(), model=str(tiny_model), columns=["id"], probabilities=False)
    assert list(pdf.columns) == ["id", "emotion", "emotion_score"]
    with pytest.raises(OptionError, match="`columns` names 'nope'"):
        emolabel.label_frame(frame, model=str(tiny_model), columns=["nope"])


def test_non_english_check_on_examples():
    assert looks_non_english(pa.array(NON_ENGLISH)).all(), NON_ENGLISH
    assert not looks_non_english(pa.array(ENGLISH)).any(), ENGLISH
    posts = pa_csv.read_csv(REPO / "examples" / "posts.csv").column("text")
    assert not looks_non_english(posts).any()
    assert looks_non_english(pa.array([1, 2])).tolist() == [False, False]  # numbers: nothing to tell


def test_run_summary_counts_non_english_texts(tmp_path, tiny_model):
    texts = NON_ENGLISH + ENGLISH
    src = tmp_path / "mixed.csv"
    pa_csv.write_csv(pa.table({"text": pa.array(texts, pa.string())}), src)
    r = invoke("tag", str(src), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model))
    assert r.exit_code == 0, r.stderr
    assert "10 texts look non-English; labels there are unreliable" in r.stderr
    r = invoke("tag", str(REPO / "examples" / "posts.csv"), "-o", str(tmp_path / "p.csv"), "--model", str(tiny_model))
    assert r.exit_code == 0 and "non-English" not in r.stderr
    r = invoke("label", "--model", str(tiny_model), "ärgerlich", "i am so happy")
    assert r.exit_code == 0 and "1 of 2 texts look non-English" in r.stderr and "ärgerlich" in r.stdout
