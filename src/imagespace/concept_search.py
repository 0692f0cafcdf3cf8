"""Rank a collection's images by the probability the network gave a concept.

A concept (concepts.py) is a set of ImageNet classes, or one of the collection's own labels
(user_labels.py). An image's score is the sum of the stored probabilities of the concept's
classes among its tags (the network's top classes), plus the classifier's probability for a
user label: "dog" scores a photo tagged 0.5 beagle, 0.2 basset and 0.1 bathtub at 0.7. The
stored tags are enough, so an existing collection answers without being embedded again.
"""

from __future__ import annotations

from .concepts import Understanding, wordnet
from .search import Hit, Searcher, compile_where
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
    names = sorted({net.labels[c].lower() for con in understanding.concepts for c in con.classes})
    sql, params = compile_where(where) if where else ("1", [])
    scores: dict[int, float] = {}
    if names:
        # Only rows whose tags name one of the classes: json_each reads the stored tags in SQLite.
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            cur = coll.conn.execute(
                # EXISTS, not a join: json_each has a "path" column of its own that the filter would hit
                f"""SELECT id FROM images WHERE model=? AND EXISTS (SELECT 1 FROM json_each(images.tags) AS t
                    WHERE lower(json_extract(t.value,'$[0]')) IN ({','.join('?' * len(chunk))})) AND ({sql})""",
                [coll.model_id, *chunk, *params],
            )
            ids = [r[0] for r in cur]
            wanted = set(names)
            for i, row in coll.rows(ids).items():
                scores[i] = sum(p for t, p in row.tags if t.lower() in wanted)
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
    ranked = sorted(((s, i) for i, s in scores.items() if s > 0 and (min_score is None or s >= min_score)), key=lambda x: (-x[0], x[1]))
    ranked = ranked[:k]
    rows = coll.rows(i for _, i in ranked)
    return [Hit(i, rows[i].path, float(s), rows[i].tags, rows[i].width, rows[i].height, rows[i].size) for s, i in ranked if i in rows]


def concept_classes(understanding: Understanding) -> list[int]:
    return sorted({c for con in understanding.concepts for c in con.classes})
