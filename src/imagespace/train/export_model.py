"""A trained network to a MODEL_DIR that ``create_model(MODEL_DIR)`` and ``index --model`` load.

The folder holds everything needed on another machine: the PyTorch weights (to train on),
the ONNX graph (uint8 NHWC "pixels" in, "features" first out), the preprocessing, the class
names, the metrics and the model card. The model_id comes from a hash of the weights, so
two different trainings never share an id and a collection never mixes their vectors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..models.model_dir import METRICS, write_model_card
from ..models.torch_nets import export_onnx

WEIGHTS = "weights.pt"
ONNX = "model.onnx"
CLASSES = "classes.json"
PREPROCESSING = "preprocessing.json"


def weights_digest(net: nn.Module) -> str:
    """sha256 over parameter names, shapes and bytes: stable across saves, unlike a .pt file."""
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def export_model_dir(out: Path, net: nn.Module, *, mode: str, input_size: int, classes: list[str],
                     preprocessing: dict, tag_labels: list[str] | None = None, imagenet_tags: bool = False,
                     architecture: dict | None = None) -> str:
    """Write weights, ONNX graph, preprocessing, classes and the card; return the model_id.

    ``net`` maps uint8 NHWC pixels to (features, logits) or features; ``tag_labels`` names
    the logits (or ``imagenet_tags`` says they are ImageNet's), so the collection's tags work.
    """
    out = Path(out)
    net = net.eval()
    digest = weights_digest(net)
    model_id = f"imagespace-train/{mode}/{digest[:16]}"
    torch.save(net.state_dict(), out / WEIGHTS)
    export_onnx(net, out / ONNX, input_size=input_size)
    (out / CLASSES).write_text(json.dumps(classes, indent=2))
    (out / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
    write_model_card(
        out,
        name=f"{out.resolve().name} ({mode})",
        model_id=model_id,
        onnx=ONNX,
        input_size=input_size,
        labels=tag_labels,
        imagenet_labels=imagenet_tags,
        mode=mode,
        weights=WEIGHTS,
        weights_sha256=digest,
        classes=CLASSES,
        preprocessing=PREPROCESSING,
        metrics=METRICS,
        architecture=architecture or {},
    )
    return model_id


def write_metrics(out: Path, metrics: dict) -> Path:
    path = Path(out) / METRICS
    path.write_text(json.dumps(metrics, indent=2))
    return path
