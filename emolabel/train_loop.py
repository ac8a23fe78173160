"""finetune's epoch loop: fit() trains epoch by epoch, validates after each on every validation
table, keeps the best epoch by the objective, stops early, checkpoints as it goes (train_resume)
and keeps the best epoch so far when interrupted; then calibrate() fits the softmax temperature.

The loop's parts, in the order a step uses them: the batch's loss (cross-entropy, mixed with the
teachers' soft targets when distilling), AdamW's parameter groups (layer-wise LR decay), the
warm-up then linear-decay schedule, and the autocast dtype (bf16 where the hardware has it).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emolabel import batching
from emolabel import model as model_lib
from emolabel.config import TRAIN_PRECISIONS, TrainConfig
from emolabel.data import SourceData, epoch_rows
from emolabel.errors import EmolabelError, OptionError
from emolabel.evaluate import classification_metrics
from emolabel.invariant import cpu_has_bf16
from emolabel.signals import Interrupted
from emolabel.train_resume import Checkpoints, Progress, numpy_state

Event = Callable[[dict[str, Any]], None]


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
    stopping would (SIGTERM too, under signals.signals_raise: the event names the signal); before any
    epoch has finished there is nothing to keep, and it propagates.
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
    except (KeyboardInterrupt, Interrupted) as e:  # Ctrl-C in a library call; SIGINT/SIGTERM under signals.py
        if prog.best_state is None:
            raise  # nothing to keep: no epoch finished
        stopped = f"interrupted in epoch {len(prog.history) + 1}; kept epoch {prog.best['epoch']}"
        emit({"event": "interrupted", "epoch": len(prog.history) + 1, "best_epoch": prog.best["epoch"],
              "signal": signal.Signals(getattr(e, "signum", signal.SIGINT)).name})
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


# TrainConfig's numbers the loop can train with: (lowest, highest, whether the lowest itself is allowed)
_COUNTS = {"epochs": 1, "batch_size": 1, "patience": 1}  # whole numbers, at least this
_NUMBERS = {"lr": (0.0, math.inf, False), "head_lr": (0.0, math.inf, False), "max_grad_norm": (0.0, math.inf, False),
            "distill_temperature": (0.0, math.inf, False), "weight_decay": (0.0, math.inf, True),
            "layer_decay": (0.0, 1.0, True), "warmup": (0.0, 1.0, True), "label_smoothing": (0.0, 1.0, True),
            "distill_alpha": (0.0, 1.0, True)}


def check_config(cfg: TrainConfig) -> None:
    """Refuse, before any work, a TrainConfig value the loop cannot train with (OptionError, naming
    the field): a NaN rate would only show as a diverged loss after an epoch."""

    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name, low in _COUNTS.items():
        v = getattr(cfg, name)
        if not whole(v) or v < low:
            raise OptionError(f"`{name}` must be a whole number, at least {low}, not {v!r}.")
    if not whole(cfg.seed):
        raise OptionError(f"`seed` must be a whole number, not {cfg.seed!r}.")
    for name, (low, high, closed) in _NUMBERS.items():
        v = getattr(cfg, name)
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v <= high
        if not (ok and (v >= low if closed else v > low)):
            span = f"from {low:g} to {high:g}" if high < math.inf else ("0 or more" if closed else "above 0")
            raise OptionError(f"`{name}` must be a number {span}, not {v!r}.")
    train_amp_dtype(torch.device("cpu"), cfg.precision)  # an unknown `precision` is refused there


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
