"""Metric-learning losses: what "similar" means is learnt from labels or from two views.

All take L2-normalised embeddings (n, d). The class-proxy losses are modules because they
learn one vector per class; their proxies double as a classifier for the exported tags.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("supcon", "proxy-anchor", "arcface")


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020): pull same-label rows together.

    Rows without another row of their label in the batch contribute nothing.
    """
    n = z.shape[0]
    sim = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has]
    return -mean_log_prob_pos.mean()


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent: each view must find its other view among all 2n - 1 others."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    labels = torch.arange(n, device=z.device).repeat(2)
    return supcon_loss(z, labels, temperature)


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor (Kim et al. 2020): one learnt proxy per class; converges in few epochs."""

    def __init__(self, num_classes: int, dim: int, margin: float = 0.1, alpha: float = 32.0):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) * math.sqrt(1.0 / dim))
        self.margin = margin
        self.alpha = alpha

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ F.normalize(self.proxies, dim=1).T

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.logits(z)  # (n, C)
        one_hot = F.one_hot(labels, cos.shape[1]).bool()
        pos_exp = torch.exp(-self.alpha * (cos - self.margin)).masked_fill(~one_hot, 0.0)
        neg_exp = torch.exp(self.alpha * (cos + self.margin)).masked_fill(one_hot, 0.0)
        with_pos = one_hot.any(0)
        pos_term = torch.log1p(pos_exp.sum(0))[with_pos].sum() / with_pos.sum().clamp(min=1)
        neg_term = torch.log1p(neg_exp.sum(0)).sum() / cos.shape[1]
        return pos_term + neg_term


class ArcFaceLoss(nn.Module):
    """ArcFace (Deng et al. 2019): softmax over class centres with an additive angle margin."""

    def __init__(self, num_classes: int, dim: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) * math.sqrt(1.0 / dim))
        self.margin = margin
        self.scale = scale

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ F.normalize(self.proxies, dim=1).T

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.logits(z).clamp(-1 + 1e-6, 1 - 1e-6)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + self.margin)
        cos = cos.scatter(1, labels[:, None], target)
        return F.cross_entropy(self.scale * cos, labels)


class SupConLoss(nn.Module):
    """:func:`supcon_loss` with the same module shape as the proxy losses."""

    def __init__(self, num_classes: int, dim: int, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        # Class centres are not learnt by the loss; they are set after training (for tags).
        self.register_buffer("proxies", torch.zeros(num_classes, dim))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ F.normalize(self.proxies, dim=1).T

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(z, labels, self.temperature)


def make_loss(name: str, num_classes: int, dim: int, temperature: float = 0.1) -> nn.Module:
    if name == "supcon":
        return SupConLoss(num_classes, dim, temperature)
    if name == "proxy-anchor":
        return ProxyAnchorLoss(num_classes, dim)
    if name == "arcface":
        return ArcFaceLoss(num_classes, dim)
    raise ValueError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
