"""Exact nearest neighbours over a given set of vectors (a filtered subset, DBA vectors...)."""

from __future__ import annotations

import numpy as np


def exact_search(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` with the highest inner product with ``query``.

    Args:
        query: (dim,) float32, L2-normalised for cosine similarities.
        ids: (n,) the id of each row of ``vectors``.
        vectors: (n, dim) float32.
        k: how many to return (fewer when ``n`` is smaller).

    Returns:
        (ids, scores), best first.

    Example:
        >>> exact_search(np.array([1.0, 0.0]), np.array([7, 8]), np.array([[0.0, 1.0], [1.0, 0.0]]), 1)
        (array([8]), array([1.]))
    """
    if not len(ids):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = vectors @ query
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return ids[top], scores[top]
