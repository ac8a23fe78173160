"""Fixtures: a tiny random-init BERT with a real WordPiece vocabulary, saved in emolabel's format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A safety net against a hung subprocess, never a speed check: a loaded 2-core machine may take
# minutes for what takes seconds here, and a test must not fail for that (speed lives in bench/).
PATIENCE = 1800.0

EMOTION_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # fake_model: random-init models of a shape

WORDS = (
    "i im feel feeling felt am a the and to of so very really not dont it is was this that my me you "
    "happy sad love angry afraid scared surprised amazed joy hate fear lonely glad excited nervous "
    "today day life time people good bad little bit like just know think want going still never "
    "about with for on in at be have been what when all more can would could"
).split()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + WORDS + letters + ["##" + c for c in letters]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


def make_tiny_model(folder: Path, **options) -> Path:
    """social-v1 unless told: the shipped model's scheme, whose emoji-only rows have no text."""
    from fake_model import random_model  # bench/fake_model.py: shared with the benchmarks

    options.setdefault("normalization", "social-v1")
    tok = tiny_tokenizer()
    random_model(folder, tok.to_str(), vocab_size=tok.get_vocab_size(), hidden=32, layers=2, heads=2,
                 intermediate=64, head_hidden=[16], max_length=64, **options)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny BERT saved as a Hugging Face folder, to fine-tune from (like a hub checkpoint)."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-base"
    tok = tiny_tokenizer()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                 cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    hf.save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    return folder


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = PATIENCE,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """emolabel in a real subprocess (exit codes, stdout/stderr separation, no tracebacks)."""
    e = dict(os.environ)
    e.pop("EMOLABEL_MODEL", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "emolabel", *args], input=input, capture_output=True,
                          env=e, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs, no dashboard) for a test module's jobs, shut down after it if started here."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()
