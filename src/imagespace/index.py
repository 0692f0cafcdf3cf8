"""Approximate nearest-neighbour index (usearch HNSW) over a collection's vectors.

The index is a derived file beside the database. It records the change sequence number it
has applied; opening it replays the rows written and removed since then, and a missing,
corrupt or inconsistent file is rebuilt from the rows, so it can never give answers that
the rows do not support.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from .collection import Collection

INDEX_FILE = "vectors.usearch"
INDEX_META = "vectors.json"
# Below this many vectors a query compares against every vector (exact, still ~ms);
# above it the HNSW graph answers.
EXACT_LIMIT = 20_000
INDEX_FORMAT = 1


@dataclass
class IndexSettings:
    metric: str = "cos"
    dtype: str = "f32"
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64


class VectorIndex:
    def __init__(self, collection: Collection, index, seq: int, settings: IndexSettings, dirty: bool):
        self.collection = collection
        self.index = index
        self.seq = seq
        self.settings = settings
        self.dirty = dirty

    # -- opening, catching up, rebuilding ------------------------------------------------

    @classmethod
    def open(cls, collection: Collection, *, settings: IndexSettings | None = None) -> VectorIndex:
        """The collection's index, up to date with its rows (rebuilt if it must be)."""
        settings = settings or IndexSettings()
        dim = collection.dim
        if dim is None:
            raise ValueError("the collection has no model yet: index some images first")
        path = collection.root / INDEX_FILE
        meta_path = collection.root / INDEX_META
        loaded = None
        reason = "no index file yet"
        if path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("format") != INDEX_FORMAT or meta.get("model_id") != collection.model_id or meta.get("dim") != dim:
                    reason = "index made for another model or format"
                elif meta.get("digest") != file_checksum(path):
                    reason = "index file damaged (its checksum does not match)"
                else:
                    loaded = cls._load(path)
                    if loaded is None or loaded.ndim != dim:
                        reason, loaded = "index file unreadable", None
                    else:
                        settings = IndexSettings(**meta.get("settings", {}))
            except (ValueError, OSError, RuntimeError, TypeError) as e:
                reason, loaded = f"index file unreadable ({e})", None
        if loaded is not None:
            me = cls(collection, loaded, int(meta["seq"]), settings, dirty=False)
            if me._catch_up():
                return me
            reason = "index does not match the rows"
        if path.exists():
            print(f"imagespace: rebuilding the vector index: {reason}", file=sys.stderr)
        return cls.build(collection, settings)

    @staticmethod
    def _load(path):
        from usearch.index import Index

        return Index.restore(str(path), view=False)

    @classmethod
    def build(cls, collection: Collection, settings: IndexSettings | None = None) -> VectorIndex:
        settings = settings or IndexSettings()
        seq = collection.seq  # read first: rows written meanwhile have a higher seq and are replayed
        index = cls._new(collection.dim, settings)
        for ids, vecs in collection.iter_vectors():
            index.add(ids, vecs)
        return cls(collection, index, seq, settings, dirty=True)

    @staticmethod
    def _new(dim: int, settings: IndexSettings):
        from usearch.index import Index

        return Index(
            ndim=dim,
            metric=settings.metric,
            dtype=settings.dtype,
            connectivity=settings.connectivity,
            expansion_add=settings.expansion_add,
            expansion_search=settings.expansion_search,
        )

    def _catch_up(self) -> bool:
        """Replay changes after ``self.seq``; False if the result disagrees with the rows."""
        seq = self.collection.seq
        if seq != self.seq:
            removed, ids, vecs = self.collection.changes_since(self.seq)
            drop = [i for i in set(removed) | set(ids.tolist()) if self.index.contains(i)]
            if drop:
                self.index.remove(np.asarray(drop, dtype=np.int64))
            if len(ids):
                self.index.add(ids, vecs)
            self.seq = seq
            self.dirty = True
        return len(self.index) == self.collection.count(self.collection.model_id)

    def save_if_changed(self) -> None:
        if not self.dirty:
            return
        root = self.collection.root
        tmp = root / f"{INDEX_FILE}.{os.getpid()}.tmp"
        meta_tmp = root / f"{INDEX_META}.{os.getpid()}.tmp"
        try:
            self.index.save(str(tmp))
            meta = {
                "format": INDEX_FORMAT,
                "seq": self.seq,
                "model_id": self.collection.model_id,
                "dim": self.collection.dim,
                "count": len(self.index),
                "settings": self.settings.__dict__,
                "digest": file_checksum(tmp),  # a damaged file is rebuilt, never searched
            }
            meta_tmp.write_text(json.dumps(meta))
            # Index first, then its description. A crash between the two leaves an index
            # whose checksum does not match its description: it is rebuilt from the rows.
            os.replace(tmp, root / INDEX_FILE)
            os.replace(meta_tmp, root / INDEX_META)
        finally:  # e.g. disk full: leave no half-written temporary files behind
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
        self.collection.prune_removed(self.seq)
        self.dirty = False

    # -- searching -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: np.ndarray, k: int, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine similarities), each (n_queries, <=k), best first; -1 pads missing."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        n = len(self.index)
        if n == 0 or k <= 0:
            return np.full((len(queries), 0), -1, dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        k = min(k, n)
        if exact is None:
            exact = n <= EXACT_LIMIT
        matches = self.index.search(queries, k, exact=exact)
        keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
        sims = 1.0 - np.asarray(matches.distances, dtype=np.float32).reshape(len(queries), -1)
        # usearch returns one Matches for a single query and BatchMatches for several;
        # rows with fewer than k hits are padded, and `counts` says how many are real.
        counts = np.asarray(getattr(matches, "counts", [len(matches.keys)])).reshape(-1)
        for row, c in enumerate(counts):
            keys[row, c:] = -1
            sims[row, c:] = -np.inf
        return keys, sims

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        got = self.index.get(np.asarray(ids, dtype=np.int64))
        return np.asarray(got, dtype=np.float32)


def file_checksum(path: os.PathLike[str] | str) -> str:
    """blake2b of a file's bytes, read in chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
