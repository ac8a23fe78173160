"""finetune(): fine-tune a BERT-family encoder and emolabel's head.

finetune() reads as its stages, top to bottom, each a named step: check the options and outputs;
read the tables; load the student (base encoder, tokenizer, new head: train_student); tokenize;
the teachers' targets (distillation, optional: train_teachers); fit (the epoch loop, with early
stopping: train_loop); calibrate (the softmax temperature); save the model and its record
(training.json); check whether bf16 may run it on the CPU (precision_check, issue 21).
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
from emolabel.config import FORMATS, OBJECTIVES, SAVE_DTYPES, ModelConfig, TrainConfig
from emolabel.data import GIVEN_LABELS_FIX, LABELS_FIX, Source, SourceData, as_sources, load_sources
from emolabel.errors import EmolabelError, InputError, ModelError, OptionError
from emolabel.inference import resolve_device
from emolabel.invariant import cpu_has_bf16
from emolabel.safe_write import atomic_folder, check_file_target, check_folder_target
from emolabel.train_loop import Event, Fitted, calibrate, check_config, fit, train_amp_dtype
from emolabel.train_resume import Checkpoints, fingerprint
from emolabel.train_student import Student, load_student, resolve_base
from emolabel.train_teachers import teacher_targets

__all__ = ["finetune", "check_outputs"]


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
    interrupted, calibrate, done, bf16_check): the CLI logs and shows them. Ctrl-C (KeyboardInterrupt,
    or signals.Interrupted under signals_raise) once an epoch has finished ends the run early and
    keeps the best epoch so far, as early stopping would. A bad option value is an OptionError
    before any table is read. The whole training state is checkpointed beside `out_dir` every
    `checkpoint_minutes` (0: every step; None: never) and after every epoch; `resume=True` goes on
    from the last checkpoint of the same run (train_resume.py says what must not change). The model
    folder is built beside `out_dir` and renamed into place (safe_write): an existing, non-empty
    `out_dir` is replaced only with `overwrite` (or, with `resume`, when it is the interrupted run's
    own), never when it holds an input. Then the bf16 check (check_bf16) is recorded in it."""
    cfg, emit = train_config or TrainConfig(), on_event or (lambda event: None)
    out_dir, t_start = Path(out_dir), time.time()
    check_options(cfg, model_options, labels, objective=objective, device=device, save_dtype=save_dtype,
                  input_format=input_format, teachers=teachers, teacher_logits=teacher_logits,
                  save_teacher_logits=save_teacher_logits, checkpoint_minutes=checkpoint_minutes)
    check_outputs(as_sources(train) + as_sources(validation), out_dir, base=base, teachers=teachers,
                  teacher_logits=teacher_logits, save_teacher_logits=save_teacher_logits, overwrite=overwrite,
                  resume=resume)
    # 1. Data: read and check every table before any model loads.
    train_src, valid_src, labels = read_tables(train, validation, input_format, text_column, label_column, labels)
    # The checkpoint of an interrupted run: refused here, before any model loads, if it was another run's.
    base = resolve_base(base)
    fp = fingerprint(train_src, valid_src, base=base, labels=labels, model_options=dict(model_options or {}),
                     train_config=asdict(cfg), objective=objective, teachers=teachers, teacher_logits=teacher_logits)
    checkpoints = open_checkpoints(out_dir, fp, checkpoint_minutes, resume, emit)
    # 2. The student: base encoder, tokenizer and a new head, seeded. 3. Tokenize as tag does.
    student = seeded_student(base, labels, model_options, cfg.seed)
    train_texts = [t for s in train_src for t in s.data.texts]
    train_tokens = student.tokenize(train_texts)
    valid_tokens = [student.tokenize(s.data.texts) for s in valid_src]
    # 4. Distillation targets: the teachers' ensemble logits (scored now, or read from a file).
    dev = resolve_device(device)
    soft, teacher_names = distillation_targets(checkpoints, teachers, teacher_logits, save_teacher_logits,
                                               train_texts, labels, device, dev, cfg, emit)
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
    save(student, out_dir, info, save_dtype, checkpoints, emit)
    # 8. May `precision` auto run it in bf16 on the CPU? Measured on the validation tables read in 1.
    check_bf16(out_dir, valid_src, fitted.stopped, emit)
    return info


def check_options(cfg: TrainConfig, model_options: dict[str, Any] | None, labels: list[str] | None, *,
                  objective: str, device: str, save_dtype: str, input_format: str | None,
                  teachers: list[str] | None, teacher_logits: str | None, save_teacher_logits: str | None,
                  checkpoint_minutes: float | None) -> None:
    """Refuse a bad option value before any table is read or model loaded: an OptionError (the CLI's
    usage error, exit 2) naming the option in the library's words."""
    if objective not in OBJECTIVES:
        raise OptionError(f"Unknown `objective` {objective!r}: use {', '.join(OBJECTIVES)}.")
    if save_dtype not in SAVE_DTYPES:
        raise OptionError(f"Unknown `save_dtype` {save_dtype!r}: use {', '.join(SAVE_DTYPES)}.")
    if input_format is not None and input_format not in FORMATS:
        raise OptionError(f"Unknown `input_format` {input_format!r}: use {', '.join(FORMATS)}.")
    if teachers and teacher_logits:
        raise OptionError("Give `teachers` or `teacher_logits`, not both.")
    if save_teacher_logits and not teachers:
        raise OptionError("`save_teacher_logits` needs `teachers`: it saves their logits.")
    if checkpoint_minutes is not None and not (isinstance(checkpoint_minutes, int | float) and checkpoint_minutes >= 0):
        raise OptionError(f"`checkpoint_minutes` must be 0 or more (or None: no checkpoints), not {checkpoint_minutes!r}.")
    resolve_device(device)  # an unknown device, or a GPU that is not here
    check_config(cfg)
    options = dict(model_options or {})
    unknown = sorted(set(options) - MODEL_OPTIONS)
    if unknown:
        raise OptionError(f"Unknown model option `{unknown[0]}`: use {', '.join(sorted(MODEL_OPTIONS))}.")
    try:
        ModelConfig(labels=list(labels) if labels is not None else ["a", "b"], **options)
    except ModelError as e:  # its messages start with the field they refuse
        text = str(e).rstrip(".")
        name, _, why = text.partition(" ")
        raise OptionError(f"`{name}` {why}." if name in MODEL_OPTIONS | {"labels"} else f"{text}.") from None


# What finetune's `model_options` may set: the head and text settings of ModelConfig, not what training fills in
MODEL_OPTIONS = {"pooling", "head_hidden", "dropout", "activation", "max_length", "normalization"}


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


# -- 1. the tables ---------------------------------------------------------------------------------


def read_tables(train: str | Source | list[str | Source], validation: str | Source | list[str | Source],
                input_format: str | None, text_column: str, label_column: str,
                labels: list[str] | None) -> tuple[list[SourceData], list[SourceData], list[str]]:
    """Every training and validation table, read and checked before any model loads, and the label
    set (`labels`, else read from the first table); a training set of one label is refused."""
    fix = GIVEN_LABELS_FIX if labels else LABELS_FIX
    train_src, labels = load_sources(as_sources(train), input_format, text_column, label_column, labels, fix)
    valid_src, _ = load_sources(as_sources(validation), input_format, text_column, label_column, labels, fix)
    present = sorted({int(i) for s in train_src for i in np.unique(s.data.labels)})
    if len(present) < 2:
        raise InputError(f"The training data holds one label only ({labels[present[0]]!r}): a classifier learns "
                         "nothing from it. Add rows of the other labels.")
    return train_src, valid_src, labels


def open_checkpoints(out_dir: Path, fp: dict[str, Any], minutes: float | None, resume: bool,
                     emit: Event) -> Checkpoints:
    """The run's checkpoints; with `resume`, the interrupted run's (refused if it was another run)."""
    checkpoints = Checkpoints(out_dir, fp, minutes=minutes, resume=resume)
    if checkpoints.missing:
        emit({"event": "nothing_to_resume", "path": str(checkpoints.path)})
    return checkpoints


# -- 2, 4. the student and the teachers' targets ---------------------------------------------------


def seeded_student(base: str, labels: list[str], model_options: dict[str, Any] | None, seed: int) -> Student:
    """The student (train_student), after seeding everything we can: the head's random init repeats too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return load_student(base, labels, model_options)


def distillation_targets(checkpoints: Checkpoints, teachers: list[str] | None, teacher_logits: str | None,
                         save_teacher_logits: str | None, texts: list[str], labels: list[str], device: str,
                         dev: torch.device, cfg: TrainConfig, emit: Event) -> tuple[torch.Tensor | None, list[str]]:
    """The teachers' softened targets (train_teachers), scored in the training precision (soft targets
    need no more); a resumed run distils from the targets it started with."""
    if checkpoints.soft is not None:
        return checkpoints.soft
    scoring = "bf16" if train_amp_dtype(dev, cfg.precision) == torch.bfloat16 else "fp32"
    return teacher_targets(teachers, teacher_logits, save_teacher_logits, texts, labels, device, scoring,
                           cfg.distill_temperature, emit)


# -- 7. save ---------------------------------------------------------------------------------------


def save(student: Student, out_dir: Path, info: dict[str, Any], save_dtype: str, checkpoints: Checkpoints,
         emit: Event) -> None:
    """The model folder and its training.json, moved into place whole; then the checkpoint has done its
    job (an interrupted run keeps it for `resume`)."""
    with atomic_folder(out_dir) as folder:
        save_student(student, folder, save_dtype)
        (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if not info["stopped"]:
        checkpoints.remove()
    emit({"event": "done", "best_epoch": info["best_epoch"], "valid_accuracy": info["validation_metrics"]["accuracy"],
          "valid_macro_f1": info["validation_metrics"]["macro_f1"],
          "objective": info["validation_metrics"]["objective"], "temperature": info["temperature"],
          "out": str(out_dir)})


def save_student(student: Student, out_dir: Path, save_dtype: str) -> None:
    """The model folder, in `save_dtype`; nothing is saved if a weight is not finite in it."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[save_dtype]
    for name, v in student.model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v.to(dtype)).all():
            raise EmolabelError(f"Weight {name} is not finite once stored as {save_dtype}; nothing was saved. "
                                "Save as fp32 (`save_dtype` fp32) or lower `lr`.")
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


# -- 8. the bf16 check (issue 21) ------------------------------------------------------------------


def check_bf16(out_dir: Path, valid_src: list[SourceData], stopped: str | None, emit: Event) -> dict[str, Any]:
    """Whether `precision` auto may run the saved model in bf16 on the CPU: precision_check on the
    validation tables already read, recorded in the folder (precision-check.json), where the CPU has
    bf16 units and the model runs the batch-invariant forward. Not after an interrupted run (it was
    asked to stop; `emolabel check-bf16` runs it later). The `bf16_check` event says what came of it:
    `checked`, and `passed` with the worst table's accuracy change against fp32, or the `reason`."""
    from emolabel import precision_check

    reason = ("interrupted" if stopped else "no_bf16_units" if not cpu_has_bf16()
              else "not_invariant" if not runs_invariant(out_dir) else None)
    if reason:
        event: dict[str, Any] = {"event": "bf16_check", "checked": False, "reason": reason, "out": str(out_dir)}
    else:
        result = precision_check.check(out_dir, valid_src)
        path = precision_check.record(out_dir, result)
        worst = min(result["tables"], key=lambda t: t["accuracy_bf16"] - t["accuracy_fp32"])
        event = {"event": "bf16_check", "checked": True, "passed": result["passed"], "path": str(path),
                 "tables": len(result["tables"]), "worst_table": worst["path"],
                 "accuracy_change": worst["accuracy_bf16"] - worst["accuracy_fp32"],
                 "agreement": result["agreement"], "out": str(out_dir)}
    emit(event)
    return event


def runs_invariant(folder: Path) -> bool:
    """Whether the model in `folder`, as tag loads it, runs the batch-invariant forward (built on the
    meta device: no weights read)."""
    from emolabel.invariant import supports

    with torch.device("meta"):
        model = model_lib.EmotionClassifier(ModelConfig.load(folder), lean=True)
    return supports(model)
