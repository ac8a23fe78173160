"""`finetune --resume`: the whole training state, checkpointed beside the model folder.

A checkpoint holds what the next step depends on: the weights, AdamW's state, the scheduler,
the RNG states (torch for dropout; numpy's at the start of the epoch in progress, which
re-draws the same epoch sample and batches), the position in the epoch, the best epoch's
weights, the patience counter, the history and the distillation targets. It is written
atomically (a temporary file, fsync, rename) into `.NAME.emolabel-resume/` beside the model
folder every `checkpoint_minutes` and at the end of every epoch, and removed once the model is
saved. After Ctrl-C, SIGTERM, kill -9 or a reboot, the same command with --resume goes on from
the last checkpoint; on the same machine and torch the weights it ends with are bit-identical
to an uninterrupted run's (fp32 and bf16 autocast alike: tests/test_finetune_resume.py).

What --resume refuses, naming what changed: other training or validation tables (SHA-256 and
weights, in order), another base, labels, model or training option (epochs too: they set the
learning-rate schedule), objective or teachers. A checkpoint written on the CPU loads on a GPU
and the other way round (tensors are mapped to the device), but the run is then only
statistically the same: other kernels round otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolabel.errors import InputError

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where the checkpoints of a run writing `out_dir` live: a hidden folder beside it."""
    p = Path(out_dir).absolute()
    return p.parent / f".{p.name}.emolabel-resume"


@dataclass
class Progress:
    """The loop's own state; a checkpoint adds the weights, optimizer, scheduler and RNGs."""

    epoch: int = 1  # the epoch in progress (1-based)
    position: int = 0  # its batches already done
    step: int = 0  # optimizer steps, all epochs
    stale: int = 0  # epochs since the best one
    finished: bool = False  # the epoch loop has ended (all epochs, or early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"objective": -1.0})
    best_state: dict[str, torch.Tensor] | None = None
    losses: list[torch.Tensor] = field(default_factory=list)  # this epoch's, for its mean train loss
    epoch_rng: dict[str, Any] | None = None  # numpy's bit generator state at the start of `epoch`
    seconds: float = 0.0  # time earlier sittings spent in `epoch`


def fingerprint(train_src: list[Any], valid_src: list[Any], *, base: str, labels: list[str],
                model_options: dict[str, Any], train_config: dict[str, Any], objective: str,
                teachers: list[str] | None, teacher_logits: str | None) -> dict[str, Any]:
    """What a resumed run must find unchanged. Tables count by content (SHA-256), not by path."""
    from emolabel.files import file_sha256

    return {
        "train": {str(i + 1): {"sha256": s.sha256, "weight": s.source.weight} for i, s in enumerate(train_src)},
        "validation": {str(i + 1): s.sha256 for i, s in enumerate(valid_src)},
        "base": base,
        "labels": list(labels),
        "model": dict(model_options),
        "training": dict(train_config),
        "objective": objective,
        "teachers": [str(Path(t).absolute()) for t in teachers or []],
        "teacher_logits": file_sha256(teacher_logits) if teacher_logits else None,
    }


def _changes(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in _changes(old.get(k), new.get(k), f"{where}{k}.")]
    return [] if old == new else [where.rstrip(".")]


_WHAT = {"train": "training table", "validation": "validation table"}


def _describe(key: str) -> str:
    """'train.2.sha256' -> 'training table 2 (its contents)'; 'training.epochs' -> 'epochs'."""
    parts = key.split(".")
    if parts[0] in _WHAT:
        detail = {"sha256": " (its contents)", "weight": " (its @weight)"}.get(parts[-1], "") if len(parts) > 2 else ""
        return f"{_WHAT[parts[0]]} {parts[1]}{detail}" if len(parts) > 1 else f"{_WHAT[parts[0]]}s"
    if parts[0] in ("training", "model") and len(parts) > 1:
        return parts[1]
    return key


class Checkpoints:
    """Writes a run's checkpoints and, with `resume`, reads the last one back (after checking that
    it was made by the same run). `minutes` None: never written (nor resumed)."""

    def __init__(self, out_dir: str | Path, fp: dict[str, Any], *, minutes: float | None = 10.0,
                 resume: bool = False):
        self.folder = checkpoint_dir(out_dir)
        self.path = self.folder / CHECKPOINT
        self.fp = fp
        self.minutes = minutes
        self.loaded: dict[str, Any] | None = None
        self.missing = False  # --resume found nothing to resume
        self._last = time.monotonic()
        if resume:
            self._load()

    def _load(self) -> None:
        if not self.path.exists():
            self.missing = True
            return
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: say where it is and what to do
            raise InputError(f"The checkpoint {self.path} cannot be read ({type(e).__name__}): remove "
                             f"{self.folder} and run without `resume` to start over.") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InputError(f"{self.path} is not a checkpoint this emolabel writes: remove {self.folder} and "
                             "run without `resume` to start over.")
        changed = _changes(state["fingerprint"], self.fp)
        if changed:
            what = ", ".join(dict.fromkeys(_describe(c) for c in changed))
            raise InputError(f"Cannot resume: {what} changed since the checkpoint in {self.folder}. Give the "
                             "same tables and options as the interrupted run, or run without `resume` to "
                             "start over (that replaces the checkpoint).")
        self.loaded = state

    @property
    def progress(self) -> Progress | None:
        return self.loaded["progress"] if self.loaded else None

    @property
    def soft(self) -> tuple[torch.Tensor | None, list[str]] | None:
        """The distillation targets the interrupted run used (None when nothing was resumed)."""
        return (self.loaded["soft"], self.loaded["teacher_names"]) if self.loaded else None

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                dev: torch.device) -> Progress:
        """Put the checkpoint's weights, optimizer, scheduler and torch RNG state back."""
        assert self.loaded is not None
        s = self.loaded
        model.load_state_dict(s["model"])
        model.to(dev)
        optimizer.load_state_dict(s["optimizer"])  # moves the state to the parameters' device
        scheduler.load_state_dict(s["scheduler"])
        torch.set_rng_state(s["torch_rng"])
        if dev.type == "cuda" and s.get("cuda_rng") is not None and s["device"] == "cuda":
            torch.cuda.set_rng_state(s["cuda_rng"], dev)
        return s["progress"]

    def due(self) -> bool:
        return self.minutes is not None and time.monotonic() - self._last >= self.minutes * 60

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, progress: Progress,
             soft: torch.Tensor | None, teacher_names: list[str], dev: torch.device) -> None:
        """Write the whole state atomically: a reader finds the old checkpoint or the new, never half."""
        if self.minutes is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "fingerprint": self.fp,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "device": dev.type,
            "progress": progress,
            "soft": soft,
            "teacher_names": teacher_names,
            "saved": time.time(),
        }
        tmp = self.folder / (CHECKPOINT + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def remove(self) -> None:
        """Once the model is saved the checkpoint has done its job."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def numpy_state(rng: np.random.Generator) -> dict[str, Any]:
    """A copy of the generator's state (the live dict would change under us)."""
    import copy

    return copy.deepcopy(rng.bit_generator.state)
