"""finetune(): fine-tune a BERT-family encoder and emolabel's head.

finetune() reads as its stages, top to bottom, and each stage is a function below it, in the same
order: read the tables; load the student (base encoder, tokenizer, new head); tokenize; the
teachers' targets (distillation, optional); fit (the epoch loop, with early stopping); calibrate
(the softmax temperature); save the model and its record (training.json).
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolabel import model as model_lib
from emolabel.config import OBJECTIVES, TrainConfig
from emolabel.data import GIVEN_LABELS_FIX, LABELS_FIX, Source, SourceData, as_sources, load_sources
from emolabel.errors import EmolabelError, InputError, OptionError
from emolabel.inference import resolve_device
from emolabel.invariant import cpu_has_bf16
from emolabel.safe_write import atomic_folder, check_file_target, check_folder_target
from emolabel.train_loop import Event, Fitted, calibrate, fit, train_amp_dtype
from emolabel.train_resume import Checkpoints, fingerprint
from emolabel.train_student import Student, load_student, resolve_base
from emolabel.train_teachers import ensemble_logits, teacher_targets

__all__ = ["finetune", "check_outputs", "ensemble_logits", "cpu_has_bf16"]  # bench/ imports the last two from here


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
