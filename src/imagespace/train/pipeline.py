"""One training run from start to MODEL_DIR: data, split, mode, export, metrics.

Every mode holds out a validation split before training starts (stratified, fixed by the
seed and recorded in the run file, so --resume uses the same one), and every run ends with
the retrieval metrics of the new model against the pretrained one on that split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models import DEFAULT_MODEL, create_model
from ..models.base import EmbeddingModel
from ..models.nets import build_embedding_net
from ..models.networks import NETWORKS
from . import adapter as adapter_mod
from . import finetune as finetune_mod
from . import scratch as scratch_mod
from . import selfsup as selfsup_mod
from .augment import AugmentConfig
from .data import DataError, ImageSet, check_supervised, decode_all, open_image_set, split_validation
from .export import export_model_dir, write_metrics
from .features import extract_features
from .metrics import retrieval_metrics, split_metrics, view_retrieval
from .progress import TrainProgress
from .trainer import LoopSettings, fit
from .workdir import (RunError, load_checkpoint, load_run_settings, prepare_out_dir, save_checkpoint,
                      save_run_settings)

MODES = ("adapter", "finetune", "self-supervised", "scratch")
# Comparing with the pretrained model costs one pass of it over the validation images;
# above this many, a fixed random subset stands for the split (both models see the same).
MAX_COMPARE = 2000
CACHE = "cache"

# What a resumed run may change: how long it goes on, not what it learns from.
_RESUMABLE_OVERRIDES = ("epochs", "max_minutes", "patience", "max_steps")


@dataclass
class TrainConfig:
    data: str
    out: str
    mode: str = "adapter"
    epochs: int | None = None  # default per mode
    batch_size: int | None = None
    lr: float | None = None
    loss: str | None = None  # adapter/finetune: supcon | proxy-anchor | arcface
    head: str = adapter_mod.DEFAULT_HEAD
    dim: int | None = None  # adapter: 128; self-supervised: 512
    image_size: int | None = None  # finetune: 224; scratch: 32
    width: int = 32  # scratch: channels of the first stage
    views: int | None = None  # cached views per image: adapter and self-supervised 6
    val_fraction: float = 0.2
    seed: int = 0
    patience: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None
    compare: bool = True  # measure the pretrained model on the validation split too
    resume: bool = False
    overwrite: bool = False
    base_model: str | None = None  # the pretrained network to start from (default: DEFAULT_MODEL)

    @property
    def base(self) -> str:
        name = self.base_model or DEFAULT_MODEL
        if name not in NETWORKS:
            raise DataError(f"training starts from a pretrained network: use one of {', '.join(NETWORKS)}, "
                            f"not {name!r}")
        return name


@dataclass
class Trained:
    """What a mode hands back for export and evaluation."""

    net: nn.Module  # uint8 NHWC pixels -> features[, logits]
    input_size: int
    preprocessing: dict
    architecture: dict
    tag_labels: list[str] | None = None
    imagenet_tags: bool = False
    # Validation vectors already at hand (adapter: from cached features); else the
    # exported ONNX model embeds the validation images.
    val_new: np.ndarray | None = None
    val_pretrained: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    train_vectors: dict | None = None  # {"new", "pretrained", "labels"}: for tiny validation splits
    info: dict = field(default_factory=dict)


def run_training(config: TrainConfig, progress: TrainProgress | None = None) -> dict:
    """Train as ``config`` says; returns {"model": MODEL_DIR, "metrics": {...}}."""
    progress = progress or TrainProgress(False)
    if config.mode not in MODES:
        raise DataError(f"unknown mode {config.mode!r}: use one of {', '.join(MODES)}")
    _ = config.base  # an unknown network is refused before any work
    started = time.perf_counter()
    out = prepare_out_dir(config.out, resume=config.resume, overwrite=config.overwrite)
    if config.resume:
        config, val_items = _resumed_config(out, config)
    else:
        val_items = None
    ds = open_image_set(config.data, labelled=True)
    if config.mode != "self-supervised":
        ds = check_supervised(ds)
    train_idx, val_idx = _split(ds, config, val_items)
    if not config.resume:
        save_run_settings(out, {"config": asdict(config), "val_items": [ds.items[i] for i in val_idx]})
    progress.log(f"{config.mode}: {ds.describe()} from {config.data}; {len(train_idx)} to train on, "
                 f"{len(val_idx)} held out for validation")
    for s in ds.skipped:
        progress.log(f"skipped {s['path']}: {s['error']}")
    trained = _MODES[config.mode](config, ds, train_idx, val_idx, out, progress)
    model_id = export_model_dir(out, trained.net.cpu(), mode=config.mode, input_size=trained.input_size,
                                classes=ds.classes, preprocessing=trained.preprocessing,
                                tag_labels=trained.tag_labels, imagenet_tags=trained.imagenet_tags,
                                architecture=trained.architecture)
    validation = _compare(out, ds, train_idx, val_idx, trained, config, progress)
    metrics = {
        "mode": config.mode,
        "model_id": model_id,
        "data": str(config.data),
        "images": len(ds),
        "classes": len(ds.classes),
        "train_images": int(len(train_idx)),
        "validation_images": int(len(val_idx)),
        "validation": validation,
        **trained.info,
        "skipped": ds.skipped + trained.info.get("skipped", []),
        "seconds": round(time.perf_counter() - started, 1),
    }
    metrics = _json_safe(metrics)
    write_metrics(out, metrics)
    return {"model": str(out), "metrics": metrics}


# -- the modes ---------------------------------------------------------------------------


def _adapter(config: TrainConfig, ds: ImageSet, train_idx, val_idx, out: Path, progress: TrainProgress) -> Trained:
    base = create_model(config.base)
    views = config.views or adapter_mod.DEFAULT_VIEWS
    feats, kept, failures = extract_features(ds, base, out / CACHE / "features.npz", views=views,
                                             augment=AugmentConfig.light(), seed=config.seed, progress=progress)
    x, y, tr, va = _kept_split(feats, ds.labels, kept, train_idx, val_idx)
    _require_trainable(y[tr], y[va], failures)
    settings = adapter_mod.AdapterSettings(
        loss=config.loss or adapter_mod.DEFAULT_LOSS, head=config.head, dim=config.dim or adapter_mod.DEFAULT_DIM,
        epochs=config.epochs or adapter_mod.AdapterSettings.epochs,
        batch_size=config.batch_size or adapter_mod.AdapterSettings.batch_size,
        lr=config.lr or adapter_mod.AdapterSettings.lr,
        patience=config.patience or adapter_mod.AdapterSettings.patience, seed=config.seed)
    state = _head_state(out, config.resume, progress)
    head, state = adapter_mod.fit_head(x[tr], y[tr], x[va], y[va], settings, num_classes=len(ds.classes),
                                       state=state, on_epoch=lambda s: save_checkpoint(out, {"head_state": s}),
                                       progress=progress)
    net = adapter_mod.HeadOnBackbone(build_embedding_net(_weights(config.base), arch=config.base), head)
    return Trained(
        net=net, input_size=base.input_size, preprocessing=_preprocessing(base.input_size, "(x - 127) / 128"),
        architecture={"backbone": config.base, "pooling": "gem3", "head": settings.head, "dim": settings.dim,
                      "loss": settings.loss, "frozen_backbone": True},
        imagenet_tags=True,
        val_new=adapter_mod.embed_with_head(head, x[va]), val_pretrained=x[va, 0], val_labels=y[va],
        train_vectors={"new": adapter_mod.embed_with_head(head, x[tr]), "pretrained": x[tr, 0], "labels": y[tr]},
        info={"epochs": state.epoch, "best_epoch": state.best_epoch, "settings": asdict(settings),
              "history": state.history, "skipped": failures},
    )


def _selfsup(config: TrainConfig, ds: ImageSet, train_idx, val_idx, out: Path, progress: TrainProgress) -> Trained:
    base = create_model(config.base)
    defaults = selfsup_mod.SelfSupSettings()
    settings = selfsup_mod.SelfSupSettings(
        head=config.head, dim=config.dim or defaults.dim, views=max(3, config.views or defaults.views),
        epochs=config.epochs or defaults.epochs, batch_size=config.batch_size or defaults.batch_size,
        lr=config.lr or defaults.lr, seed=config.seed)
    feats, kept, failures = extract_features(ds, base, out / CACHE / "features.npz", views=settings.views,
                                             augment=AugmentConfig.strong(), seed=config.seed, progress=progress)
    x, y, tr, va = _kept_split(feats, ds.labels, kept, train_idx, val_idx)
    if len(tr) < 2 or len(va) < 1:
        raise DataError(f"self-supervised training needs at least 3 readable images; {len(kept)} decoded"
                        + _failure_hint(failures))
    state = _head_state(out, config.resume, progress)
    head, state = selfsup_mod.fit_selfsup_head(x[tr], x[va], settings, state=state,
                                               on_epoch=lambda s: save_checkpoint(out, {"head_state": s}),
                                               progress=progress)
    net = adapter_mod.HeadOnBackbone(build_embedding_net(_weights(config.base), arch=config.base), head)
    base_views = view_retrieval(x[va, 0], x[va, 2]) if settings.views >= 3 else {}
    return Trained(
        net=net, input_size=base.input_size, preprocessing=_preprocessing(base.input_size, "(x - 127) / 128"),
        architecture={"backbone": config.base, "pooling": "gem3", "head": settings.head, "dim": settings.dim,
                      "loss": "nt-xent", "frozen_backbone": True},
        imagenet_tags=True,
        val_new=adapter_mod.embed_with_head(head, x[va]), val_pretrained=x[va, 0], val_labels=y[va],
        train_vectors={"new": adapter_mod.embed_with_head(head, x[tr]), "pretrained": x[tr, 0], "labels": y[tr]},
        info={"epochs": state.epoch, "best_epoch": state.best_epoch, "settings": asdict(settings),
              "history": state.history, "skipped": failures,
              "view_retrieval": {"new": selfsup_mod.evaluate_views(head, x[va]), "pretrained": base_views}},
    )


def _finetune(config: TrainConfig, ds: ImageSet, train_idx, val_idx, out: Path, progress: TrainProgress) -> Trained:
    size = config.image_size or NETWORKS[config.base].input_size
    loss = config.loss or "proxy-anchor"
    settings = LoopSettings(epochs=config.epochs or 10, batch_size=config.batch_size or 16, lr=config.lr or 1e-4,
                            weight_decay=1e-4, optimizer="adamw",
                            patience=config.patience if config.patience is not None else 3,
                            max_minutes=config.max_minutes, max_steps=config.max_steps, seed=config.seed)
    pixels, y, tr, va, failures = _decode_split(ds, train_idx, val_idx, size, progress)
    _require_trainable(y[tr], y[va], failures)
    parts = finetune_mod.build_finetune(len(ds.classes), loss, settings.lr, arch=config.base)
    parts.train_view.to(_device())
    parts.loss.to(_device())
    settings.batch_size = min(settings.batch_size, len(tr))
    result = fit(parts.train_view, parts.loss, pixels[tr], y[tr], augment=finetune_mod.make_augment(size),
                 evaluate=finetune_mod.make_evaluate(parts.train_view, pixels[va], y[va], pixels[tr[:2000]], y[tr[:2000]]), settings=settings,
                 param_groups=parts.param_groups, out=out, resume=config.resume, progress=progress)
    vec_tr = finetune_mod.embed_pixels(parts.train_view, pixels[tr])
    proxies = finetune_mod.class_proxies(parts.loss, vec_tr, y[tr], len(ds.classes))
    net = finetune_mod.WithClassTags(_features_only(parts.net), proxies)
    return Trained(
        net=net, input_size=size, preprocessing=_preprocessing(size, "(x - 127) / 128"),
        architecture={"backbone": config.base, "pooling": "gem3", "loss": loss, "frozen_backbone": False},
        tag_labels=list(ds.classes),
        info={**_loop_info(result, settings), "skipped": failures},
    )


def _scratch(config: TrainConfig, ds: ImageSet, train_idx, val_idx, out: Path, progress: TrainProgress) -> Trained:
    size = config.image_size or 32
    # Batch 128 rather than the GPU-usual 512: on a CPU the cost per image is the same,
    # and a short, time-boxed run gains from taking more steps.
    settings = LoopSettings(epochs=config.epochs or 30, batch_size=config.batch_size or 128, lr=config.lr or 0.1,
                            weight_decay=5e-4, optimizer="sgd", patience=config.patience, warmup=0.15,
                            max_minutes=config.max_minutes, max_steps=config.max_steps, seed=config.seed)
    pixels, y, tr, va, failures = _decode_split(ds, train_idx, val_idx, size, progress)
    _require_trainable(y[tr], y[va], failures)
    torch.manual_seed(config.seed)
    net = scratch_mod.CompactCNN(len(ds.classes), width=config.width)
    train_view = scratch_mod.ScratchTrain(net).to(_device())
    loss = scratch_mod.CosineSoftmaxLoss(net)
    settings.batch_size = min(settings.batch_size, len(tr))
    # Check on at most a few thousand held-out images per epoch: enough to pick the best.
    check = va if len(va) <= 5000 else np.random.default_rng(config.seed).choice(va, 5000, replace=False)
    result = fit(train_view, loss, pixels[tr], y[tr], augment=scratch_mod.shift_flip_augment(max(1, size // 8)),
                 evaluate=finetune_mod.make_evaluate(train_view, pixels[check], y[check], pixels[tr[:2000]], y[tr[:2000]]), settings=settings,
                 param_groups=[{"params": list(net.parameters())}], out=out, resume=config.resume,
                 progress=progress, score_key="map")
    return Trained(
        net=net, input_size=size, preprocessing=_preprocessing(size, "x / 127.5 - 1"),
        architecture={"network": "compact-resnet", "width": config.width, "dim": net.dim, "loss": "cosine-softmax"},
        tag_labels=list(ds.classes),
        info={**_loop_info(result, settings), "skipped": failures},
    )


_MODES = {"adapter": _adapter, "finetune": _finetune, "self-supervised": _selfsup, "scratch": _scratch}


# -- helpers -----------------------------------------------------------------------------


def _resumed_config(out: Path, given: TrainConfig) -> tuple[TrainConfig, list[str] | None]:
    stored = load_run_settings(out)
    saved = TrainConfig(**{f.name: stored["config"].get(f.name, getattr(given, f.name)) for f in fields(TrainConfig)})
    if Path(given.data).resolve() != Path(saved.data).resolve():
        raise RunError(f"--resume must train on the same data as the run in {out}: {saved.data}, not {given.data}")
    if given.mode != saved.mode:
        raise RunError(f"--resume must use the same mode as the run in {out}: --mode {saved.mode}")
    for name in _RESUMABLE_OVERRIDES:
        if getattr(given, name) is not None:
            setattr(saved, name, getattr(given, name))
    saved.resume, saved.overwrite, saved.compare = True, False, given.compare
    return saved, stored.get("val_items")


def _split(ds: ImageSet, config: TrainConfig, val_items: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    if val_items is not None:
        wanted = set(val_items)
        is_val = np.array([item in wanted for item in ds.items])
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)
    return split_validation(ds.labels, config.val_fraction, config.seed)


def _kept_split(feats, labels, kept, train_idx, val_idx):
    """Features of the decoded items, and train/val positions among them."""
    pos = {int(k): i for i, k in enumerate(kept)}
    tr = np.array([pos[i] for i in train_idx if int(i) in pos], dtype=np.int64)
    va = np.array([pos[i] for i in val_idx if int(i) in pos], dtype=np.int64)
    return feats, labels[kept], tr, va


def _decode_split(ds: ImageSet, train_idx, val_idx, size: int, progress: TrainProgress):
    progress.start("decoding", total=len(ds))
    pixels, kept, failures = decode_all(ds, size, on_progress=lambda k: progress.advance(k, images=k))
    progress.stop()
    for f in failures:
        progress.log(f"skipped {f['path']}: {f['error']}")
    _, y, tr, va = _kept_split(None, ds.labels, kept, train_idx, val_idx)
    return pixels, y, tr, va, failures


def _require_trainable(y_train: np.ndarray, y_val: np.ndarray, failures: list[dict]) -> None:
    if len(y_train) == 0 or len(y_val) == 0 or (y_train >= 0).any() and len(np.unique(y_train)) < 2:
        raise DataError("after leaving out unreadable images, there is not enough to train on: need at least "
                        "2 classes with at least 2 readable images each" + _failure_hint(failures))


def _failure_hint(failures: list[dict]) -> str:
    if not failures:
        return ""
    first = "; ".join(f"{f['path']}: {f['error']}" for f in failures[:3])
    return f" ({len(failures)} images could not be read, e.g. {first})"


def _head_state(out: Path, resume: bool, progress: TrainProgress):
    if not resume:
        return None
    ckpt = load_checkpoint(out)
    state = ckpt.get("head_state") if ckpt else None
    if state is not None:
        progress.log(f"resuming after epoch {state.epoch}")
    return state


def _loop_info(result, settings: LoopSettings) -> dict:
    return {"epochs": result.epochs_run, "best_epoch": result.best_epoch, "stopped": result.stopped,
            "train_seconds": round(result.seconds, 1), "settings": asdict(settings), "history": result.history}


def _device() -> torch.device:
    # Training runs where a GPU is (with mixed precision, see trainer.fit); export on the CPU.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights(arch: str):
    return NETWORKS[arch].weights_path()


class _FeaturesOnly(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        return self.net(pixels)[0]


def _features_only(net: nn.Module) -> nn.Module:
    """The EmbeddingNet without its ImageNet logits, which fine-tuning made meaningless."""
    return _FeaturesOnly(net)


def _preprocessing(size: int, scaling: str) -> dict:
    return {
        "input": "pixels: uint8 RGB, NHWC, batch of any size",
        "resize": f"whole image to {size}x{size}, bilinear, no crop (imagespace.images.decode)",
        "orientation": "EXIF orientation applied; alpha composited on white",
        "scaling": f"inside the graph: {scaling}",
        "outputs": "features (L2-normalise for cosine similarity), then logits for tags when present",
    }


def _compare(out: Path, ds: ImageSet, train_idx, val_idx, trained: Trained, config: TrainConfig,
             progress: TrainProgress) -> dict:
    """precision@1 and mAP of the new and the pretrained model on the validation split."""
    if trained.val_new is not None:
        new, labels, pre = trained.val_new, trained.val_labels, trained.val_pretrained
        db = trained.train_vectors  # {"new", "pretrained", "labels"} or None
    else:
        new_model = create_model(str(out))
        pre_model = create_model(config.base) if config.compare else None
        new, pre, labels = _embed_both(ds, _at_most(val_idx, config.seed), new_model, pre_model, progress, "validation")
        db = None
        if retrieval_metrics(new, labels)["queries"] == 0:  # tiny data: see split_metrics
            tn, tp, tl = _embed_both(ds, _at_most(train_idx, config.seed), new_model, pre_model, progress, "training")
            db = {"new": tn, "pretrained": tp, "labels": tl}
    result: dict = {"images": int(len(new))}
    if labels is None or (labels < 0).all():
        result["note"] = "no class folders: retrieval metrics need labels (see view_retrieval)"
        return result
    for name, vecs in (("pretrained", pre), ("new", new)):
        if vecs is None:
            continue
        m = split_metrics(vecs, labels, db[name] if db else None, db["labels"] if db else None)
        result[name] = {"precision_at_1": _round(m["precision_at_1"]), "map": _round(m["map"])}
        result["protocol"] = m["protocol"]
    return result


def _json_safe(obj):
    """NaN and infinities (undefined metrics) become null: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _at_most(idx, seed: int) -> np.ndarray:
    idx = np.asarray(idx)
    if len(idx) > MAX_COMPARE:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_COMPARE, replace=False))
    return idx


def _embed_both(ds: ImageSet, idx: np.ndarray, new_model: EmbeddingModel, pre_model: EmbeddingModel | None,
                progress: TrainProgress, what: str):
    """Vectors of ``idx`` by both models, on the images both could read, and their labels."""
    sub = ds.subset(idx)
    new, kept = _embed_set(sub, new_model, progress, f"{what} (new model)")
    labels = sub.labels[kept]
    if pre_model is None:
        return new, None, labels
    pre, pre_kept = _embed_set(sub, pre_model, progress, f"{what} (pretrained)")
    both = np.intersect1d(kept, pre_kept)
    return new[np.isin(kept, both)], pre[np.isin(pre_kept, both)], sub.labels[both]


def _round(x: float) -> float | None:
    # JSON has no NaN: an undefined metric (no query with a relevant item) is null.
    return None if x != x else round(float(x), 4)


def _embed_set(ds: ImageSet, model: EmbeddingModel, progress: TrainProgress, what: str):
    vectors, kept_all = [], []
    progress.start(what, total=len(ds))
    for start in range(0, len(ds), 256):
        idx = np.arange(start, min(start + 256, len(ds)))
        pixels, kept, _ = decode_all(ds.subset(idx), model.input_size)
        for b in range(0, len(pixels), 64):
            vectors.append(model.embed(pixels[b:b + 64]).vectors)
        kept_all.append(idx[kept])
        progress.advance(len(idx), images=len(idx))
    progress.stop()
    dim = model.dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
            np.concatenate(kept_all) if kept_all else np.zeros(0, np.int64))
