"""A trained model as a folder: ONNX graph, preprocessing and class names together.

Copying the folder to another machine is enough to use it: ``create_model(FOLDER)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import EmbeddingModel

MODEL_CARD = "imagespace-model.json"
METRICS = "metrics.json"  # what training measured, and the data it was trained on


def trained_on(model_spec: str | None) -> str | None:
    """The data a model folder was trained on (as given to ``train --data``), else None."""
    if not model_spec:
        return None
    try:
        metrics = json.loads((Path(model_spec) / METRICS).read_text())
    except (OSError, ValueError):
        return None  # a registry name, or a folder without training metrics
    data = metrics.get("data") if isinstance(metrics, dict) else None
    return str(data) if data else None


def load_model_dir(folder: Path, **kwargs) -> EmbeddingModel:
    folder = Path(folder).resolve()
    card = json.loads((folder / MODEL_CARD).read_text())
    onnx_path = folder / card.get("onnx", "model.onnx")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{folder} has no {onnx_path.name}: the model folder is incomplete")
    labels = card.get("labels")
    if labels is None and card.get("imagenet_labels"):
        from .labels import imagenet_labels

        labels = imagenet_labels()
    return EmbeddingModel(
        name=card.get("name", folder.name),
        model_id=card["model_id"],
        onnx_path=onnx_path,
        input_size=int(card.get("input_size", 224)),
        labels=labels,
        **kwargs,
    )


def write_model_card(folder: Path, *, name: str, model_id: str, onnx: str = "model.onnx",
                     input_size: int = 224, labels: list[str] | None = None,
                     imagenet_labels: bool = False, **extra) -> Path:
    card = {"name": name, "model_id": model_id, "onnx": onnx, "input_size": input_size,
            "labels": labels, "imagenet_labels": imagenet_labels, **extra}
    path = Path(folder) / MODEL_CARD
    path.write_text(json.dumps(card, indent=2))
    return path
