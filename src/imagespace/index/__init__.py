"""Vector indexes over a collection's rows: one interface, two kinds, one way to open them.

Every index answers ``search(queries, k) -> (ids, cosine similarities)``, knows its
``len``, takes in rows written since it was opened with ``refresh()`` and writes itself
beside the database with ``save_if_changed()`` (:class:`VectorSearch`). The kinds:

- :mod:`.hnsw`: an in-memory graph (usearch), exact below 20,000 vectors, reduced and
  re-scored from a snapshot (:mod:`.rescore`) above 40,000;
- :mod:`.ivfpq`: compressed codes on disk (FAISS), re-ranked exactly, for collections
  beyond memory;
- :mod:`.shards`: several collections searched as one (same interface, keys pack the shard).

Indexes are derived files: opening one replays the rows changed since it was saved, and a
missing or damaged file is rebuilt from the rows.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..collection import Collection
from .exact import exact_search
from .hnsw import EXACT_LIMIT, IndexSettings, VectorIndex
from .ivfpq import LARGE_LIMIT, LARGE_META, LargeIndex

INDEX_KINDS = ("auto", "hnsw", "ivfpq")


class VectorSearch(Protocol):
    """What every index offers; searches, analyses and the server use nothing else."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine similarities), each (n_queries, <=k), best first; -1 pads missing."""

    def __len__(self) -> int:
        """How many vectors the index answers for."""

    def refresh(self) -> bool:
        """Take in rows written or removed since opening; False when it must be opened again."""

    def save_if_changed(self) -> None:
        """Write the index beside the database if it changed since it was read."""


def open_index(collection: Collection, kind: str = "auto") -> VectorSearch:
    """The index to search ``collection`` with, up to date with its rows.

    Args:
        collection: an indexed collection.
        kind: ``hnsw`` (:class:`VectorIndex`, in memory), ``ivfpq`` (:class:`LargeIndex`,
            compressed on disk) or ``auto`` (by size, or whichever the collection was last given).

    Returns:
        A :class:`VectorSearch`.

    Example:
        >>> ids, sims = open_index(collection).search(vector[None], 10)  # doctest: +SKIP
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}: use one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        large = (collection.root / LARGE_META).exists() or collection.count(collection.model_id) >= LARGE_LIMIT
        kind = "ivfpq" if large else "hnsw"
    if kind == "ivfpq":
        return LargeIndex.open(collection)
    return VectorIndex.open(collection)


__all__ = [
    "EXACT_LIMIT", "INDEX_KINDS", "IndexSettings", "LargeIndex", "VectorIndex", "VectorSearch", "exact_search", "open_index",
]
