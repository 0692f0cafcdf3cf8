"""Rank a collection's images by the probability the network gave a concept.

A concept (concepts.py) is a set of ImageNet classes, or one of the collection's own labels
(user_labels.py). An image's score is the sum of the stored probabilities of the concept's
classes among its tags (the network's top classes), plus the classifier's probability for a
user label: "dog" scores a photo tagged 0.5 beagle, 0.2 basset and 0.1 bathtub at 0.7. The
stored tags are enough, so an existing collection answers without being embedded again.
"""

from __future__ import annotations

from .collection import Collection
from .concepts import Understanding, wordnet
from .user_labels import UserLabels

_CHUNK = 500  # bound parameters per statement, well under SQLite's limit


def concept_scores(
    collection: Collection,
    understanding: Understanding,
    *,
    allowed: list[int] | None = None,
    user: UserLabels | None = None,
) -> list[tuple[int, float]]:
    """(id, score) of the images with a non-zero probability for any of the concepts, most
    probable first; only ids in ``allowed`` when it is given (a ``--where`` filter)."""
    net = wordnet()
    names = sorted({net.labels[c].lower() for con in understanding.concepts for c in con.classes})
    keep = None if allowed is None else set(allowed)
    scores: dict[int, float] = {}
    if names:
        # Only rows whose tags name one of the classes (the stored tags, read in SQLite).
        wanted = set(names)
        for start in range(0, len(names), _CHUNK):
            ids = collection.ids_tagged(names[start : start + _CHUNK])
            if keep is not None:
                ids = [i for i in ids if i in keep]
            for i, row in collection.rows(ids).items():
                scores[i] = sum(p for t, p in row.tags if t.lower() in wanted)
    if user is not None:
        for con in understanding.concepts:
            if con.how != "user":
                continue
            by_path = dict(user.paths_for(con.name))
            paths = list(by_path)
            for start in range(0, len(paths), _CHUNK):
                for i, path in collection.ids_at_paths(paths[start : start + _CHUNK]):
                    if keep is None or i in keep:
                        scores[i] = scores.get(i, 0.0) + by_path[path]
    return [(i, s) for s, i in sorted(((s, i) for i, s in scores.items() if s > 0), key=lambda x: (-x[0], x[1]))]


def concept_classes(understanding: Understanding) -> list[int]:
    """The ImageNet classes the concepts stand for, sorted."""
    return sorted({c for con in understanding.concepts for c in con.classes})
