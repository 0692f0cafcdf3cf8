"""Vector indexes over a collection's rows: one interface, two kinds, one way to open them.

Every index answers ``search(queries, k) -> (ids, cosine similarities)``, knows its
``len``, takes in rows written since it was opened with ``refresh()``, writes itself
beside the database with ``save_if_changed()`` and says what it is and the recall it
measured with ``describe()`` (:class:`VectorSearch`). The kinds:

- :mod:`.hnsw`: an in-memory graph (usearch), exact below 20,000 vectors, reduced and
  re-scored from a snapshot (:mod:`.rescore`) above 40,000;
- :mod:`.ivfpq`: compressed codes on disk (FAISS), re-ranked exactly, for collections
  beyond memory;
- :mod:`.shards`: several collections searched as one (same interface, keys pack the shard);
- :mod:`.tuning`: each index measures its own recall and picks the cheapest settings reaching the target.

Indexes are derived files: opening one replays the rows changed since it was saved, and a
missing or damaged file is rebuilt from the rows.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..collection import Collection
from .exact import exact_search
import json

from .hnsw import EXACT_LIMIT, IndexSettings, VectorIndex, saved_description
from .ivfpq import LARGE_LIMIT, LARGE_META, LargeIndex
from .tuning import Tuning, describe

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

    def describe(self) -> dict:
        """Kind, search settings and the recall measured on the collection (for ``--json``)."""


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
        kind = "ivfpq" if _uses_compressed(collection) else "hnsw"
    if kind == "ivfpq":
        return LargeIndex.open(collection)
    return VectorIndex.open(collection)


def _uses_compressed(collection: Collection) -> bool:
    return (collection.root / LARGE_META).exists() or collection.count(collection.model_id) >= LARGE_LIMIT


def describe_index(collection: Collection) -> dict:
    """The index ``open_index(collection)`` would search with, from its saved description:
    kind, search settings and measured recall. Nothing is opened or built (``info`` and
    ``check`` must stay quick on a collection whose index is due for a rebuild)."""
    if _uses_compressed(collection):
        try:
            meta = json.loads((collection.root / LARGE_META).read_text())
            tuning = Tuning.from_dict(meta.get("tuning"))
            s = meta["settings"]
            knobs = {key: s.get(key) for key in ("nprobe", "rerank", "nlist", "pq_m", "pca_dim")}
            return describe("ivfpq", int(meta.get("count", 0)), knobs, tuning)
        except (OSError, ValueError, KeyError, TypeError):
            return {"kind": "ivfpq", "state": "not built yet: built at the next indexing run or search"}
    return saved_description(collection) or {"kind": None, "state": "not built yet: built at the next indexing run or search"}


__all__ = [
    "EXACT_LIMIT", "INDEX_KINDS", "IndexSettings", "LargeIndex", "VectorIndex", "VectorSearch", "describe_index", "exact_search",
    "open_index",
]
