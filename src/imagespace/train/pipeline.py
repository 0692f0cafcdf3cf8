"""One training run from start to MODEL_DIR: data, split, mode, export, metrics.

Every mode holds out a validation split before training starts (stratified, fixed by the
seed and recorded in the run file, so --resume uses the same one), and every run ends with
the retrieval metrics of the new model against the pretrained one on that split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from ..models import create_model
from ..models.base import EmbeddingModel
from ..models.torch_nets import build_embedding_net
from ..models.networks import NETWORKS
from . import adapter as adapter_mod
from . import pixels as pixels_mod
from . import ray_engine
from . import selfsup as selfsup_mod
from .augment import AugmentConfig
from .data import DataError, ImageSet, check_supervised, decode_all, open_image_set, split_validation
from .export_model import export_model_dir, write_metrics
from .features import extract_features
from .metrics import retrieval_metrics, split_metrics, view_retrieval
from .progress import TrainProgress
from .runspec import ENGINES, TrainConfig, Trained
from .runspec import failure_hint as _failure_hint
from .runspec import preprocessing as _preprocessing
from .runspec import require_trainable as _require_trainable
from .trainer import FolderCheckpoints, fit
from .workdir import (RunError, load_checkpoint, load_run_settings, prepare_out_dir, save_checkpoint,
                      save_run_settings)

MODES = ("adapter", "finetune", "self-supervised", "scratch")
# Comparing with the pretrained model costs one pass of it over the validation images;
# above this many, a fixed random subset stands for the split (both models see the same).
MAX_COMPARE = 2000
CACHE = "cache"

# What a resumed run may change: how long it goes on and where, not what it learns from.
# (The number of Ray workers may change: the global batch, and so the result, stays the same.)
_RESUMABLE_OVERRIDES = ("epochs", "max_minutes", "patience", "max_steps", "checkpoint_every", "address", "workers",
                        "worker_cpus", "max_failures")


def run_training(config: TrainConfig, progress: TrainProgress | None = None) -> dict:
    """Train as ``config`` says; returns {"model": MODEL_DIR, "metrics": {...}}."""
    progress = progress or TrainProgress(False)
    if config.mode not in MODES:
        raise DataError(f"unknown mode {config.mode!r}: use one of {', '.join(MODES)}")
    if config.engine not in ENGINES:
        raise DataError(f"unknown engine {config.engine!r}: use one of {', '.join(ENGINES)}")
    if config.engine == "ray" and config.mode not in pixels_mod.PIXEL_MODES:
        raise DataError(f"--engine ray trains the CNN itself: use it with --mode {' or '.join(pixels_mod.PIXEL_MODES)} "
                        f"(--mode {config.mode} trains a small head on cached features, which one machine does fast)")
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


def _pixels(config: TrainConfig, ds: ImageSet, train_idx, val_idx, out: Path, progress: TrainProgress) -> Trained:
    """finetune and scratch: the CNN itself trained on streamed, augmented images."""
    recipe = pixels_mod.recipe_for(config, len(ds.classes), len(train_idx))
    if config.engine == "ray":
        return ray_engine.train_on_ray(config, recipe, ds, train_idx, val_idx, out, progress)
    check = pixels_mod.decode_check_set(ds, train_idx, val_idx, recipe, progress)
    parts = pixels_mod.build_parts(recipe)
    parts.view.to(_device())
    parts.loss.to(_device())
    source = pixels_mod.train_source(ds, train_idx, recipe)
    result = fit(parts.view, parts.loss, source, evaluate=pixels_mod.make_evaluate(parts.view, check),
                 settings=recipe.settings, param_groups=parts.param_groups,
                 checkpoints=FolderCheckpoints(out, config.resume), progress=progress)
    source.close()
    parts.view.cpu()
    return pixels_mod.finish(recipe, parts, ds, train_idx, result, check.failures + source.failures)


_MODES = {"adapter": _adapter, "finetune": _pixels, "self-supervised": _selfsup, "scratch": _pixels}


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
    saved.resume, saved.overwrite, saved.compare = True, False, given.compare  # engine: as the run began
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


def _head_state(out: Path, resume: bool, progress: TrainProgress):
    if not resume:
        return None
    ckpt = load_checkpoint(out)
    state = ckpt.get("head_state") if ckpt else None
    if state is not None:
        progress.log(f"resuming after epoch {state.epoch}")
    return state


def _device() -> torch.device:
    # Training runs where a GPU is (with mixed precision, see trainer.fit); export on the CPU.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights(arch: str):
    return NETWORKS[arch].weights_path()


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
