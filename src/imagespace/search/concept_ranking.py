"""Rank a collection's images by the probability the network gave a concept.

A concept (word_concepts.py) is a set of ImageNet classes, or one of the collection's own labels
(user_labels.py). An image's score is the sum of the stored probabilities of the concept's
classes among its tags (the network's top classes; a trained model's own classes): "dog"
scores a photo tagged 0.5 beagle, 0.2 basset and 0.1 bathtub at 0.7. A user label's
``classify --train`` probability is another estimate of the same thing, not more evidence to
add: the image scores the larger of the two, so a score stays a probability (at most 1). The stored tags are enough, so an existing
collection answers without being embedded again; tag_postings.py reads them as arrays.
"""

from __future__ import annotations

import numpy as np

from ..collection import Collection
from .word_concepts import Understanding, wordnet
from .tag_postings import tag_postings
from .user_labels import UserLabels

_CHUNK = 500  # bound parameters per statement, well under SQLite's limit


def concept_scores(
    collection: Collection,
    understanding: Understanding,
    *,
    k: int,
    allowed: list[int] | None = None,
    min_score: float | None = None,
    user: UserLabels | None = None,
) -> list[tuple[int, float]]:
    """(id, score) of the ``k`` images most probable for any of the concepts (non-zero, at
    least ``min_score``), best first; only ids in ``allowed`` when it is given (``--where``)."""
    # a model trained on the user's folders tags images with the folder names
    names = sorted(concept_names(understanding))
    keep_ids = None if allowed is None else set(allowed)
    scores: dict[int, float] = {}
    if names:
        ids, sums = tag_postings(collection).summed(names)
        if keep_ids is not None:
            keep = np.fromiter((int(i) in keep_ids for i in ids), dtype=bool, count=len(ids))
            ids, sums = ids[keep], sums[keep]
        scores = dict(zip(ids.tolist(), sums.tolist()))
    if user is not None:
        for con in understanding.concepts:
            if con.how != "user":
                continue
            by_path = dict(user.paths_for(con.name))
            paths = list(by_path)
            for start in range(0, len(paths), _CHUNK):
                for i, path in collection.ids_at_paths(paths[start : start + _CHUNK]):
                    if keep_ids is None or i in keep_ids:
                        scores[i] = max(scores.get(i, 0.0), by_path[path])
    ids = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
    sums = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    keep = (sums > 0) if min_score is None else (sums > 0) & (sums >= min_score)
    ids, sums = ids[keep], sums[keep]
    if len(ids) > k:  # only the best k are sorted: a general word can match most of a large collection
        top = np.argpartition(-sums, k - 1)[:k]
        ids, sums = ids[top], sums[top]
    order = np.lexsort((ids, -sums))
    return [(int(ids[j]), float(sums[j])) for j in order]


def concept_names(understanding: Understanding) -> set[str]:
    """The tag names (lower case) whose probabilities make up the concepts' score."""
    net = wordnet()
    return ({net.labels[c].lower() for con in understanding.concepts for c in con.classes}
            | {con.name.lower() for con in understanding.concepts if con.how == "user"})


def is_weak(score: float, tags: list[tuple[str, float]], names: set[str]) -> bool:
    """A word result is weak when the network gave the concept nothing, or finds one other
    class more probable in the image than the whole concept."""
    other = max((p for t, p in tags if t.lower() not in names), default=0.0)
    return score <= 0 or score < other


def concept_classes(understanding: Understanding) -> list[int]:
    """The ImageNet classes the concepts stand for, sorted."""
    return sorted({c for con in understanding.concepts for c in con.classes})
