"""A random-init BERT + head of a given shape, saved as a model folder: for benchmarks of a shape
(bench/throughput.py --shape, bench/model_ceiling.py) and the tests' tiny model (tests/conftest.py).
Not part of the package: nobody labels text with random weights."""

from __future__ import annotations

from pathlib import Path

import torch

from emolabel.config import ModelConfig
from emolabel.model import EmotionClassifier, encoder_config_dict, save


def random_model(
    folder: Path,
    tokenizer_json: str,
    *,
    vocab_size: int,
    hidden: int = 384,
    layers: int = 6,
    heads: int = 12,
    intermediate: int | None = None,
    labels: list[str] | None = None,
    seed: int = 0,
    **options: object,
) -> EmotionClassifier:
    """Save a random-init model of this shape (seeded) to `folder`, with `tokenizer_json`."""
    from transformers import BertConfig

    torch.manual_seed(seed)
    enc = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                     max_position_embeddings=512)
    config = ModelConfig(encoder=encoder_config_dict(enc), base="random-init",
                         **({"labels": labels} if labels else {}), **options)  # type: ignore[arg-type]
    model = EmotionClassifier(config)
    save(model, tokenizer_json, folder)
    return model
