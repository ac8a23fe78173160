"""Hugging Face sequence-classification folders run as they are: tiny random BERT, RoBERTa and
DistilBERT classifiers with tokenizers trained here (offline), checked against transformers' own
AutoModelForSequenceClassification on the same texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import WORDS, run_cli

MORE = (
    "wonderful terrible awful great fine okay worried calm proud ashamed guilty jealous bored tired "
    "hopeful grateful disgusted annoyed furious delighted cheerful gloomy miserable anxious relaxed "
    "movie food weather work school friend family dog cat house city music game book news phone "
    "rain sun night morning week year party trip dinner gift letter call message song picture "
    "loved hated enjoyed missed lost won broke made saw heard told asked cried laughed smiled "
    "yes no maybe always sometimes again already soon late early best worst better worse"
).split()
CORPUS = [" ".join(WORDS[i:i + 9] + MORE[i:i + 7]) for i in range(0, len(MORE))] + WORDS + MORE
TEXTS = [
    "I feel so HAPPY today!",
    "this movie was terrible and I cried",
    "😭",  # no emolabel normalization: the model's own tokenizer decides ([UNK] for BERT)
    "",  # no text: nulls
    "my dog is calm, my cat is jealous.",
    " ".join(MORE * 2),  # longer than the model's 64 positions: cut, as transformers' truncation does
    "Grateful for the gift 🎁 and the song",
]
MULTI_BIAS = [2.0, -2.0, 0.5, -0.5]  # well apart from 0: sigmoid scores about 0.88, 0.12, 0.62, 0.38


def _wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    v = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])])
    return tok


def _sharpen(model, bias=None) -> None:
    """Random heads give near-uniform scores: spread them so labels differ by clear margins."""
    import torch

    head = model.classifier.out_proj if hasattr(model.classifier, "out_proj") else model.classifier
    with torch.no_grad():
        head.weight.mul_(30)
        if bias is not None:
            head.bias.copy_(torch.tensor(bias))


@pytest.fixture(scope="session")
def hf_bert(tmp_path_factory) -> Path:
    """BERT, three labels (one capitalised), the tokenizer as vocab.txt only."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("hf") / "bert"
    folder.mkdir()
    tok = _wordpiece()
    tok.model.save(str(folder))  # vocab.txt
    torch.manual_seed(1)
    labels = {0: "sad", 1: "Happy", 2: "angry"}
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, id2label=labels,
        label2id={v: k for k, v in labels.items()}))
    _sharpen(model)
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    return folder


@pytest.fixture(scope="session")
def hf_roberta(tmp_path_factory) -> Path:
    """RoBERTa, two labels, a byte-level BPE saved as vocab.json + merges.txt only."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("hf") / "roberta"
    folder.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=450, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.model.save(str(folder))  # vocab.json, merges.txt
    torch.manual_seed(2)
    labels = {0: "negative", 1: "positive"}
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        id2label=labels, label2id={v: k for k, v in labels.items()}))
    _sharpen(model)
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    return folder


@pytest.fixture(scope="session")
def hf_distilbert(tmp_path_factory) -> Path:
    """DistilBERT, multi-label (four labels), the tokenizer as tokenizer.json."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf") / "distilbert"
    PreTrainedTokenizerFast(tokenizer_object=_wordpiece(), unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    torch.manual_seed(3)
    labels = {0: "joy", 1: "anger", 2: "love", 3: "fear"}
    model = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=_wordpiece().get_vocab_size(), dim=32, n_layers=2, n_heads=2, hidden_dim=37,
        max_position_embeddings=64, id2label=labels, label2id={v: k for k, v in labels.items()},
        problem_type="multi_label_classification"))
    _sharpen(model, MULTI_BIAS)
    model.save_pretrained(folder)
    assert (folder / "tokenizer.json").exists() and not (folder / "vocab.txt").exists()
    return folder


def reference(folder: Path, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """transformers' own scores, one text at a time (no padding): softmax, or sigmoid if multi-label."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    multi = model.config.problem_type == "multi_label_classification"
    rows = []
    with torch.no_grad():
        for t in texts:
            logits = model(**tok(t, return_tensors="pt", truncation=True, max_length=64)).logits[0]
            rows.append((torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy())
    return [model.config.id2label[i] for i in range(model.config.num_labels)], np.stack(rows)


def expected_label(probs: np.ndarray, labels: list[str], multi: bool, threshold: float = 0.5) -> str | None:
    if not multi:
        return labels[int(probs.argmax())]
    kept = [labels[i] for i in np.argsort(-probs, kind="stable") if probs[i] >= threshold]
    return "|".join(kept) or None


@pytest.mark.parametrize("name", ["hf_bert", "hf_roberta", "hf_distilbert"])
def test_tokenizers_are_real(request, name):
    """The trap: a tokenizer built wrongly maps every word to its unknown token. Real words get real ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(name))
    ids = tok("happy people love music")["input_ids"]
    assert len(ids) >= 6 and tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("name", ["hf_bert", "hf_roberta", "hf_distilbert"])
def test_tag_matches_transformers(request, name, tmp_path):
    """`emolabel tag` in a subprocess: id2label's columns in id order, probabilities equal to
    transformers' (1e-5, fp32), labels from id2label (every label over 0.5 for a multi-label model)."""
    folder = request.getfixturevalue(name)
    src = tmp_path / "in.csv"
    pa_csv.write_csv(pa.table({"id": [str(i) for i in range(len(TEXTS))], "text": TEXTS}), src)
    out = tmp_path / "out.parquet"
    r = run_cli("tag", str(src), "-o", str(out), "--model", str(folder), "--batch-size", "3")
    assert r.returncode == 0, r.stderr.decode()
    table = pq.read_table(out)
    labels, want = reference(folder, [t for t in TEXTS if t])
    assert table.column_names == ["id", "text", "emotion", "emotion_score", *(f"emotion_{n}" for n in labels)]
    got = np.stack([table.column(f"emotion_{n}").to_numpy(zero_copy_only=False) for n in labels], axis=1)
    empty = TEXTS.index("")
    assert np.isnan(got[empty]).all() and table.column("emotion")[empty].as_py() is None
    got = np.delete(got, empty, axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    multi = name == "hf_distilbert"
    names = [v for i, v in enumerate(table.column("emotion").to_pylist()) if i != empty]
    assert names == [expected_label(p, labels, multi) for p in want]
    if multi:
        assert any("|" in n for n in names if n)  # several labels in a row: the test means something
    assert b"Traceback" not in r.stderr


def test_label_and_eval_cli(hf_bert, tmp_path):
    """`label` and `eval` in subprocesses; eval matches gold names to id2label whatever their case."""
    labels, want = reference(hf_bert, ["i feel so happy", "this is awful"])
    r = run_cli("label", "--model", str(hf_bert), "--json", "i feel so happy", "this is awful")
    assert r.returncode == 0, r.stderr.decode()
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [row["emotion"] for row in rows] == [labels[int(p.argmax())] for p in want]
    np.testing.assert_allclose([[row[f"emotion_{n}"] for n in labels] for row in rows], want, atol=1e-5)

    gold = [expected_label(p, labels, False).upper() for p in want]  # "HAPPY" is id2label's "Happy"
    data = tmp_path / "test.csv"
    pa_csv.write_csv(pa.table({"text": ["i feel so happy", "this is awful"], "label": gold}), data)
    r = run_cli("eval", str(data), "--model", str(hf_bert), "--predictions", str(tmp_path / "p.csv"))
    assert r.returncode == 0, r.stderr.decode()
    assert "accuracy 100.00%" in r.stdout.decode()

    pa_csv.write_csv(pa.table({"text": ["a", "b"], "label": ["sad", "joyful"]}), data)
    r = run_cli("eval", str(data), "--model", str(hf_bert))
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert f"{data}: row 2 has label 'joyful', which is not one of sad, Happy, angry." in r.stderr.decode()


def test_multi_label_api(hf_distilbert, tmp_path):
    """The Python API on a multi-label model: sigmoid scores, `min_score` is the threshold (0.5 unless
    given), label_frame and tag_file write the same labels; batches and chunks change nothing."""
    import polars as pl

    import emolabel
    from emolabel.inference import Labeler

    texts = [t for t in TEXTS if t]
    labels, want = reference(hf_distilbert, texts)
    lab = emolabel.load(str(hf_distilbert), device="cpu")
    assert lab.labels == labels and lab.multi_label and lab.precision == "fp32"
    np.testing.assert_allclose(lab.predict_proba(texts), want, atol=1e-5, rtol=0)
    assert lab.predict(texts) == [expected_label(p, labels, True) for p in want]
    assert lab.predict(texts, min_score=0.8) == [expected_label(p, labels, True, 0.8) for p in want]
    small = Labeler(hf_distilbert, device="cpu", batch_size=2, max_tokens=64)
    np.testing.assert_allclose(small.predict_proba(texts), want, atol=1e-5, rtol=0)

    frame = emolabel.label_frame(pl.DataFrame({"text": texts}), labeler=lab, min_score=0.8)
    assert frame["emotion"].to_list() == [expected_label(p, labels, True, 0.8) for p in want]
    assert frame["emotion_status"].to_list() == ["labelled" if p.max() >= 0.8 else "uncertain" for p in want]

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    summary = emolabel.tag_file(src, out, model=str(hf_distilbert), device="cpu", chunk_rows=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["emotion"] for r in rows] == lab.predict(texts) and summary.rows == len(texts)
    np.testing.assert_allclose([[r[f"emotion_{n}"] for n in labels] for r in rows], want, atol=1e-5)


def test_precisions_run(hf_roberta):
    """The same --precision rules as emolabel's models: int8 and bf16 run on the CPU, close to fp32."""
    from emolabel.inference import Labeler

    texts = [t for t in TEXTS if t]
    _, want = reference(hf_roberta, texts)
    for precision in ("int8", "bf16"):
        lab = Labeler(hf_roberta, device="cpu", precision=precision)
        assert np.abs(lab.predict_proba(texts) - want).max() < 0.1, precision


def test_pickle_weights_refused(hf_bert, tmp_path):
    """pytorch_model.bin alone is never unpickled: exit 1 with the reason and the conversion."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        (folder / name).write_bytes((hf_bert / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    r = run_cli("label", "--model", str(folder), "hello")
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert "pytorch_model.bin, a Python pickle: loading one runs any code it holds" in err
    assert "safetensors.torch import save_file" in err


def test_not_a_classifier_refused(hf_bert, tmp_path):
    """A base encoder's folder (BertModel) is not taken as a classifier with a random head."""
    from emolabel.errors import ModelError
    from emolabel.inference import Labeler

    folder = tmp_path / "base"
    folder.mkdir()
    cfg = json.loads((hf_bert / "config.json").read_text()) | {"architectures": ["BertModel"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="describes BertModel, not a sequence classifier"):
        Labeler(folder, device="cpu")


def test_missing_head_weight_refused(hf_bert, tmp_path):
    """A weight missing from model.safetensors would be random: refused, named."""
    from safetensors.torch import load_file, save_file

    from emolabel.errors import ModelError
    from emolabel.inference import Labeler

    folder = tmp_path / "headless"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        (folder / name).write_bytes((hf_bert / name).read_bytes())
    state = {k: v for k, v in load_file(hf_bert / "model.safetensors").items() if not k.startswith("classifier.")}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="missing 2 .*classifier"):
        Labeler(folder, device="cpu")


def test_multi_label_eval_refused(hf_distilbert, tmp_path):
    data = tmp_path / "test.csv"
    pa_csv.write_csv(pa.table({"text": ["a"], "label": ["joy"]}), data)
    r = run_cli("eval", str(data), "--model", str(hf_distilbert))
    assert r.returncode == 1 and "is a multi-label model" in r.stderr.decode() and b"Traceback" not in r.stderr


@pytest.mark.slow
def test_ray_engine(hf_distilbert, tmp_path):
    """The Ray engine runs the same seam: the same labels and scores as the local engine."""
    pytest.importorskip("ray")
    texts = [t for t in TEXTS if t]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    r = run_cli("tag", str(src), "-o", str(tmp_path / "out"), "--model", str(hf_distilbert), "--engine", "ray",
                "--workers", "1", "-q")
    assert r.returncode == 0, r.stderr.decode()
    table = pq.read_table(tmp_path / "out")
    labels, want = reference(hf_distilbert, texts)
    order = [int(k.rsplit("#", 1)[1]) for k in table.column("emotion_row_id").to_pylist()]
    got = dict(zip(order, table.column("emotion").to_pylist()))
    assert [got[i] for i in range(len(texts))] == [expected_label(p, labels, True) for p in want]


def test_ray_actor_labels_through_the_same_seam(hf_distilbert, monkeypatch, tmp_path):
    """What each Ray actor runs (no Ray needed): a multi-label model's labels, as the local engine's."""
    from emolabel.options import TagOptions
    from emolabel.plan import make_plan
    from emolabel.ray_engine import CUT_COLUMN, FOREIGN_COLUMN, SOURCE_COLUMN, LabelerActor, RayEngine

    for name in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS"):  # the actor sets them; put them back afterwards
        monkeypatch.setenv(name, "1")
    texts = [t for t in TEXTS if t]
    table = pa.table({"text": texts, SOURCE_COLUMN: pa.array(["in.parquet"] * len(texts)).dictionary_encode()})
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    plan = make_plan(str(tmp_path / "in.parquet"), str(tmp_path / "out"), TagOptions(model=str(hf_distilbert), device="cpu"),
                     RayEngine(workers=1))
    out = LabelerActor(plan)(table)
    labels, want = reference(hf_distilbert, texts)
    assert out.column_names[-3:] == ["emotion_fear", CUT_COLUMN, FOREIGN_COLUMN]
    assert out.column("emotion").to_pylist() == [expected_label(p, labels, True) for p in want]
