"""Self-supervised adaptation (--mode self-supervised): SimCLR-style, for images without labels.

Each image is seen through several augmented views (random resized crop, flip, colour
jitter, grey); a head on the frozen pretrained features learns to map two views of one
image together and views of different images apart (NT-Xent). As in the adapter, the CNN
runs once per view (cached), so 100,000 unlabelled photos cost one pass per view; the
exported graph is the pretrained backbone, GeM and the head, with ImageNet tags kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .adapter import FitState, ProjectionHead, embed_with_head
from .losses import nt_xent_loss
from .metrics import view_retrieval
from .progress import TrainProgress


@dataclass
class SelfSupSettings:
    head: str = "linear"
    dim: int = 512
    views: int = 6  # cached views per image: original, mirror, and 4 random augmentations
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    # NNCLR-style positives: with probability ``neighbour_p`` the positive of an image is a
    # view of one of its ``neighbours`` nearest images in the pretrained space instead of
    # another view of itself. Plain SimCLR (0) on a few hundred photos learnt to tell each
    # photo apart from its own species and lowered flowers12 mAP (0.71 -> 0.60);
    # neighbours, right about 9 times in 10 there, teach what "alike" means instead.
    neighbours: int = 10
    neighbour_p: float = 0.5
    seed: int = 0


def fit_selfsup_head(train_x: np.ndarray, val_x: np.ndarray, settings: SelfSupSettings, *,
                     state: FitState | None = None, on_epoch: Callable[[FitState], None] | None = None,
                     progress: TrainProgress | None = None) -> tuple[ProjectionHead, FitState]:
    """Train a head with NT-Xent between two different cached views of each image.

    Without labels there is no validation score to pick an epoch by: the last one is kept.
    """
    torch.manual_seed(settings.seed)
    head = ProjectionHead(train_x.shape[-1], settings.dim, settings.head)
    head.mean.copy_(torch.from_numpy(_unit(train_x[:, 0]).mean(0)))
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    state = state or FitState()
    if state.head is not None:
        head.load_state_dict(state.head)
        opt.load_state_dict(state.optimizer)
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)
    x = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    n, views = x.shape[0], x.shape[1]
    nbrs = torch.from_numpy(nearest_neighbours(train_x[:, 0], settings.neighbours))
    steps = max(1, -(-n // settings.batch_size))
    if progress and state.epoch < settings.epochs:
        progress.start("self-supervised", total=settings.epochs * steps)
        progress.advance(state.epoch * steps)
    while state.epoch < settings.epochs:
        head.train()
        scale = 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * state.epoch / max(settings.epochs, 1)))
        for g in opt.param_groups:
            g["lr"] = settings.lr * scale
        order = torch.randperm(n)
        loss = torch.tensor(float("nan"))
        for s in range(steps):
            b = order[s * settings.batch_size:(s + 1) * settings.batch_size]
            if len(b) < 2:
                continue
            v1 = torch.randint(0, views, (len(b),))
            v2 = (v1 + torch.randint(1, views, (len(b),))) % views  # always a different view
            partner = b.clone()
            if nbrs.shape[1]:
                swap = torch.rand(len(b)) < settings.neighbour_p
                pick = nbrs[b, torch.randint(0, nbrs.shape[1], (len(b),))]
                partner = torch.where(swap, pick, b)
            loss = nt_xent_loss(head(x[b, v1]), head(x[partner, v2]), settings.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress:
                progress.advance(1, images=2 * len(b), loss=float(loss.detach()))
        state.epoch += 1
        score = evaluate_views(head, val_x)
        state.history.append({"epoch": state.epoch, "loss": float(loss.detach()), **{f"val_{k}": v for k, v in score.items()}})
        # Without labels nothing on the validation split says which epoch groups images
        # best (twin-finding rose while flowers12 mAP fell), so the last epoch is kept.
        state.best_score, state.best_epoch = score["view_top1"], state.epoch
        state.head, state.optimizer, state.torch_rng = head.state_dict(), opt.state_dict(), torch.get_rng_state()
        if on_epoch:
            on_epoch(state)
    if progress:
        progress.stop()
    return head.eval(), state


def nearest_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k most cosine-similar other rows."""
    k = min(k, len(x) - 1)
    if k <= 0:
        return np.zeros((len(x), 0), dtype=np.int64)
    z = _unit(x.astype(np.float32))
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(z), 1024):
        sim = z[start:start + 1024] @ z.T
        sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[start:start + len(sim)] = top
    return out


def evaluate_views(head: ProjectionHead, x: np.ndarray) -> dict[str, float]:
    """Label-free: each image's plain view must find one of its augmented views (view 2+)."""
    if x.shape[1] < 3 or len(x) < 2:
        return {"view_top1": float("nan"), "view_mean_rank": float("nan")}
    with torch.no_grad():
        a = embed_with_head(head, x[:, 0])
        b = embed_with_head(head, x[:, 2])
    return view_retrieval(a, b)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
