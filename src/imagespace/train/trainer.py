"""The training loop shared by the modes that train a CNN on pixels (finetune, scratch).

Epochs of augmented batches (from memory or streamed, :mod:`.stream`), a validation score
after each epoch, a checkpoint after each epoch and optionally every few steps (so --resume
or a restarted worker loses at most one checkpoint interval), early stopping on the validation
score, and an optional time budget: the learning-rate schedule follows whichever of
"steps done" and "time used" is further along, so a time-boxed run still anneals to the end.
The same loop runs in each data-parallel worker of a Ray Train run (:mod:`.ray_engine`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
    checkpoint_every: int | None = None  # steps between checkpoints inside an epoch (None: epoch ends only)


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    epochs_run: int = 0
    stopped: str = "epochs"  # "epochs", "early-stopping", "time-limit", "max-steps"
    seconds: float = 0.0
    restored_at: list = field(default_factory=list)  # (epoch, step) where a restarted Ray worker group went on


class BatchSource(Protocol):
    """Where a step's (uint8 NHWC pixels, labels) come from: :mod:`.stream`."""

    @property
    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class Checkpoints(Protocol):
    """Where the loop's state goes after each epoch (and every ``checkpoint_every`` steps)."""

    def load(self) -> dict | None: ...

    def save(self, state: dict, metrics: dict) -> None: ...


class Team(Protocol):
    """The data-parallel workers one loop runs on. Every decision that ends an epoch or the
    run must be the same on all of them, or the gradient all-reduce waits forever: the
    chief (rank 0) evaluates and decides, the others take its word."""

    chief: bool

    def agree(self, value):  # rank 0's value, on every worker
        ...


class Alone:
    """A single process: it is the chief and agrees with itself."""

    chief = True

    def agree(self, value):
        return value


class FolderCheckpoints:
    """The checkpoint file in the run's MODEL_DIR (see :mod:`.workdir`)."""

    def __init__(self, out: Path | None, resume: bool):
        self.out, self.resume = out, resume

    def load(self) -> dict | None:
        return load_checkpoint(self.out) if self.resume and self.out is not None else None

    def save(self, state: dict, metrics: dict) -> None:
        if self.out is not None:
            save_checkpoint(self.out, state)


class LossOf(nn.Module):
    """The network and its loss as one module, so data-parallel training syncs the loss's
    own parameters (class proxies) along with the network's."""

    def __init__(self, net: nn.Module, loss_fn: nn.Module):
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.net(pixels).float(), labels)


def fit(net: nn.Module, loss_fn: nn.Module, data: BatchSource, *,
        evaluate: Callable[[], dict], settings: LoopSettings, param_groups: list[dict],
        checkpoints: Checkpoints, progress: TrainProgress, score_key: str = "map",
        wrap: Callable[[nn.Module], nn.Module] | None = None, team: Team | None = None) -> LoopResult:
    """Train ``net`` (uint8 NHWC batch -> L2-normalised embeddings) with ``loss_fn(z, y)``.

    ``evaluate()`` returns validation metrics (called on the chief only); ``score_key`` of
    them picks the best epoch, whose weights ``net`` holds on return. The loop continues
    from ``checkpoints.load()`` when it has a state, at the step it was saved at. ``wrap``
    wraps the (net, loss) module for data-parallel training (DistributedDataParallel).
    """
    team = team or Alone()
    device = next(net.parameters()).device
    opt = _optimizer(settings, param_groups)
    result = LoopResult()
    torch.manual_seed(settings.seed)
    best_state = None
    elapsed_before = 0.0
    start_step = 0
    ckpt = checkpoints.load()
    if ckpt is not None and "loop" in ckpt:
        net.load_state_dict(ckpt["net"])
        loss_fn.load_state_dict(ckpt["loss"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        best_state = ckpt["best_state"]
        result = ckpt["loop"]
        start_step = int(ckpt.get("step", 0))
        elapsed_before = result.seconds
        progress.log(f"resuming at epoch {result.epochs_run + 1}, step {start_step + 1} (best so far: epoch "
                     f"{result.best_epoch}, validation {score_key} {result.best_score:.4f})")
    step_module = LossOf(net, loss_fn)
    if wrap is not None:
        step_module = wrap(step_module)
    steps_per_epoch = data.steps_per_epoch
    total_steps = steps_per_epoch * settings.epochs
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    started = time.perf_counter()
    steps_this_run = 0
    amp = device.type == "cuda"  # mixed precision only where it pays: on a GPU
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def state(step: int) -> dict:
        return {"net": net.state_dict(), "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(), "best_state": best_state, "loop": result, "step": step}

    while result.epochs_run < settings.epochs:
        if settings.patience is not None and result.epochs_run - result.best_epoch >= settings.patience \
                and result.best_epoch > 0:
            result.stopped = "early-stopping"
            break
        epoch = result.epochs_run
        step_module.train()
        _freeze_batchnorm_if_asked(net)
        progress.start(f"epoch {epoch + 1}/{settings.epochs}", total=steps_per_epoch)
        progress.advance(start_step)
        last_loss = float("nan")
        out_of_time = False
        s = start_step - 1
        images = 0
        for s, (x, y) in enumerate(data.batches(epoch, start_step), start=start_step):
            done = (epoch * steps_per_epoch + s) / max(total_steps, 1)
            spent = elapsed_before + time.perf_counter() - started
            if budget is not None:
                if team.agree(spent >= budget):
                    out_of_time = True
                    break
                done = max(done, spent / budget)
            _set_lr(opt, done, settings.warmup)
            batch = torch.from_numpy(x).to(device)
            labels = torch.from_numpy(y).to(device)
            with torch.autocast(device.type, enabled=amp):
                loss = step_module(batch, labels)
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
            progress.advance(1, images=len(x), loss=last_loss)
            images += len(x)
            steps_this_run += 1
            if settings.max_steps is not None and steps_this_run >= settings.max_steps:
                break
            every = settings.checkpoint_every
            if every and (s + 1) % every == 0 and s + 1 < steps_per_epoch:
                result.seconds = elapsed_before + time.perf_counter() - started
                if team.chief:
                    checkpoints.save(state(s + 1), {"epoch": epoch + 1, "step": s + 1, "loss": last_loss})
                else:
                    checkpoints.save({}, {"epoch": epoch + 1, "step": s + 1, "loss": last_loss})
        progress.stop()
        steps_done = s + 1 if not out_of_time else s  # a time-boxed epoch may end early: say how far it got
        start_step = 0
        if out_of_time and steps_done == 0:
            result.stopped = "time-limit"
            break
        step_module.eval()
        with torch.no_grad():
            scores = team.agree(evaluate() if team.chief else None)
        result.epochs_run = epoch + 1
        result.seconds = elapsed_before + time.perf_counter() - started
        result.history.append({"epoch": epoch + 1, "loss": last_loss, "seconds": round(result.seconds, 1),
                               "images": steps_done * settings.batch_size,
                               **{f"val_{k}": v for k, v in scores.items()}})
        score = scores.get(score_key, -math.inf)
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch + 1
            best_state = copy.deepcopy(net.state_dict()) if team.chief else None
        progress.log(f"epoch {epoch + 1}: loss {last_loss:.4f}, validation "
                     + ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
        checkpoints.save(state(0) if team.chief else {}, {"epoch": epoch + 1, "step": 0, "loss": last_loss,
                                                          **{f"val_{k}": v for k, v in scores.items()}})
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
