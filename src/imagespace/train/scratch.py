"""A compact CNN trained from nothing (--mode scratch): the whole path, pixels to vectors.

A ResNet-9-style network narrowed for a 2-core CPU: four conv stages with two residual
blocks, global average pooling to the embedding, and a cosine classifier on top during
training (cross-entropy on scaled cosines makes the pooled vector itself good for cosine
retrieval, which is what the collection does with it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import hflip

COSINE_SCALE = 16.0


def _conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c), _conv_bn(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CompactCNN(nn.Module):
    """uint8 NHWC pixels in; (features (n, 8*width), class logits) out."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.width = width
        self.features = nn.Sequential(
            _conv_bn(3, w),
            _conv_bn(w, 2 * w, pool=True),
            _Residual(2 * w),
            _conv_bn(2 * w, 4 * w, pool=True),
            _conv_bn(4 * w, 8 * w, pool=True),
            _Residual(8 * w),
        )
        self.classes = nn.Parameter(torch.randn(num_classes, 8 * w) * 0.01)

    @property
    def dim(self) -> int:
        return 8 * self.width

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        # Scaling lives in the graph: callers hand over decoded uint8 pixels as they are.
        x = pixels.permute(0, 3, 1, 2).float() * (1 / 127.5) - 1.0
        return self.features(x).mean(dim=(2, 3))

    def forward(self, pixels: torch.Tensor):
        f = self.embed(pixels)
        return f, COSINE_SCALE * F.normalize(f, dim=-1) @ F.normalize(self.classes, dim=-1).T


class ScratchTrain(nn.Module):
    """Training view: pixels -> normalised features; the loss holds the classifier."""

    def __init__(self, net: CompactCNN):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.embed(pixels), dim=-1)


class CosineSoftmaxLoss(nn.Module):
    """Cross-entropy over scaled cosines to the network's class vectors, label smoothing 0.1."""

    def __init__(self, net: CompactCNN, smoothing: float = 0.1):
        super().__init__()
        self._net = [net]  # a plain list: the classifier is saved with the net, not twice
        self.smoothing = smoothing

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self._net[0].classes, dim=-1)
        return F.cross_entropy(COSINE_SCALE * z @ w.T, labels, label_smoothing=self.smoothing)


def shift_flip_augment(pad: int = 4):
    """The classic small-image recipe: random translation by up to ``pad`` px (reflected
    borders) and a horizontal flip, batched in NumPy since per-image Pillow calls would
    cost more than the network on 32 px images."""

    def run(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, h, w, _ = batch.shape
        padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        out = np.empty_like(batch)
        dx = rng.integers(0, 2 * pad + 1, n)
        dy = rng.integers(0, 2 * pad + 1, n)
        flip = rng.random(n) < 0.5
        for i in range(n):
            crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
            out[i] = hflip(crop) if flip[i] else crop
        return out

    return run
