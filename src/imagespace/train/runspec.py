"""What a training run is asked for (:class:`TrainConfig`) and what a mode hands back for
export (:class:`Trained`), shared by the local pipeline and the Ray engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..models import DEFAULT_MODEL
from ..models.networks import NETWORKS
from . import adapter as adapter_mod
from .data import DataError

ENGINES = ("local", "ray")


@dataclass
class TrainConfig:
    data: str
    out: str
    mode: str = "adapter"
    epochs: int | None = None  # default per mode
    batch_size: int | None = None  # the global batch: split over the workers of a Ray run
    lr: float | None = None  # default: the mode's, scaled linearly with the global batch
    loss: str | None = None  # adapter/finetune: supcon | proxy-anchor | arcface
    head: str = adapter_mod.DEFAULT_HEAD
    dim: int | None = None  # adapter: 128; self-supervised: 512
    image_size: int | None = None  # finetune: 224; scratch: 32
    width: int = 32  # scratch: channels of the first stage
    views: int | None = None  # cached views per image: adapter and self-supervised 6
    val_fraction: float = 0.2
    seed: int = 0
    patience: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None
    checkpoint_every: int | None = None  # finetune/scratch: steps between checkpoints inside an epoch
    compare: bool = True  # measure the pretrained model on the validation split too
    resume: bool = False
    overwrite: bool = False
    engine: str = "local"  # or "ray": Ray Train, DistributedDataParallel over ``workers``
    address: str | None = None  # ray: the cluster (None: a local Ray)
    workers: int | None = None  # ray: data-parallel workers (default 2)
    worker_cpus: float | None = None  # ray: CPUs per worker (default 1)
    max_failures: int = 3  # ray: worker-group restarts from the last checkpoint before giving up
    base_model: str | None = None  # the pretrained network to start from (default: DEFAULT_MODEL)

    @property
    def base(self) -> str:
        name = self.base_model or DEFAULT_MODEL
        if name not in NETWORKS:
            raise DataError(f"training starts from a pretrained network: use one of {', '.join(NETWORKS)}, "
                            f"not {name!r}")
        return name


@dataclass
class Trained:
    """What a mode hands back for export and evaluation."""

    net: nn.Module  # uint8 NHWC pixels -> features[, logits]
    input_size: int
    preprocessing: dict
    architecture: dict
    tag_labels: list[str] | None = None
    imagenet_tags: bool = False
    # Validation vectors already at hand (adapter: from cached features); else the
    # exported ONNX model embeds the validation images.
    val_new: np.ndarray | None = None
    val_pretrained: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    train_vectors: dict | None = None  # {"new", "pretrained", "labels"}: for tiny validation splits
    info: dict = field(default_factory=dict)


def preprocessing(size: int, scaling: str) -> dict:
    return {
        "input": "pixels: uint8 RGB, NHWC, batch of any size",
        "resize": f"whole image to {size}x{size}, bilinear, no crop (imagespace.images.decode)",
        "orientation": "EXIF orientation applied; alpha composited on white",
        "scaling": f"inside the graph: {scaling}",
        "outputs": "features (L2-normalise for cosine similarity), then logits for tags when present",
    }


def require_trainable(y_train: np.ndarray, y_val: np.ndarray, failures: list[dict]) -> None:
    if len(y_train) == 0 or len(y_val) == 0 or (y_train >= 0).any() and len(np.unique(y_train)) < 2:
        raise DataError("after leaving out unreadable images, there is not enough to train on: need at least "
                        "2 classes with at least 2 readable images each" + failure_hint(failures))


def failure_hint(failures: list[dict]) -> str:
    if not failures:
        return ""
    first = "; ".join(f"{f['path']}: {f['error']}" for f in failures[:3])
    return f" ({len(failures)} images could not be read, e.g. {first})"
