"""More like these: liked images pull, disliked images push, results stay varied.

The query is Rocchio's: the mean of the liked vectors minus a fraction of the mean of the
disliked ones. Candidates come from the ANN index; each is scored by its mean cosine to the
liked images minus its strongest cosine to a disliked one, then chosen greedily with
maximal marginal relevance, so that near-copies of one picture do not fill the list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..collection import Collection
from ..index import VectorSearch, open_index
from ..search.rerank import dba_space
from ..search.chance import chance_line
from ..search.results import Hit, QueryError
from ..search.score_meaning import ScoreMeaning, cosine_meaning

# How hard a disliked image pushes (Rocchio's gamma over beta).
UNLIKE_WEIGHT = 0.5
# Maximal marginal relevance: weight of relevance against novelty.
DIVERSITY_LAMBDA = 0.8
# A candidate this close (cosine) to one already chosen is the same picture: skipped.
SAME_PICTURE = 0.97
# Candidates fetched per wanted result, for the re-scoring and diversity steps to choose from.
_FETCH_FACTOR = 5


def recommend(
    collection: Collection,
    like: Sequence[int],
    unlike: Sequence[int] = (),
    k: int = 10,
    *,
    diversity: float = 1 - DIVERSITY_LAMBDA,
    dba: bool = False,
    index: VectorSearch | None = None,
) -> list[Hit]:
    """Up to ``k`` images like the ``like`` row ids and unlike the ``unlike`` ones, inputs excluded.

    With ``dba`` the vectors are the collection's DBA vectors (see ``rerank``), which pull
    images of one kind together; scores are then cosines between those.
    """
    like = list(dict.fromkeys(int(i) for i in like))
    unlike = [int(i) for i in dict.fromkeys(unlike) if int(i) not in like]
    if not like:
        raise QueryError("recommend needs at least one liked image")
    index = index or open_index(collection)
    if dba:
        space = dba_space(collection, index=index)

        def vectors_of(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            pos = np.searchsorted(space.ids, np.asarray(sorted(ids), dtype=np.int64))
            pos = pos[pos < len(space.ids)]
            pos = pos[np.isin(space.ids[pos], ids)]
            return space.ids[pos], space.vectors[pos]

        def nearest(q: np.ndarray, n: int) -> np.ndarray:
            return space.search(q, n)[0]
    else:
        vectors_of = collection.vectors

        def nearest(q: np.ndarray, n: int) -> np.ndarray:
            return index.search(q[None], n)[0][0]

    liked_ids, liked = vectors_of(like)
    missing = sorted(set(like) - set(liked_ids.tolist()))
    if missing:
        raise QueryError(f"row ids not in the collection (or not embedded with its model): {missing[:10]}")
    disliked = vectors_of(unlike)[1] if unlike else np.zeros((0, liked.shape[1]), dtype=np.float32)
    query = liked.mean(0)
    if len(disliked):
        query = query - UNLIKE_WEIGHT * disliked.mean(0)
    norm = float(np.linalg.norm(query))
    if norm < 1e-6:
        raise QueryError("the liked and disliked images cancel out: like something else, or dislike less")
    query /= norm

    exclude = set(like) | set(unlike)
    want = k * _FETCH_FACTOR + len(exclude)
    cand = [int(i) for i in nearest(query, want) if i >= 0 and int(i) not in exclude]
    if not cand:
        return []
    cids, cvecs = vectors_of(cand)
    relevance = (cvecs @ liked.T).mean(1)
    if len(disliked):
        relevance = relevance - UNLIKE_WEIGHT * np.maximum((cvecs @ disliked.T).max(1), 0.0)
    # A copy of an input (the same photo saved twice) is the input again: never return it.
    inputs = np.concatenate([liked, disliked]) if len(disliked) else liked
    copies = (cvecs @ inputs.T).max(1) >= SAME_PICTURE
    relevance = np.where(copies, -np.inf, relevance)
    chosen = [c for c in _mmr(cvecs, relevance, k, 1.0 - diversity) if np.isfinite(relevance[c])]
    rows = collection.rows(int(cids[c]) for c in chosen)
    return [Hit.of(rows[int(cids[c])], float(relevance[c])) for c in chosen if int(cids[c]) in rows]


def _mmr(vectors: np.ndarray, relevance: np.ndarray, k: int, lam: float) -> list[int]:
    """Greedy maximal marginal relevance; exact copies of a chosen image are skipped."""
    order: list[int] = []
    remaining = np.ones(len(vectors), dtype=bool)
    max_sim = np.full(len(vectors), -1.0, dtype=np.float32)
    while len(order) < k and remaining.any():
        score = lam * relevance - (1 - lam) * np.maximum(max_sim, 0.0)
        score[~remaining] = -np.inf
        best = int(score.argmax())
        remaining[best] = False
        if order and max_sim[best] >= SAME_PICTURE:
            continue
        order.append(best)
        max_sim = np.maximum(max_sim, vectors @ vectors[best])
    return order


def recommend_meaning(collection: Collection, hits: list[Hit], *, augmented: bool = False) -> ScoreMeaning:
    """Mark ``hits`` weak below the collection's chance line, as a search by image is (their
    scores are cosines: the mean cosine to the liked images, less half the cosine to the
    nearest disliked one); returns what the scores mean."""
    line = None if augmented else chance_line(collection)
    for h in hits:
        h.weak = None if line is None else bool(h.score < line.value)
    return cosine_meaning(line, augmented=augmented)
