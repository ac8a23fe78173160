"""finetune's teachers (distillation): their ensemble's softened targets over the training texts,
scored now from emolabel model folders or read from a teacher-logits file saved earlier (which
names the texts it was made for by their SHA-256, and refuses others)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from emolabel.errors import InputError, ModelError
from emolabel.safe_write import atomic_path

if TYPE_CHECKING:
    from emolabel.train_loop import Event


def teacher_targets(teachers: list[str] | None, teacher_logits: str | None, save_teacher_logits: str | None,
                    texts: list[str], labels: list[str], device: str, precision: str, temperature: float,
                    emit: Event) -> tuple[torch.Tensor | None, list[str]]:
    """(len(texts), labels) softened teacher probabilities, None without teachers; and the teachers' names."""
    if teacher_logits:
        logits, names = load_logits(teacher_logits, texts, labels)
    elif teachers:
        logits, names = ensemble_logits(teachers, texts, labels, device, precision), list(teachers)
        if save_teacher_logits:
            save_logits(save_teacher_logits, logits, texts, labels, teachers)
            emit({"event": "teacher_logits", "path": str(save_teacher_logits), "rows": len(texts)})
    else:
        return None, []
    return torch.softmax(torch.from_numpy(logits) / temperature, dim=-1), names


def ensemble_logits(models: list[str], texts: list[str], labels: list[str], device: str,
                    precision: str = "fp32") -> np.ndarray:
    """(len(texts), labels) mean logits of these model folders, each scored in `precision` (fp32, or
    bf16 where training autocasts to bf16: 2x faster for an MPNet teacher on the CPU; never int8)."""
    from emolabel.inference import Labeler

    total = np.zeros((len(texts), len(labels)), np.float32)
    for folder in models:
        model = Labeler(folder, device=device, precision=precision)
        if model.labels != labels:
            raise ModelError(f"Teacher {folder} has labels {model.labels}, the data has {labels}.")
        prep = model.prepare(pa.array(texts, pa.string()))
        total[prep.rows] += model.logits(prep)
        del model
    return total / len(models)


def texts_sha256(texts: list[str]) -> str:
    """Identity of an ordered list of texts (saved teacher logits are only valid for the same list)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def save_logits(path: str | Path, logits: np.ndarray, texts: list[str], labels: list[str], teachers: list[str]) -> None:
    """Teacher logits over the training texts, to distil more students later without the teachers."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({"logits": np.ascontiguousarray(logits, np.float32)}, str(tmp),
                  metadata={"emolabel": "teacher-logits", "texts_sha256": texts_sha256(texts),
                            "labels": json.dumps(labels), "teachers": json.dumps(teachers), "rows": str(len(texts))})


def load_logits(path: str | Path, texts: list[str], labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Saved teacher logits, checked against the training texts (same texts, same order) and labels."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            logits = f.get_tensor("logits")
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{path} is not a teacher-logits file ({e}).") from None
    if meta.get("emolabel") != "teacher-logits":
        raise InputError(f"{path} is not a teacher-logits file written with `save_teacher_logits`.")
    if json.loads(meta.get("labels", "[]")) != labels:
        raise InputError(f"{path} has labels {meta.get('labels')}; the training data has {labels}.")
    if meta.get("texts_sha256") != texts_sha256(texts) or logits.shape != (len(texts), len(labels)):
        raise InputError(f"{path} was made for other training texts ({meta.get('rows')} rows; these are "
                         f"{len(texts)}): give the same training tables, in the same order, as when it was saved.")
    return logits.astype(np.float32), json.loads(meta.get("teachers", "[]"))
