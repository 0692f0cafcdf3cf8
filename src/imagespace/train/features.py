"""Frozen pretrained features, computed once per image and view and cached on disk.

Heads on frozen features train in seconds because the CNN, the expensive part, runs once
per image (in ONNX Runtime, the fast engine here) instead of once per epoch. A cache file
is reused only for the same items, model and views; it is written every few chunks, so a
killed run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..models.base import EmbeddingModel
from .augment import AugmentConfig, augment_batch, hflip
from .data import ImageSet, decode_all
from .progress import TrainProgress

CHUNK = 128


def extract_features(ds: ImageSet, model: EmbeddingModel, cache_file: Path, *, views: int = 2,
                     augment: AugmentConfig | None = None, seed: int = 0,
                     progress: TrainProgress | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(features (m, views, dim) float32 L2-normalised, kept item indices, failures).

    View 0 is the image as indexing sees it, view 1 its mirror image, views 2+ random
    augmentations (``augment``) drawn from ``seed``.
    """
    key = _cache_key(ds.items, model.model_id, views, augment, seed)
    state = _load(cache_file, key)
    n = len(ds)
    feats = state["features"] if state else np.zeros((n, views, model.dim), dtype=np.float32)
    ok = state["ok"] if state else np.zeros(n, dtype=bool)
    done = int(state["done"]) if state else 0
    failures: list[dict] = json.loads(str(state["failures"])) if state else []
    if done < n and progress:
        progress.start("features", total=n)
        progress.advance(done)
    rng_root = np.random.SeedSequence(seed)
    for chunk_no, start in enumerate(range(0, n, CHUNK)):
        if start < done:
            continue
        idx = np.arange(start, min(start + CHUNK, n))
        pixels, kept, failed = decode_all(ds.subset(idx), model.input_size)
        failures.extend(failed)
        if len(kept):
            rng = np.random.default_rng(rng_root.spawn(chunk_no + 1)[-1])
            for v in range(views):
                if v == 0:
                    batch = pixels
                elif v == 1:
                    batch = np.stack([hflip(p) for p in pixels])
                else:
                    batch = augment_batch(pixels, model.input_size, rng, augment)
                feats[idx[kept], v] = model.embed(batch).vectors
            ok[idx[kept]] = True
        done = int(idx[-1]) + 1
        if progress:
            progress.advance(len(idx), images=len(idx) * views)
        if chunk_no % 8 == 7 or done == n:
            _save(cache_file, key, feats, ok, done, failures)
    if progress:
        progress.stop()
    kept_all = np.flatnonzero(ok)
    return feats[kept_all], kept_all, failures


def _cache_key(items: Sequence[str], model_id: str, views: int, augment: AugmentConfig | None, seed: int) -> str:
    h = hashlib.sha256()
    for part in (model_id, str(views), repr(augment), str(seed), *items):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _load(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None  # damaged (killed while writing): compute again


def _save(path: Path, key: str, feats: np.ndarray, ok: np.ndarray, done: int, failures: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, key=key, features=feats, ok=ok, done=done, failures=json.dumps(failures))
