"""The training loop shared by the modes that train a CNN on pixels (finetune, scratch).

Epochs of augmented batches, a validation score after each epoch, a checkpoint after each
epoch (so --resume loses at most the epoch in flight), early stopping on the validation
score, and an optional time budget: the learning-rate schedule follows whichever of
"steps done" and "time used" is further along, so a time-boxed run still anneals to the end.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .progress import TrainProgress
from .workdir import load_checkpoint, save_checkpoint


@dataclass
class LoopSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, Nesterov)
    patience: int | None = 3  # epochs without a better validation score; None: never stop early
    max_minutes: float | None = None
    max_steps: int | None = None  # per run, for smoke tests
    warmup: float = 0.05  # fraction of the run
    seed: int = 0


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    epochs_run: int = 0
    stopped: str = "epochs"  # "epochs", "early-stopping", "time-limit", "max-steps"
    seconds: float = 0.0


def fit(net: nn.Module, loss_fn: nn.Module, pixels: np.ndarray, labels: np.ndarray, *,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray],
        evaluate: Callable[[], dict], settings: LoopSettings, param_groups: list[dict],
        out: Path | None, resume: bool, progress: TrainProgress,
        score_key: str = "map") -> LoopResult:
    """Train ``net`` (uint8 NHWC batch -> L2-normalised embeddings) with ``loss_fn(z, y)``.

    ``evaluate()`` returns validation metrics; ``score_key`` of them picks the best epoch,
    whose weights ``net`` holds on return. With ``resume`` the loop continues from the
    checkpoint in ``out``.
    """
    device = next(net.parameters()).device
    opt = _optimizer(settings, param_groups)
    result = LoopResult()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    best_state = None
    elapsed_before = 0.0
    if resume and out is not None:
        ckpt = load_checkpoint(out)
        if ckpt is not None and "loop" in ckpt:
            net.load_state_dict(ckpt["net"])
            loss_fn.load_state_dict(ckpt["loss"])
            opt.load_state_dict(ckpt["optimizer"])
            rng.bit_generator.state = ckpt["numpy_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            best_state = ckpt["best_state"]
            result = ckpt["loop"]
            elapsed_before = result.seconds
            progress.log(f"resuming after epoch {result.epochs_run} (best so far: epoch {result.best_epoch}, "
                         f"validation {score_key} {result.best_score:.4f})")
    n = len(pixels)
    steps_per_epoch = max(1, n // settings.batch_size)  # full batches only: BN dislikes tiny ones
    total_steps = steps_per_epoch * settings.epochs
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    started = time.perf_counter()
    steps_this_run = 0
    amp = device.type == "cuda"  # mixed precision only where it pays: on a GPU
    scaler = torch.amp.GradScaler("cuda") if amp else None
    while result.epochs_run < settings.epochs:
        if settings.patience is not None and result.epochs_run - result.best_epoch >= settings.patience \
                and result.best_epoch > 0:
            result.stopped = "early-stopping"
            break
        epoch = result.epochs_run
        net.train()
        _freeze_batchnorm_if_asked(net)
        progress.start(f"epoch {epoch + 1}/{settings.epochs}", total=steps_per_epoch)
        order = rng.permutation(n)
        last_loss = float("nan")
        out_of_time = False
        for s in range(steps_per_epoch):
            done = (epoch * steps_per_epoch + s) / max(total_steps, 1)
            spent = elapsed_before + time.perf_counter() - started
            if budget is not None:
                if spent >= budget:
                    out_of_time = True
                    break
                done = max(done, spent / budget)
            _set_lr(opt, done, settings.warmup)
            idx = order[s * settings.batch_size:(s + 1) * settings.batch_size]
            batch = torch.from_numpy(augment(pixels[idx], rng)).to(device)
            y = torch.from_numpy(np.asarray(labels[idx], dtype=np.int64)).to(device)
            with torch.autocast(device.type, enabled=amp):
                loss = loss_fn(net(batch).float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"the loss became {last_loss} at epoch {epoch + 1}: lower --lr and try again")
            progress.advance(1, images=len(idx), loss=last_loss)
            steps_this_run += 1
            if settings.max_steps is not None and steps_this_run >= settings.max_steps:
                break
        progress.stop()
        if out_of_time and s == 0:
            result.stopped = "time-limit"
            break
        net.eval()
        with torch.no_grad():
            scores = evaluate()
        result.epochs_run = epoch + 1
        result.seconds = elapsed_before + time.perf_counter() - started
        steps_done = s + 1 if not out_of_time else s  # a time-boxed epoch may end early: say how far it got
        result.history.append({"epoch": epoch + 1, "loss": last_loss, "seconds": round(result.seconds, 1),
                               "images": steps_done * settings.batch_size,
                               **{f"val_{k}": v for k, v in scores.items()}})
        score = scores.get(score_key, -math.inf)
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch + 1
            best_state = copy.deepcopy(net.state_dict())
        progress.log(f"epoch {epoch + 1}: loss {last_loss:.4f}, validation "
                     + ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
        if out is not None:
            save_checkpoint(out, {"net": net.state_dict(), "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(),
                                  "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                                  "best_state": best_state, "loop": result})
        if out_of_time:
            result.stopped = "time-limit"
            break
        if settings.max_steps is not None and steps_this_run >= settings.max_steps:
            result.stopped = "max-steps"
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result


def _optimizer(settings: LoopSettings, groups: list[dict]) -> torch.optim.Optimizer:
    for g in groups:
        g.setdefault("lr", settings.lr)
        g["base_lr"] = g["lr"]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)


def _set_lr(opt: torch.optim.Optimizer, done: float, warmup: float) -> None:
    # Linear warm-up, then cosine to 2% of the base rate, as a function of the fraction done.
    if done < warmup:
        scale = (done + 1e-3) / warmup
    else:
        scale = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warmup) / max(1 - warmup, 1e-9))))
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * scale


def _freeze_batchnorm_if_asked(net: nn.Module) -> None:
    # A pretrained network fine-tuned with small CPU batches keeps its BatchNorm statistics:
    # re-estimating them from 16-32 images per batch would only add noise.
    if getattr(net, "freeze_batchnorm", False):
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
