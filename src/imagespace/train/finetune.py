"""Fine-tuning the whole pretrained CNN on labelled images (--mode finetune).

The network is the indexing network itself (EfficientNet-Lite0 + GeM), trained end to end
with a metric loss on augmented views, with BatchNorm statistics kept from ImageNet
(CPU batches are too small to re-estimate them). The exported graph outputs the GeM
features and, as tags, the similarity to each of the user's classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.torch_nets import EmbeddingNet, build_backbone
from ..models.networks import BASE_ARCH, network
from .augment import AugmentConfig, augment_batch
from .losses import make_loss
from .metrics import retrieval_metrics, split_metrics

TAG_SCALE = 16.0  # cosine to class proxies -> logits whose softmax reads as a probability


class EmbedTrain(nn.Module):
    """Training view of an embedding network: uint8 pixels -> L2-normalised features."""

    freeze_batchnorm = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.net(pixels)
        return F.normalize(out[0] if isinstance(out, tuple) else out, dim=-1)


class WithClassTags(nn.Module):
    """Export view: (features, class logits) so tags name the user's own classes."""

    def __init__(self, net: nn.Module, proxies: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("proxies", F.normalize(proxies.detach().clone(), dim=1))

    def forward(self, pixels: torch.Tensor):
        out = self.net(pixels)
        features = out[0] if isinstance(out, tuple) else out
        return features, TAG_SCALE * F.normalize(features, dim=-1) @ self.proxies.T


@dataclass
class FinetuneParts:
    net: EmbeddingNet
    train_view: EmbedTrain
    loss: nn.Module
    param_groups: list[dict]


def build_finetune(num_classes: int, loss: str, lr: float, arch: str = BASE_ARCH) -> FinetuneParts:
    net = EmbeddingNet(build_backbone(network(arch).weights_path(), arch=arch))
    # The ImageNet classifier is not trained here (its logits are not exported): freeze it
    # so the optimizer does not decay it for nothing.
    for p in net.backbone._fc.parameters():
        p.requires_grad_(False)
    loss_fn = make_loss(loss, num_classes, 1280)
    groups = [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr},
              {"params": list(loss_fn.parameters()), "lr": lr * 100, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return FinetuneParts(net, EmbedTrain(net), loss_fn, groups)


def make_augment(size: int, config: AugmentConfig | None = None):
    cfg = config or AugmentConfig.light()

    def run(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return augment_batch(batch, size, rng, cfg)

    return run


def embed_pixels(train_view: nn.Module, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    device = next(train_view.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            out.append(train_view(torch.from_numpy(pixels[start:start + batch_size]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def make_evaluate(train_view: nn.Module, val_pixels: np.ndarray, val_labels: np.ndarray,
                  train_pixels: np.ndarray | None = None, train_labels: np.ndarray | None = None):
    def run() -> dict:
        val = embed_pixels(train_view, val_pixels)
        m = retrieval_metrics(val, val_labels)
        if m["queries"] == 0 and train_pixels is not None:
            # One image per class held out: search the training images instead (tiny data).
            m = split_metrics(val, val_labels, embed_pixels(train_view, train_pixels[:2000]), train_labels[:2000])
        return {"precision_at_1": m["precision_at_1"], "map": m["map"]}

    return run


def class_proxies(loss: nn.Module, vectors: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """The loss's learnt proxies, or class means where the loss learns none (supcon)."""
    proxies = getattr(loss, "proxies", None)
    if isinstance(proxies, nn.Parameter):
        return proxies.detach()
    means = np.stack([vectors[labels == c].mean(0) if (labels == c).any() else np.zeros(vectors.shape[1])
                      for c in range(num_classes)])
    return torch.from_numpy(means.astype(np.float32))
