"""Sharded collections: split by path prefix or by hash, built independently, searched together.

Each shard is an ordinary collection (its own folder, rows, model binding and index), so a
shard is built, resumed and updated exactly like any collection, by any process or machine
(:func:`build_shards_on_ray` runs one Ray task per shard). :class:`ShardedIndex` searches
every shard and merges the answers by cosine similarity; with exact search in each shard the
merged answer is exactly the answer of one unsharded collection.

A result key packs the shard and the row: ``key = shard_number * SHARD_STRIDE + row_id``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..collection import Collection, Row
from ..indexing import SyncReport, scan_paths, sync
from ..models import create_model
from . import open_index

SHARD_STRIDE = 1 << 40  # row ids of one shard stay below this
SHARD_PREFIX = "shard-"


def shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:03d}"


def hash_shard(path: str, shards: int) -> int:
    """A stable shard number for a path (the same on every machine and run)."""
    digest = hashlib.blake2b(os.path.abspath(path).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def plan_shards(paths: Sequence[str | os.PathLike[str]], shards: int, *, by: str = "hash") -> dict[str, list[str]]:
    """What each shard indexes: shard name -> files (``by="hash"``) or folders (``by="prefix"``).

    ``prefix``: the direct sub-folders (and loose files) of the given folders are dealt to the
    shards whole, largest first, so a shard sees whole folders and notices files removed from
    them. ``hash``: every image file goes to the shard its path hashes to (even shards, but a
    removed file is only forgotten by a run that scans its folder).
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    plan: dict[str, list[str]] = {shard_name(i): [] for i in range(shards)}
    if by == "hash":
        for path in sorted(scan_paths(paths).files):
            plan[shard_name(hash_shard(path, shards))].append(path)
        return plan
    if by != "prefix":
        raise ValueError(f"unknown sharding {by!r}: use hash or prefix")
    groups: list[tuple[int, str]] = []
    for root in paths:
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            groups.append((1, root))
            continue
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            groups.append((len(scan_paths([entry.path]).files), entry.path))
    load = [0] * shards
    for size, path in sorted(groups, key=lambda g: (-g[0], g[1])):
        target = min(range(shards), key=lambda i: (load[i], i))
        plan[shard_name(target)].append(path)
        load[target] += size
    return plan


def build_shard(shard_root: str | os.PathLike[str], paths: Sequence[str], model_spec: str, *,
                batch_size: int = 32, workers: int | None = None, embedder=None) -> SyncReport:
    """Index ``paths`` into the collection at ``shard_root`` (incremental, resumable)."""
    model = create_model(model_spec)
    with Collection(shard_root) as coll:
        return sync(coll, list(paths), model, model_spec=model_spec, batch_size=batch_size, workers=workers, embedder=embedder)


def build_shards_on_ray(root: str | os.PathLike[str], plan: dict[str, list[str]], model_spec: str, *,
                        cpus_per_shard: float = 0.5, threads_per_shard: int = 1) -> dict[str, dict]:
    """One Ray task per shard; ``root`` must be writable by the workers (a shared file system).

    Ray must be initialised (see :func:`distributed.ray_session`).
    """
    import ray

    @ray.remote(num_cpus=cpus_per_shard)
    def task(shard_root: str, paths: list[str]) -> dict:
        os.environ["IMAGESPACE_THREADS"] = str(threads_per_shard)
        return build_shard(shard_root, paths, model_spec, workers=threads_per_shard).to_dict()

    refs = {name: task.remote(str(Path(root) / name), paths) for name, paths in plan.items() if paths}
    return dict(zip(refs, ray.get(list(refs.values()))))


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
