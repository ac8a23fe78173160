"""A BERT-family encoder plus emolabel's classification head; save() and load() a model folder.

A model folder holds `emolabel.json` (ModelConfig, with the encoder's own config inside),
`model.safetensors` (encoder and head weights together) and `tokenizer.json`: it loads with
no network and no other file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from emolabel.config import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, ModelConfig
from emolabel.errors import ModelError

_NOT_ARCHITECTURE = ("dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path")


def encoder_config_dict(config: object) -> dict:
    """The encoder's transformers config as plain JSON, without load-time settings such as dtype."""
    d = config.to_diff_dict() | {"model_type": config.model_type}  # type: ignore[attr-defined]
    return {k: v for k, v in d.items() if k not in _NOT_ARCHITECTURE}


def _build_encoder(encoder_config: dict, lean: bool = False) -> nn.Module:
    cfg = {k: v for k, v in encoder_config.items() if k not in _NOT_ARCHITECTURE}
    if lean:
        from emolabel import bert

        if bert.supports(cfg):
            return bert.LeanBert(cfg)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # only once transformers is needed
    from transformers import AutoConfig, AutoModel

    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ModelError("The model config names no encoder model_type.")
    config = AutoConfig.for_model(model_type, **cfg)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)  # our head does the pooling
    except TypeError:  # encoders without BERT's pooler (DistilBERT, ...)
        return AutoModel.from_config(config)


class Head(nn.Module):
    """Dense layers with dropout and GELU/ReLU, then a linear layer to the labels."""

    def __init__(self, in_dim: int, hidden: list[int], n_labels: int, dropout: float, activation: str):
        super().__init__()
        act = nn.GELU if activation == "gelu" else nn.ReLU
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(in_dim, h), act()]
            in_dim = h
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, n_labels)]
        self.net = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


class EmotionClassifier(nn.Module):
    """Encoder -> pooled vector -> Head -> logits (softmax is applied in labels.py)."""

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None, lean: bool = False):
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else _build_encoder(config.encoder, lean)
        hidden_size = self.encoder.config.hidden_size
        self.head = Head(hidden_size, config.head_hidden, len(config.labels), config.dropout, config.activation)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]  # (batch, hidden): the [CLS] vector
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (batch, hidden): masked mean
        logits = self.head(pooled)  # (batch, n_labels)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        return logits, loss


def save(model: EmotionClassifier, tokenizer_json: str, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write config, weights (in `dtype`) and tokenizer into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes a metadata map in its hash order, which changes from one
    # process to the next, so two keys made the same weights two different files now and then.
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder / WEIGHTS_NAME, 0o666 & ~mask)  # safetensors writes 0600: others could not read the model
    (folder / TOKENIZER_NAME).write_text(tokenizer_json)
    model.config.save(folder)


def load(folder: str | Path, device: str | torch.device = "cpu", lean: bool = True,
         tokenizer: Any = None) -> EmotionClassifier:
    """Rebuild a model from its folder; any missing or mismatched weight, or a tokenizer.json of
    another model, is an error. `lean`: plain BERT encoders run on emolabel.bert (same numbers, no
    transformers import). `tokenizer`: the folder's tokenizer where the caller has read it already
    (read_tokenizer), so that it is read once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"Model folder {folder} does not exist.")
    config = ModelConfig.load(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        raise ModelError(f"{folder} has no {WEIGHTS_NAME}: the model folder is incomplete.")
    if not (folder / TOKENIZER_NAME).exists():
        raise ModelError(f"{folder} has no {TOKENIZER_NAME}: the model folder is incomplete.")
    try:
        with torch.device("meta"):  # no random init of weights that are loaded next
            model = EmotionClassifier(config, lean=lean)
    except Exception as e:  # a hand-edited encoder config: transformers' own errors, of many types
        why = " ".join(str(e).split()).rstrip(".")
        why = why if len(why) <= 200 else why[:200] + "..."  # an unknown model_type lists every known one
        raise ModelError(f"{folder / CONFIG_NAME}: the encoder cannot be built from its settings ({why}). "
                         "Correct them in that file.") from None
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ModelError(f"{weights} cannot be read ({e}).") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"wrong shape for {len(wrong)} (e.g. {k}: {tuple(state[k].shape)} "
                         f"in the file, {tuple(expected[k].shape)} in {CONFIG_NAME})")
        raise ModelError(f"{weights} does not match {CONFIG_NAME}: weights " + "; ".join(parts) + ".")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ModelError(f"{weights}: weight {bad} holds NaN or infinite values (an fp16 overflow when it was "
                         "saved?); every label would be null. Retrain, or save with `save_dtype` fp32.")
    path = folder / TOKENIZER_NAME
    check_tokenizer(tokenizer or read_tokenizer(path), path, config, getattr(model.encoder.config, "vocab_size", None))
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_buffers(model)
    model.eval()
    return model.to(device)


# Real models pad their embedding table by at most a few hundred rows past the tokenizer
# (DeBERTa-v3 128,100 rows for 128,001 tokens, ModernBERT 50,368 for 50,280): a tokenizer that
# fills less than this share of the table belongs to another model.
MIN_VOCAB_SHARE = 0.9


def read_tokenizer(path: Path) -> Any:  # -> tokenizers.Tokenizer
    """A tokenizer.json as the Rust tokenizer; one that cannot be read is a ModelError."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ModelError(f"{path} cannot be loaded ({e}).") from None


def check_tokenizer(tok: Any, path: Path, config: ModelConfig, rows: int | None) -> None:
    """Refuse a tokenizer.json (`tok`, read from `path`) of another model: its ids would index past
    the embedding table (an IndexError in torch) or point at the wrong rows (every text gets the
    same label)."""
    fix = "Copy the tokenizer.json of the model these weights were trained from."
    vocab = tok.get_vocab(with_added_tokens=True)  # token -> id
    if rows is not None:
        top = max(vocab.values(), default=-1)
        if top >= rows:
            raise ModelError(f"{path} does not belong to these weights: its ids go up to {top:,}, past the "
                             f"{rows:,} rows of the embedding table (vocab_size in {CONFIG_NAME}). {fix}")
        if len(vocab) < MIN_VOCAB_SHARE * rows:
            raise ModelError(f"{path} does not belong to these weights: it has {len(vocab):,} tokens for the "
                             f"{rows:,} rows of the embedding table (vocab_size in {CONFIG_NAME}). {fix}")
    padding = tok.padding  # the pad token tokenizer.json names, else the usual pad spellings
    pad = (padding["pad_token"], padding["pad_id"]) if padding else next(
        ((t, vocab[t]) for t in ("[PAD]", "<pad>") if t in vocab), None)
    if pad is not None and pad[1] != config.pad_token_id:
        raise ModelError(f"{path} does not belong to these weights: its pad token {pad[0]} is id {pad[1]}, "
                         f"pad_token_id in {CONFIG_NAME} is {config.pad_token_id}. {fix}")


def _materialize_buffers(model: nn.Module) -> None:
    """Non-persistent buffers are not in the weights file, so they are still on the meta device:
    BERT's position_ids and token_type_ids are rebuilt here (the fast path); any other (rotary
    inv_freq in ModernBERT-style encoders, say) is taken from a freshly built copy of the encoder,
    which computes them from its config as it would when training."""
    meta = []
    for module_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name == "position_ids":
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
            elif name == "token_type_ids":
                module.register_buffer(name, torch.zeros(buf.shape, dtype=torch.long), persistent=False)
            else:
                meta.append((module_name, module, name))
    if not meta:
        return
    assert isinstance(model, EmotionClassifier)
    with torch.device("cpu"):
        fresh = dict(_build_encoder(model.config.encoder).named_buffers())
    for module_name, module, name in meta:
        key = f"{module_name}.{name}".removeprefix("encoder.")
        if key not in fresh or fresh[key].shape != module.get_buffer(name).shape:
            raise ModelError(f"Cannot rebuild buffer {name} of {type(module).__name__}: the encoder built from "
                             f"{CONFIG_NAME} has no such buffer.")
        module.register_buffer(name, fresh[key], persistent=False)
