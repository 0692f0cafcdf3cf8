"""Sharded collections searched together: :class:`ShardedIndex`.

Each shard is an ordinary collection (its own folder, rows, model binding and index), built
by ``imagespace.sharding`` (which plans and indexes them). :class:`ShardedIndex` searches
every shard and merges the answers by cosine similarity; with exact search in each shard the
merged answer is exactly the answer of one unsharded collection.

A result key packs the shard and the row: ``key = shard_number * SHARD_STRIDE + row_id``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..collection import Collection, Row
from . import open_index

SHARD_STRIDE = 1 << 40  # row ids of one shard stay below this
SHARD_PREFIX = "shard-"


def shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:03d}"


@dataclass
class ShardHit:
    key: int
    shard: str
    row: Row
    score: float


class ShardedIndex:
    """Search the shards under ``root`` (folders ``shard-NNN``) as one collection."""

    def __init__(self, root: str | os.PathLike[str], *, index: str = "auto"):
        self.root = Path(root)
        names = sorted(p.name for p in self.root.iterdir() if p.name.startswith(SHARD_PREFIX) and p.is_dir())
        self.collections: list[Collection] = []
        self.names: list[str] = []
        self.indexes = []
        model_id = None
        for name in names:
            coll = Collection(self.root / name, create=False)
            if coll.model_id is None or len(coll) == 0:
                coll.close()
                continue
            if model_id is not None and coll.model_id != model_id:
                raise ValueError(f"shard {name} was made with model {coll.model_id!r}, others with {model_id!r}")
            model_id = coll.model_id
            self.collections.append(coll)
            self.names.append(name)
            self.indexes.append(open_index(coll, index))
        if not self.indexes:
            raise ValueError(f"no indexed shards under {self.root}")

    def close(self) -> None:
        for coll in self.collections:
            coll.close()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return sum(len(i) for i in self.indexes)

    def refresh(self) -> bool:
        """Each shard's index takes in its new rows; False if one of them must be reopened."""
        return all([index.refresh() for index in self.indexes])

    def save_if_changed(self) -> None:
        """Write each shard's index that changed."""
        for index in self.indexes:
            index.save_if_changed()

    def describe(self) -> dict:
        """Each shard's index, as it describes itself."""
        return {"kind": "shards", "vectors": len(self), "shards": {n: i.describe() for n, i in zip(self.names, self.indexes)}}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, cosine similarities), (n_queries, <=k), best first, merged over shards."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        all_keys, all_sims = [], []
        for number, index in zip(self._numbers(), self.indexes):
            ids, sims = index.search(queries, k)
            keys = np.where(ids >= 0, ids + number * SHARD_STRIDE, -1)
            all_keys.append(keys)
            all_sims.append(np.where(ids >= 0, sims, -np.inf))
        keys, sims = np.concatenate(all_keys, axis=1), np.concatenate(all_sims, axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(keys, order, 1), np.take_along_axis(sims, order, 1)

    def hits(self, query: np.ndarray, k: int = 10) -> list[ShardHit]:
        keys, sims = self.search(query, k)
        out = []
        for key, score in zip(keys[0], sims[0]):
            if key < 0:
                continue
            shard = self._by_number()[int(key) // SHARD_STRIDE]
            coll = self.collections[shard]
            row = coll.rows([int(key) % SHARD_STRIDE])[int(key) % SHARD_STRIDE]
            out.append(ShardHit(int(key), self.names[shard], row, float(score)))
        return out

    def _numbers(self) -> list[int]:
        return [int(name[len(SHARD_PREFIX):]) for name in self.names]

    def _by_number(self) -> dict[int, int]:
        return {n: i for i, n in enumerate(self._numbers())}
