"""The PyTorch side of the models: networks, the embedding head, and ONNX export.

Imported only to export or to train; queries and indexing run the ONNX graph.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .networks import BASE_ARCH, NETWORKS

log = logging.getLogger(__name__)

FEATURE_DIM = 1280
# GeM pooling with p=3 beat average pooling on flowers12 (test against train: precision@1
# 0.971 vs 0.963, mAP 0.722 vs 0.703), and the TF-style (x-127)/128 input scaling that
# these weights were trained with beat ImageNet mean/std (0.963 vs 0.933).
GEM_P = 3.0
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0


def build_backbone(weights_path: Path | None = None, num_classes: int = 1000, arch: str = BASE_ARCH):
    """The PyTorch network ``arch`` (an EfficientNet-Lite), with ImageNet weights when
    ``weights_path`` is given."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(arch, num_classes=num_classes)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or (missing and num_classes == 1000):
            raise ValueError(f"weights do not fit {arch}: missing {missing}, unexpected {unexpected}")
    return net.eval()


def build_embedding_net(weights_path: Path | None = None, arch: str = BASE_ARCH, gem_p: float = GEM_P) -> nn.Module:
    return EmbeddingNet(build_backbone(weights_path, arch=arch), gem_p=gem_p).eval()


class EmbeddingNet(nn.Module):
    """uint8 NHWC pixels in; GeM-pooled features and ImageNet logits out.

    Scaling and layout live inside the graph, so callers hand over decoded pixels as
    they are and no per-image arithmetic happens in Python.
    """

    def __init__(self, backbone: nn.Module, gem_p: float = GEM_P):
        super().__init__()
        self.backbone = backbone
        self.gem_p = gem_p

    def forward(self, pixels: torch.Tensor):
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - PIXEL_MEAN) / PIXEL_SCALE
        fmap = self.backbone.extract_features(x)
        pooled = fmap.clamp(min=1e-6).pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)
        logits = self.backbone._fc(fmap.mean(dim=(2, 3)))
        return pooled, logits


def export_onnx(net, path: Path, input_size: int = NETWORKS[BASE_ARCH].input_size, min_cosine: float = 0.9999) -> Path:
    """Export ``net`` (uint8 NHWC in, features[, logits] out) to ONNX and check it.

    An example batch of 1 can freeze the batch size into the graph, so the export uses 2
    and a dynamic batch axis; the ONNX output is then compared with PyTorch's.
    """
    log.info("exporting %s to ONNX (once)...", path.name)
    net = net.eval()
    example = torch.randint(0, 256, (2, input_size, input_size, 3), dtype=torch.uint8)
    with torch.no_grad():
        reference = net(example)
    names = ["features", "logits"] if isinstance(reference, tuple) else ["features"]
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on constant folding
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            input_names=["pixels"],
            output_names=names,
            dynamic_axes={"pixels": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=17,
            dynamo=False,
        )
    from .base import make_session

    check = torch.randint(0, 256, (3, input_size, input_size, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected = net(check)
    expected = expected[0] if isinstance(expected, tuple) else expected
    got = make_session(tmp, ["CPUExecutionProvider"], None).run(None, {"pixels": check.numpy()})[0]
    a = expected.numpy()
    cos = (a * got).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    if cos.min() < min_cosine:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export disagrees with PyTorch (cosine {cos.min():.6f})")
    os.replace(tmp, path)  # atomic: a concurrent run sees either no file or a whole one
    return path
