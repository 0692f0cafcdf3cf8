"""The modes that train a CNN on pixels (finetune, scratch), in pieces both engines share.

The local pipeline runs them in one process; a Ray Train run (:mod:`.ray_engine`) runs
:func:`build_parts`, :func:`train_source` and the loop in every worker and :func:`finish`
on the driver. Training images are always streamed (:mod:`.stream`): decoded and augmented
batch by batch, so memory stays flat whatever the data set's size. Only the check set (the
validation images scored after each epoch, at most a few thousand) is held decoded.

Batch and learning rate: ``batch_size`` is the global batch (all workers together). Without
``--lr`` the mode's learning rate is scaled linearly with it (the linear scaling rule, with
the warm-up the schedule already has): scratch 0.1 at 128 images, finetune 1e-4 at 16, so a
global batch of 256 trains scratch at 0.2. More workers with the same global batch change
nothing about the optimisation: each worker takes a share of the same batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..models.networks import NETWORKS
from . import finetune as finetune_mod
from . import scratch as scratch_mod
from .data import DataError, ImageSet, decode_all
from .progress import TrainProgress
from .runspec import TrainConfig, Trained, failure_hint, preprocessing
from .stream import BatchPlan, StreamBatches
from .trainer import LoopResult, LoopSettings

PIXEL_MODES = ("finetune", "scratch")
# mode: (epochs, global batch, lr at that batch, input size (finetune: the network's), optimizer, weight decay, warm-up, check-set cap)
_DEFAULTS = {
    # Batch 128 rather than the GPU-usual 512: on a CPU the cost per image is the same,
    # and a short, time-boxed run gains from taking more steps.
    "scratch": dict(epochs=30, batch=128, lr=0.1, size=32, optimizer="sgd", weight_decay=5e-4, warmup=0.15,
                    check=5000),
    "finetune": dict(epochs=10, batch=16, lr=1e-4, size=None, optimizer="adamw", weight_decay=1e-4, warmup=0.05,
                     check=2000),
}
PROBE = 2000  # training images searched when every class has one validation image (tiny data)


@dataclass
class Recipe:
    mode: str
    num_classes: int
    size: int
    settings: LoopSettings
    loss: str  # finetune: the metric loss; scratch: cosine-softmax
    width: int
    check_cap: int
    arch: str  # finetune: the pretrained network


def scaled_lr(mode: str, batch_size: int) -> float:
    d = _DEFAULTS[mode]
    return d["lr"] * batch_size / d["batch"]


def recipe_for(config: TrainConfig, num_classes: int, train_images: int) -> Recipe:
    d = _DEFAULTS[config.mode]
    batch = config.batch_size or d["batch"]
    patience = config.patience if config.patience is not None else (3 if config.mode == "finetune" else None)
    settings = LoopSettings(epochs=config.epochs or d["epochs"], batch_size=min(batch, train_images),
                            lr=config.lr or scaled_lr(config.mode, batch), weight_decay=d["weight_decay"],
                            optimizer=d["optimizer"], patience=patience, warmup=d["warmup"],
                            max_minutes=config.max_minutes, max_steps=config.max_steps, seed=config.seed,
                            checkpoint_every=config.checkpoint_every)
    loss = (config.loss or "proxy-anchor") if config.mode == "finetune" else "cosine-softmax"
    size = config.image_size or (NETWORKS[config.base].input_size if config.mode == "finetune" else d["size"])
    return Recipe(config.mode, num_classes, size, settings, loss, config.width, d["check"], config.base)


@dataclass
class Parts:
    net: nn.Module  # what is exported (after finish)
    view: nn.Module  # training view: pixels -> L2-normalised features
    loss: nn.Module
    param_groups: list[dict]


def build_parts(recipe: Recipe) -> Parts:
    torch.manual_seed(recipe.settings.seed)
    if recipe.mode == "finetune":
        p = finetune_mod.build_finetune(recipe.num_classes, recipe.loss, recipe.settings.lr, arch=recipe.arch)
        return Parts(p.net, p.train_view, p.loss, p.param_groups)
    net = scratch_mod.CompactCNN(recipe.num_classes, width=recipe.width)
    return Parts(net, scratch_mod.ScratchTrain(net), scratch_mod.CosineSoftmaxLoss(net),
                 [{"params": list(net.parameters())}])


def augment_for(recipe: Recipe):
    if recipe.mode == "finetune":
        return finetune_mod.make_augment(recipe.size)
    return scratch_mod.shift_flip_augment(max(1, recipe.size // 8))


def train_source(ds: ImageSet, train_idx: np.ndarray, recipe: Recipe, *, rank: int = 0, world: int = 1,
                 threads: int | None = None) -> StreamBatches:
    plan = BatchPlan(len(train_idx), recipe.settings.batch_size, recipe.settings.seed, rank, world)
    return StreamBatches(ds, train_idx, recipe.size, plan, augment_for(recipe), threads=threads)


@dataclass
class CheckSet:
    """Decoded validation images scored after each epoch (and training images for tiny data)."""

    val_pixels: np.ndarray
    val_labels: np.ndarray
    probe_pixels: np.ndarray | None
    probe_labels: np.ndarray | None
    failures: list[dict]


def decode_check_set(ds: ImageSet, train_idx: np.ndarray, val_idx: np.ndarray, recipe: Recipe,
                     progress: TrainProgress) -> CheckSet:
    """Decode at most ``check_cap`` validation images (a fixed random subset: enough to pick
    the best epoch); refuse data where too little can be read to learn anything."""
    check = val_idx
    if len(check) > recipe.check_cap:
        check = np.sort(np.random.default_rng(recipe.settings.seed).choice(val_idx, recipe.check_cap, replace=False))
    progress.start("decoding the validation images", total=len(check))
    pixels, kept, failures = decode_all(ds.subset(check), recipe.size,
                                        on_progress=lambda k: progress.advance(k, images=k))
    progress.stop()
    labels = ds.labels[check][kept]
    if len(labels) == 0 or len(np.unique(labels)) < 2 or len(np.unique(ds.labels[train_idx])) < 2:
        raise DataError("after leaving out unreadable images, there is not enough to train on: need at least "
                        "2 classes with at least 2 readable images each" + failure_hint(failures))
    probe = probe_labels = None
    if np.bincount(labels).max() < 2:  # no validation image has a same-class partner to find
        probe_idx = train_idx[:PROBE]
        probe, probe_kept, more = decode_all(ds.subset(probe_idx), recipe.size)
        probe_labels = ds.labels[probe_idx][probe_kept]
        failures = failures + more
    return CheckSet(pixels, labels, probe, probe_labels, failures)


def make_evaluate(view: nn.Module, check: CheckSet):
    return finetune_mod.make_evaluate(view, check.val_pixels, check.val_labels, check.probe_pixels, check.probe_labels)


def finish(recipe: Recipe, parts: Parts, ds: ImageSet, train_idx: np.ndarray, result: LoopResult,
           failures: list[dict], extra_info: dict | None = None) -> Trained:
    """The trained parts (best epoch's weights loaded) as the network to export."""
    info = {"epochs": result.epochs_run, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "train_seconds": round(result.seconds, 1), "settings": asdict(recipe.settings),
            "history": result.history, "skipped": failures, **(extra_info or {})}
    if recipe.mode == "finetune":
        proxies = finetune_mod.class_proxies(parts.loss, *_class_vectors(parts, ds, train_idx, recipe),
                                             recipe.num_classes)
        net = finetune_mod.WithClassTags(_FeaturesOnly(parts.net), proxies)
        return Trained(net=net, input_size=recipe.size, preprocessing=preprocessing(recipe.size, "(x - 127) / 128"),
                       architecture={"backbone": recipe.arch, "pooling": "gem3", "loss": recipe.loss,
                                     "frozen_backbone": False},
                       tag_labels=list(ds.classes), info=info)
    net = parts.net
    return Trained(net=net, input_size=recipe.size, preprocessing=preprocessing(recipe.size, "x / 127.5 - 1"),
                   architecture={"network": "compact-resnet", "width": recipe.width, "dim": net.dim,
                                 "loss": "cosine-softmax"},
                   tag_labels=list(ds.classes), info=info)


def _class_vectors(parts: Parts, ds: ImageSet, train_idx: np.ndarray, recipe: Recipe):
    """Training vectors for class means, needed only by a loss without proxies (supcon);
    embedded chunk by chunk from the listing (at most 20,000 images: enough for a mean)."""
    if isinstance(getattr(parts.loss, "proxies", None), nn.Parameter):
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    idx = train_idx[:20000]
    vectors, labels = [], []
    for start in range(0, len(idx), 256):
        chunk = idx[start:start + 256]
        pixels, kept, _ = decode_all(ds.subset(chunk), recipe.size)
        vectors.append(finetune_mod.embed_pixels(parts.view, pixels))
        labels.append(ds.labels[chunk][kept])
    return np.concatenate(vectors), np.concatenate(labels)


class _FeaturesOnly(nn.Module):
    """The EmbeddingNet without its ImageNet logits, which fine-tuning made meaningless."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        return self.net(pixels)[0]
