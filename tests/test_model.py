"""The model folder format: save/load round trip, and loud failures for broken folders."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import load_file, save_file

from emolabel import model as model_lib
from emolabel.config import ModelConfig
from emolabel.errors import ModelError
from emolabel.inference import Labeler, load_tokenizer


def test_save_load_round_trip_gives_identical_logits(tmp_path, tiny_model):
    m = model_lib.load(tiny_model)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 9, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    before, _ = m(ids, mask)
    model_lib.save(m, (tiny_model / "tokenizer.json").read_text(), tmp_path / "copy")
    after, _ = model_lib.load(tmp_path / "copy")(ids, mask)
    assert torch.equal(before, after)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["emolabel.json", "model.safetensors",
                                                                      "tokenizer.json"]


@pytest.mark.parametrize("pooling,activation", [("cls", "gelu"), ("mean", "relu")])
def test_head_options_round_trip(tmp_path, pooling, activation):
    folder = make_tiny_model(tmp_path / "m", pooling=pooling, activation=activation)
    cfg = ModelConfig.load(folder)
    assert (cfg.pooling, cfg.activation) == (pooling, activation)
    probs = Labeler(folder, device="cpu").predict_proba(["i feel happy", "so sad today"])
    assert probs.shape == (2, 6)


def test_padding_does_not_change_mean_pooling(tmp_path):
    m = model_lib.load(make_tiny_model(tmp_path / "m", pooling="mean"))
    short, _ = m(torch.tensor([[2, 5, 6, 3]]), torch.tensor([[1, 1, 1, 1]]))
    padded, _ = m(torch.tensor([[2, 5, 6, 3, 0, 0]]), torch.tensor([[1, 1, 1, 1, 0, 0]]))
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)


def test_missing_weights_file_is_an_error(tmp_path, tiny_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="has no model.safetensors"):
        model_lib.load(folder)


def test_missing_head_weight_is_an_error_not_a_random_head(tmp_path, tiny_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state[next(k for k in state if k.startswith("head."))]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match=r"does not match emolabel.json: weights missing 1 \(e.g. head\."):
        model_lib.load(folder)


def test_weights_of_another_shape_are_an_error(tmp_path, tiny_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "emolabel.json").read_text())
    cfg["head_hidden"] = [32]
    (folder / "emolabel.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="wrong shape"):
        model_lib.load(folder)


def test_custom_labels_are_data(tmp_path):
    folder = make_tiny_model(tmp_path / "m", labels=["calm", "angry", "meh"])
    lb = Labeler(folder, device="cpu")
    assert lb.labels == ["calm", "angry", "meh"]
    assert lb.predict_proba(["i feel fine"]).shape == (1, 3)
    assert lb.predict(["i feel fine"])[0] in {"calm", "angry", "meh"}


def test_fp16_storage_loads_as_fp32(tmp_path, tiny_model):
    m = model_lib.load(tiny_model)
    model_lib.save(m, (tiny_model / "tokenizer.json").read_text(), tmp_path / "h", dtype=torch.float16)
    assert next(iter(load_file(str(tmp_path / "h" / "model.safetensors")).values())).dtype == torch.float16
    m2 = model_lib.load(tmp_path / "h")
    assert all(p.dtype == torch.float32 for p in m2.parameters())


def test_tokenizer_maps_real_words_to_real_ids(tiny_model):
    """The transformers 5 trap: a tokenizer built wrongly maps every word to [UNK]."""
    tok = load_tokenizer(tiny_model, 32)
    enc = tok.encode("I feel happy today")
    assert enc.tokens == ["[CLS]", "i", "feel", "happy", "today", "[SEP]"]
    assert tok.token_to_id("[UNK]") not in enc.ids


def test_broken_config_json(tmp_path, tiny_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    (folder / "emolabel.json").write_text("{not json")
    with pytest.raises(ModelError, match="is not valid JSON"):
        model_lib.load(folder)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_lean_bert_gives_the_same_logits_as_transformers(tmp_path, pooling):
    folder = make_tiny_model(tmp_path / "m", pooling=pooling)
    lean = model_lib.load(folder, lean=True)
    hf = model_lib.load(folder, lean=False)
    assert type(lean.encoder).__name__ == "LeanBert" and type(hf.encoder).__name__ == "BertModel"
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (5, 17))
    lengths = torch.tensor([17, 3, 9, 1, 12])
    mask = (torch.arange(17)[None] < lengths[:, None]).long()
    ids = ids * mask
    with torch.no_grad():
        torch.testing.assert_close(lean(ids, mask)[0], hf(ids, mask)[0], atol=1e-5, rtol=1e-4)


def test_lean_bert_int8_path_runs(tiny_model):
    lb = Labeler(tiny_model, device="cpu", precision="int8")
    assert lb.predict_proba(["i feel happy", "sad"]).shape == (2, 6)


def _copy(tiny_model, tmp_path, **change):
    """A copy of the tiny model folder, with `change` written into its emolabel.json."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "emolabel.json").read_text()) | change
    (folder / "emolabel.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("value", ["abc", 1.5, True, -3, "128", None])
def test_a_max_length_that_is_not_a_whole_number_is_refused_on_load(tmp_path, tiny_model, value):
    """It used to load, then end in a TypeError in inference ('<' between int and str)."""
    folder = _copy(tiny_model, tmp_path, max_length=value)
    with pytest.raises(ModelError) as e:
        model_lib.load(folder)
    assert str(e.value) == (f"{folder / 'emolabel.json'}: max_length must be a whole number of tokens, at least 2 "
                            f"([CLS] and [SEP]), such as 128, not {value!r}. Correct it in that file.")


@pytest.mark.parametrize("change,field", [
    ({"head_hidden": [16.0]}, "head_hidden"), ({"head_hidden": 16}, "head_hidden"),
    ({"dropout": 1}, "dropout"), ({"dropout": "0.1"}, "dropout"), ({"dropout": True}, "dropout"),
    ({"pad_token_id": "0"}, "pad_token_id"), ({"pad_token_id": 999}, "pad_token_id"),
    ({"encoder": []}, "encoder"), ({"base": 3}, "base"), ({"format_version": "1"}, "format_version"),
    ({"temperature": "1"}, "temperature must"), ({"pooling": 3}, "pooling"),
])
def test_every_config_field_is_type_checked_on_load(tmp_path, tiny_model, change, field):
    folder = _copy(tiny_model, tmp_path, **change)
    path = re.escape(str(folder / "emolabel.json"))
    with pytest.raises(ModelError, match=rf"^{path}: {field}.*Correct it in that file\.$"):
        model_lib.load(folder)


def test_an_encoder_config_that_cannot_be_built_is_a_model_error(tmp_path, tiny_model):
    encoder = json.loads((tiny_model / "emolabel.json").read_text())["encoder"] | {"hidden_size": "abc"}
    folder = _copy(tiny_model, tmp_path, encoder=encoder)
    for lean in (True, False):
        with pytest.raises(ModelError, match="emolabel.json: the encoder cannot be built"):
            model_lib.load(folder, lean=lean)


def test_heads_that_do_not_divide_the_width_are_a_model_error(tmp_path, tiny_model):
    """The lean encoder took such a config and failed in its first batch (a view of the wrong size)."""
    encoder = json.loads((tiny_model / "emolabel.json").read_text())["encoder"]
    folder = _copy(tiny_model, tmp_path, encoder=encoder | {"num_attention_heads": encoder["hidden_size"] - 1})
    with pytest.raises(ModelError, match="emolabel.json: the encoder cannot be built"):
        model_lib.load(folder, lean=True)


def _word_level(words: dict[str, int]) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def _with_tokenizer(tiny_model, tmp_path, tokenizer_json: str):
    folder = _copy(tiny_model, tmp_path)
    (folder / "tokenizer.json").write_text(tokenizer_json)
    return folder


EIGHT_WORDS = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "feel", "happy", "sad"])}


def test_a_tokenizer_of_another_model_is_refused_on_load(tmp_path, tiny_model):
    """8 words for a 147-row embedding table: it used to load and label every row alike."""
    folder = _with_tokenizer(tiny_model, tmp_path, _word_level(EIGHT_WORDS))
    rows = json.loads((folder / "emolabel.json").read_text())["encoder"]["vocab_size"]
    with pytest.raises(ModelError) as e:
        model_lib.load(folder)
    assert str(e.value) == (
        f"{folder / 'tokenizer.json'} does not belong to these weights: it has 8 tokens for the {rows} rows of the "
        "embedding table (vocab_size in emolabel.json). Copy the tokenizer.json of the model these weights "
        "were trained from.")


def test_a_tokenizer_with_ids_past_the_embedding_table_is_refused_on_load(tmp_path, tiny_model):
    """It used to end in an IndexError from torch.embedding at the first batch."""
    vocab = json.loads((tiny_model / "tokenizer.json").read_text())["model"]["vocab"]
    folder = _with_tokenizer(tiny_model, tmp_path, _word_level(vocab | {"huge": 40000}))
    with pytest.raises(ModelError, match=r"tokenizer.json does not belong to these weights: its ids go up to "
                                         r"40,000, past the \d+ rows of the embedding table"):
        model_lib.load(folder)


def test_a_tokenizer_with_another_pad_id_is_refused_on_load(tmp_path, tiny_model):
    vocab = json.loads((tiny_model / "tokenizer.json").read_text())["model"]["vocab"]
    swapped = vocab | {"[PAD]": vocab["[UNK]"], "[UNK]": vocab["[PAD]"]}  # same size, [PAD] is id 1
    folder = _with_tokenizer(tiny_model, tmp_path, _word_level(swapped))
    with pytest.raises(ModelError, match=r"its pad token \[PAD\] is id 1, pad_token_id in emolabel.json is 0"):
        model_lib.load(folder)


def test_a_tokenizer_json_that_is_not_json_stays_a_model_error(tmp_path, tiny_model):
    folder = _with_tokenizer(tiny_model, tmp_path, "{not json")
    with pytest.raises(ModelError, match="tokenizer.json cannot be loaded"):
        model_lib.load(folder)


def test_tag_with_a_tokenizer_of_another_model_exits_1_without_a_traceback(tmp_path, tiny_model):
    from conftest import run_cli

    folder = _with_tokenizer(tiny_model, tmp_path, _word_level(EIGHT_WORDS))
    r = run_cli("tag", "-", "-o", "-", "--model", str(folder), input=b"text\ni feel happy\n")
    assert r.returncode == 1, r.stderr
    assert b"Traceback" not in r.stderr
    assert b"tokenizer.json does not belong to these weights" in r.stderr and r.stdout == b""
