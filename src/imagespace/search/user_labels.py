"""The user's own words for a collection: the labels ``classify --train`` gave its images,
and the class names of a model trained with ``train`` whose tags are those classes.

Read from the labels ``classify`` saves in the collection (the same rows ``--where "label =
NAME"`` uses), so that search by words understands the folder names the user trained with
("sunflower", "grandma's cat") and ranks the images by the probability the classifier gave
that label. Images indexed after the last ``classify --train`` simply carry no label until it
is run again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..collection import Collection
from ..models.model_dir import MODEL_CARD

UNKNOWN = "unknown"  # what classify answers when no class fits: not a word of the user's


@dataclass(frozen=True)
class UserLabels:
    classes: list[str]
    by_path: dict[str, tuple[str, float]]  # path -> (label, probability)

    def paths_for(self, label: str) -> list[tuple[str, float]]:
        return [(p, s) for p, (lab, s) in self.by_path.items() if lab == label]


def load_user_labels(collection: Collection) -> UserLabels | None:
    """The labels the last ``classify`` run saved in ``collection``; None if it has none."""
    by_path = {p: v for p, v in collection.saved_labels().items() if v[0] != UNKNOWN}
    if not by_path:
        return None
    return UserLabels(sorted({label for label, _ in by_path.values()}), by_path)


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
