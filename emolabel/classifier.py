"""The seam between a model folder and the Labeler: which kind of folder it is, and what the
Labeler runs (labels, a forward from token ids to logits, the tokenizer and its settings).

Two kinds fit behind it, one module each, as text-embeddings-inference keeps one file per
architecture behind one dispatch:

* emolabel's own folders (`emolabel.json`; model.py): encoder + head, its text normalization and
  its softmax temperature;
* a Hugging Face sequence-classification folder (`config.json`; hf_classifier.py), run as it is:
  labels from `id2label`, its own tokenizer only, softmax or (multi-label) a sigmoid per label.

spec() reads what the column checks need without loading weights (so a run fails fast); load()
gives the Labeler a Settings and a torch module whose forward(input_ids, attention_mask) returns
(logits (batch, labels), None), as EmotionClassifier's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolabel.config import CONFIG_NAME, TOKENIZER_NAME, ModelConfig


@dataclass(frozen=True)
class Spec:
    """What a model folder says of its output, read without its weights."""

    labels: list[str]  # id -> name: the probability columns, in this order
    multi_label: bool = False  # a sigmoid per label and every label over the threshold, else softmax's top one


@dataclass
class Settings:
    """What the Labeler needs besides the module (the fields it read from ModelConfig before)."""

    labels: list[str]
    multi_label: bool
    tokenizer: Any  # tokenizers.Tokenizer: the Rust tokenizer (TextEncoder sets truncation, no padding)
    normalization: str  # normalize.SCHEMES; "none" for models run as they are
    pad_token_id: int
    max_length: int  # tokens a text is cut to unless `max_length` says otherwise
    max_positions: int  # the most tokens the model can take: `max_length` is capped to it
    temperature: float = 1.0  # of the softmax (emolabel's calibration); 1 for other models


def is_emolabel(folder: Path) -> bool:
    """emolabel's own folder (emolabel.json); else a transformers folder if it has config.json. A
    folder with neither is taken as emolabel's, whose loader says what is missing."""
    return (folder / CONFIG_NAME).exists() or not (folder / "config.json").exists()


def spec(folder: str | Path) -> Spec:
    """The labels and scoring of the model in `folder`; a folder that cannot be run is a ModelError."""
    folder = Path(folder)
    if is_emolabel(folder):
        return Spec(list(ModelConfig.load(folder).labels))
    from emolabel import hf_classifier

    return hf_classifier.read_spec(folder)


def load(folder: str | Path) -> tuple[Settings, Any]:
    """The model in `folder` on the CPU in fp32, checked: its Settings and its module."""
    folder = Path(folder)
    if not is_emolabel(folder):
        from emolabel import hf_classifier

        return hf_classifier.load(folder)
    from emolabel import model as model_lib

    path = folder / TOKENIZER_NAME  # read once, checked by load(), then used; a missing
    tokenizer = model_lib.read_tokenizer(path) if path.is_file() else None  # one: load() says what is missing
    model = model_lib.load(folder, tokenizer=tokenizer)
    c = model.config
    settings = Settings(labels=list(c.labels), multi_label=False, tokenizer=tokenizer or model_lib.read_tokenizer(path),
                        normalization=c.normalization, pad_token_id=c.pad_token_id, max_length=c.max_length,
                        max_positions=getattr(model.encoder.config, "max_position_embeddings", 512),
                        temperature=c.temperature)
    return settings, model
