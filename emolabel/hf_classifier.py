"""A Hugging Face sequence-classification folder run as it is: config.json, model.safetensors, a tokenizer.

Recognised by a `config.json` whose `architectures` names a `...ForSequenceClassification` class
and whose `id2label` names the labels (their id order is the probability columns' order). The
weights load through transformers' AutoModelForSequenceClassification, from safetensors only, with
no remote code; the tokenizer through AutoTokenizer (a fast tokenizer: tokenizer.json, or one
transformers builds from vocab.txt, vocab.json + merges.txt, ...). No emolabel normalization: the
model sees what its own tokenizer makes of the text. `problem_type` multi_label_classification
gives a sigmoid per label (labels.probabilities).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emolabel.classifier import Settings, Spec
from emolabel.errors import ModelError
from emolabel.labels import SEPARATOR

CONFIG = "config.json"
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
MULTI_LABEL = "multi_label_classification"
DEFAULT_MAX_LENGTH = 512  # tokens, when the model allows more: max_tokens' CPU default (4096) stays above it
_CONVERT = ('python -c "import torch; from safetensors.torch import save_file; '
            "save_file({{k: v.clone().contiguous() for k, v in torch.load('{bin}', weights_only=True).items()}}, "
            "'{out}', metadata={{'format': 'pt'}})\"")


def read_spec(folder: Path) -> Spec:
    """Labels (id2label, in id order) and multi-label-ness from config.json; the weights file is
    checked here too, so a run refuses the folder before any work."""
    path = folder / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} cannot be read as JSON ({e}).") from None
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if not isinstance(archs, list) or not any(isinstance(a, str) and a.endswith("ForSequenceClassification")
                                              for a in archs):
        raise ModelError(f"{path} describes {', '.join(map(str, archs or [])) or 'no architecture'}, not a sequence "
                         "classifier (`architectures` ending in ForSequenceClassification): emolabel runs those, or "
                         "its own model folders. To train a classifier on this encoder: emolabel finetune --base "
                         f"{folder}.")
    labels = _labels(cfg, path)
    multi = cfg.get("problem_type") == MULTI_LABEL
    if multi and any(SEPARATOR in name for name in labels):
        raise ModelError(f"{path}: label {next(n for n in labels if SEPARATOR in n)!r} holds {SEPARATOR!r}, which "
                         "separates the labels of a multi-label row. Rename it in id2label.")
    _check_weights(folder)
    return Spec(labels, multi)


def _labels(cfg: dict, path: Path) -> list[str]:
    """id2label as a list, ids 0..n-1 in order; a regression head or odd names refused."""
    if cfg.get("problem_type") == "regression":
        raise ModelError(f"{path}: problem_type regression gives a number, not labels; emolabel labels text.")
    raw = cfg.get("id2label")
    try:
        pairs = sorted((int(k), v) for k, v in raw.items())  # JSON keys are strings: "0", "1", ...
    except (AttributeError, TypeError, ValueError):
        raise ModelError(f"{path} has no id2label mapping label ids to names ({raw!r}).") from None
    labels = [v for _, v in pairs]
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ModelError(f"{path}: id2label's ids must be 0..{len(pairs) - 1}, not {[i for i, _ in pairs]}.")
    if not all(isinstance(v, str) and v for v in labels) or len(set(labels)) != len(labels) or len(labels) < 2:
        raise ModelError(f"{path}: id2label must name at least two distinct labels, not {labels}.")
    if "score" in labels:
        raise ModelError(f"{path}: a label cannot be named 'score' (tag adds a column of that name); rename it "
                         "in id2label.")
    return labels


def _check_weights(folder: Path) -> None:
    """safetensors only: a pickle runs code when it is loaded."""
    if any((folder / name).exists() for name in SAFETENSORS):
        return
    pickle = next((name for name in PICKLES if (folder / name).exists()), None)
    if pickle is None:
        raise ModelError(f"{folder} has no {SAFETENSORS[0]}: the model folder is incomplete.")
    fix = (_CONVERT.format(bin=folder / pickle, out=folder / SAFETENSORS[0]) if pickle == PICKLES[0] else
           "convert every shard with safetensors.torch.save_file, or load and save_pretrained() the model")
    raise ModelError(f"{folder} holds its weights as {pickle}, a Python pickle: loading one runs any code it "
                     f"holds, so emolabel reads safetensors only. Convert it once, from a source you trust: {fix}")


def _wrap(model: Any) -> Any:
    """The transformers model with emolabel's forward: (input_ids, attention_mask) -> (logits, None)."""
    from torch import nn

    class TransformersClassifier(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, None]:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits, None  # (batch, labels)

    return TransformersClassifier(model)


def load(folder: Path) -> tuple[Settings, Any]:
    """The model and its tokenizer, checked: every weight in the file, finite; token ids inside the
    embedding table; the tokenizer adds its special tokens itself (so the Rust tokenizer alone is it)."""
    spec = read_spec(folder)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # transformers' notes about the checkpoint: stderr is for emolabel's words
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32,
            output_loading_info=True)
    except Exception as e:  # transformers' own errors, of many types (unknown model_type, custom code, ...)
        why = " ".join(str(e).split())
        raise ModelError(f"{folder} cannot be loaded by transformers ({why[:300]}).") from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        what = f"missing {len(missing)} (e.g. {missing[0]})" if missing else f"wrong shape for {mismatched[0]}"
        raise ModelError(f"{folder}: the weights do not match {CONFIG}: {what}. A missing weight would be random.")
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ModelError(f"{folder}: weight {bad} holds NaN or infinite values; every label would be null.")
    model.eval()
    tokenizer, hf_tok = _tokenizer(folder)
    cfg = model.config
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else (cfg.pad_token_id or 0)
    _check_tokenizer(folder, tokenizer, hf_tok, cfg, pad)
    limit = cfg.max_position_embeddings if isinstance(getattr(cfg, "max_position_embeddings", None), int) else 512
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if isinstance(padding_idx, int):  # RoBERTa-style positions start after the pad id: 514 rows, 512 tokens
        limit -= padding_idx + 1
    if 1 < getattr(hf_tok, "model_max_length", 0) < limit:
        limit = hf_tok.model_max_length
    settings = Settings(labels=spec.labels, multi_label=spec.multi_label, tokenizer=tokenizer, normalization="none",
                        pad_token_id=pad, max_length=min(limit, DEFAULT_MAX_LENGTH), max_positions=limit)
    return settings, _wrap(model)


def _tokenizer(folder: Path) -> tuple[Any, Any]:
    """The folder's tokenizer through AutoTokenizer (fast): its Rust tokenizer, and transformers' own."""
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(folder, use_fast=True, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, ... from transformers
        why = " ".join(str(e).split())
        raise ModelError(f"{folder}: transformers cannot load its tokenizer ({why[:300]}). Copy the tokenizer files "
                         "(tokenizer.json, or vocab.txt, or vocab.json and merges.txt, ...) of the model these "
                         "weights came from into the folder.") from None
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(f"{folder}: its tokenizer ({type(hf_tok).__name__}) has no fast (Rust) form, which "
                         "emolabel needs; save one as tokenizer.json with transformers.")
    return backend, hf_tok


def _check_tokenizer(folder: Path, tokenizer: Any, hf_tok: Any, cfg: Any, pad: int) -> None:
    """Refuse a tokenizer whose ids leave the embedding table, whose pad id is not the model's, or
    that adds special tokens outside its Rust tokenizer (emolabel tokenizes with that alone)."""
    rows = getattr(cfg, "vocab_size", None)
    top = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if isinstance(rows, int) and top >= rows:
        raise ModelError(f"{folder}: the tokenizer's ids go up to {top:,}, past the {rows:,} rows of the embedding "
                         f"table (vocab_size in {CONFIG}): it belongs to another model.")
    if cfg.pad_token_id is not None and hf_tok.pad_token_id is not None and cfg.pad_token_id != pad:
        raise ModelError(f"{folder}: the tokenizer pads with id {pad}, {CONFIG} says pad_token_id "
                         f"{cfg.pad_token_id}: the tokenizer belongs to another model.")
    probe = "Hello world, this is a test."
    want = hf_tok(probe)["input_ids"]  # first: it also turns off padding the tokenizer.json may hold
    if tokenizer.encode(probe).ids != want:
        raise ModelError(f"{folder}: its tokenizer ({type(hf_tok).__name__}) adds tokens in Python that its fast "
                         "tokenizer does not; emolabel cannot run it as it is.")
