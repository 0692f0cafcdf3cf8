"""Sharded collections, the building side: split by path prefix or by hash, built independently.

Each shard is an ordinary collection, so a shard is built, resumed and updated exactly like
any collection, by any process or machine (:func:`build_shards_on_ray` runs one Ray task per
shard). ``index.shards.ShardedIndex`` searches them together. This module sits above
``indexing`` (it runs ``sync`` per shard), so the index package never imports indexing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from .collection import Collection
from .index.shards import shard_name
from .indexing import SyncReport, scan_paths, sync
from .models import create_model


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
        # raw: the shards are searched together with one query vector, so they share the
        # network's own space (each shard's mean would put them in spaces of their own).
        return sync(coll, list(paths), model, model_spec=model_spec, batch_size=batch_size, workers=workers,
                    embedder=embedder, pipeline="raw")


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


