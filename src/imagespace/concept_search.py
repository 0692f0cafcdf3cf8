"""Rank a collection's images by the probability the network gave a concept.

A concept (concepts.py) is a set of ImageNet classes, or one of the collection's own labels
(user_labels.py). An image's score is the sum of the stored probabilities of the concept's
classes among its tags (the network's top classes; a trained model's own classes), plus
the ``classify --train`` probability for a user label: "dog" scores a photo tagged 0.5
beagle, 0.2 basset and 0.1 bathtub at 0.7. The stored tags are enough, so an existing
collection answers without being embedded again; tag_postings.py reads them as arrays.
"""

from __future__ import annotations

import numpy as np

from .concepts import Understanding, wordnet
from .search import Hit, Searcher, compile_where
from .tag_postings import tag_postings
from .user_labels import UserLabels

_CHUNK = 500  # bound parameters per statement, well under SQLite's limit


def search_concepts(
    searcher: Searcher,
    understanding: Understanding,
    *,
    k: int,
    where: str | None = None,
    min_score: float | None = None,
    user: UserLabels | None = None,
) -> list[Hit]:
    """Images with a non-zero probability for any of the concepts, most probable first."""
    coll = searcher.collection
    net = wordnet()
    names = sorted({net.labels[c].lower() for con in understanding.concepts for c in con.classes}
                   # a model trained on the user's folders tags images with the folder names
                   | {con.name.lower() for con in understanding.concepts if con.how == "user"})
    sql, params = compile_where(where) if where else ("1", [])
    scores: dict[int, float] = {}
    if names:
        ids, sums = tag_postings(coll).summed(names)
        if where:
            allowed = {r[0] for r in coll.conn.execute(f"SELECT id FROM images WHERE model=? AND ({sql})", [coll.model_id, *params])}
            keep = np.fromiter((int(i) in allowed for i in ids), dtype=bool, count=len(ids))
            ids, sums = ids[keep], sums[keep]
        scores = dict(zip(ids.tolist(), sums.tolist()))
    if user is not None:
        for con in understanding.concepts:
            if con.how != "user":
                continue
            by_path = dict(user.paths_for(con.name))
            paths = list(by_path)
            for start in range(0, len(paths), _CHUNK):
                chunk = paths[start : start + _CHUNK]
                cur = coll.conn.execute(
                    f"SELECT id, path FROM images WHERE model=? AND path IN ({','.join('?' * len(chunk))}) AND ({sql})",
                    [coll.model_id, *chunk, *params],
                )
                for i, path in cur:
                    scores[i] = scores.get(i, 0.0) + by_path[path]
    ids = np.fromiter(scores.keys(), dtype=np.int64, count=len(scores))
    sums = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    keep = (sums > 0) if min_score is None else (sums > 0) & (sums >= min_score)
    ids, sums = ids[keep], sums[keep]
    if len(ids) > k:  # only the best k are sorted: a general word can match most of a large collection
        top = np.argpartition(-sums, k - 1)[:k]
        ids, sums = ids[top], sums[top]
    order = np.lexsort((ids, -sums))
    ranked = [(float(sums[j]), int(ids[j])) for j in order]
    rows = coll.rows(i for _, i in ranked)
    return [Hit(i, rows[i].path, float(s), rows[i].tags, rows[i].width, rows[i].height, rows[i].size) for s, i in ranked if i in rows]


def concept_classes(understanding: Understanding) -> list[int]:
    return sorted({c for con in understanding.concepts for c in con.classes})
