"""The user's own words for a collection: the labels ``classify --train`` gave its images,
and the class names of a model trained with ``train`` whose tags are those classes.

Kept in a small JSON file beside the collection (``user-labels.json``), so that search by
words understands the folder names the user trained with ("sunflower", "grandma's cat") and
ranks the images by the probability the classifier gave that label. Images indexed after the
last ``classify --train`` simply carry no label until it is run again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..models.model_dir import MODEL_CARD

FILE = "user-labels.json"


@dataclass(frozen=True)
class UserLabels:
    classes: list[str]
    by_path: dict[str, tuple[str, float]]  # path -> (label, probability)

    def paths_for(self, label: str) -> list[tuple[str, float]]:
        return [(p, s) for p, (lab, s) in self.by_path.items() if lab == label]


def save_user_labels(root: str | os.PathLike[str], classes: list[str], predictions) -> Path:
    """Write ``predictions`` (objects with path, label, score) as the collection's labels."""
    path = Path(root) / FILE
    data = {"classes": list(classes), "labels": {p.path: [p.label, round(float(p.score), 4)] for p in predictions}}
    write_text_atomic(path, json.dumps(data))
    return path


def load_user_labels(root: str | os.PathLike[str]) -> UserLabels | None:
    path = Path(root) / FILE
    try:
        data = json.loads(path.read_text())
        return UserLabels(list(data["classes"]), {p: (str(v[0]), float(v[1])) for p, v in data["labels"].items()})
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # absent or unreadable: the collection simply has no words of its own


def model_labels(model_spec: str | None) -> list[str]:
    """The class names a trained model folder tags images with (not ImageNet's), else []."""
    if not model_spec:
        return []
    try:
        card = json.loads((Path(model_spec) / MODEL_CARD).read_text())
    except (OSError, ValueError):
        return []  # a registry name ("efficientnet-lite0"), not a folder
    labels = card.get("labels") if isinstance(card, dict) else None
    if not isinstance(labels, list) or card.get("imagenet_labels"):
        return []
    return [str(x) for x in labels]
