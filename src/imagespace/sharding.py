"""Sharded collections, the building side: split by path prefix or by hash, built independently.

Each shard is an ordinary collection, so a shard is built, resumed and updated exactly like
any collection, by any process or machine (:func:`build_shards_on_ray` runs one Ray task per
shard). ``index.shards.ShardedIndex`` searches them together, and ``server.ray_serve``
serves them. This module sits above ``indexing`` (it runs ``sync`` per shard), so the index
package never imports indexing.

``imagespace index PATH... --db DIR --shards N`` is :func:`index_sharded`: the split is kept
in ``DIR/shards.json`` (:class:`ShardLayout`), and every shard scans the user's folders and
keeps the files that are its own, so an incremental run adds, updates, moves and removes
files in each shard exactly as one unsharded collection would.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .collection import Collection
from .atomic import atomic_write
from .index.shards import SHARD_PREFIX, shard_name
from .indexing import SyncReport, scan_paths, sync
from .models import create_model, resolve_model_spec


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




# -- a sharded collection kept up to date (the CLI's ``index --shards``) -----------------

LAYOUT_FILE = "shards.json"


@dataclass
class ShardLayout:
    """How the files of a sharded collection are dealt to its shards (``DIR/shards.json``).

    ``by="hash"``: a file's shard is the hash of its path (even shards, no memory needed).
    ``by="folder"``: each direct sub-folder (or loose file) of an indexed folder goes whole to
    one shard, remembered in ``folders`` so that later runs keep it there; new ones go to the
    shard with the fewest files.
    """

    shards: int
    by: str = "hash"
    folders: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")
        if self.by not in ("hash", "folder"):
            raise ValueError(f"unknown sharding {self.by!r}: use hash or folder")

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> ShardLayout | None:
        """The layout of the sharded collection at ``root``; None when it is not one."""
        path = Path(root) / LAYOUT_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(int(data["shards"]), data.get("by", "hash"), {k: int(v) for k, v in data.get("folders", {}).items()})

    def save(self, root: str | os.PathLike[str]) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(root) / LAYOUT_FILE) as tmp:
            Path(tmp).write_text(json.dumps({"shards": self.shards, "by": self.by, "folders": self.folders}, indent=1, sort_keys=True))

    def names(self) -> list[str]:
        return [shard_name(i) for i in range(self.shards)]

    def shard_of(self, path: str) -> int:
        """The shard of a file (absolute path) under the folders of this run."""
        if self.by == "hash":
            return hash_shard(path, self.shards)
        entry = path
        while entry not in self.folders:
            parent = os.path.dirname(entry)
            if parent == entry:
                return hash_shard(path, self.shards)  # not dealt (cannot happen after assign)
            entry = parent
        return self.folders[entry]

    def assign(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Deal the sub-folders (and loose files) of ``paths`` not dealt yet (``by="folder"``)."""
        if self.by != "folder":
            return
        load = [0] * self.shards
        new: list[tuple[int, str]] = []
        for entry in _entries(paths):
            size = len(scan_paths([entry]).files)
            if entry in self.folders:
                load[self.folders[entry]] += size
            else:
                new.append((size, entry))
        for size, entry in sorted(new, key=lambda g: (-g[0], g[1])):
            target = min(range(self.shards), key=lambda i: (load[i], i))
            self.folders[entry] = target
            load[target] += size


def _entries(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    out = []
    for root in paths:
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root):
            out.append(root)
            continue
        out.extend(e.path for e in sorted(os.scandir(root), key=lambda e: e.name) if not e.name.startswith("."))
    return out


def is_sharded(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` holds a sharded collection (made by :func:`index_sharded`)."""
    return (Path(root) / LAYOUT_FILE).is_file()


def shard_folders(root: str | os.PathLike[str]) -> list[Path]:
    """The shard collections under ``root``, in shard order."""
    layout = ShardLayout.load(root)
    if layout is not None:
        return [Path(root) / name for name in layout.names()]
    return sorted(p for p in Path(root).iterdir() if p.name.startswith(SHARD_PREFIX) and p.is_dir())


def sync_shard(shard_root: str | os.PathLike[str], number: int, layout: ShardLayout, paths: Sequence[str],
               model_spec: str, *, model=None, batch_size: int = 32, workers: int | None = None,
               progress: bool = False) -> SyncReport:
    """Bring shard ``number`` up to date with its files under ``paths`` (incremental, resumable)."""
    model = model if model is not None else create_model(model_spec)
    with Collection(shard_root) as coll:
        return sync(coll, list(paths), model, model_spec=model_spec, batch_size=batch_size, workers=workers,
                    progress=progress, only=lambda p: layout.shard_of(p) == number, pipeline="raw")


@dataclass
class ShardedReport:
    """What ``index --shards`` did: the sum over shards, and each shard's own report."""

    shards: dict[str, SyncReport]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        total = SyncReport()
        for r in self.shards.values():
            for name in ("added", "updated", "removed", "unchanged", "moved", "embedded", "found", "skipped_failures"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            total.failed.extend(r.failed)
        total.seconds = self.seconds
        return {**total.to_dict(), "shards": {name: r.to_dict() for name, r in self.shards.items()}}


def index_sharded(root: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], model: str | None = None, *,
                  shards: int | None = None, by: str | None = None, engine: str = "local", address: str | None = None,
                  batch_size: int = 32, workers: int | None = None, progress: bool = False) -> ShardedReport:
    """Make or update the sharded collection at ``root`` from ``paths``: N ordinary collections
    ``root/shard-000 ...``, each with its own self-tuned index.

    ``shards`` and ``by`` are fixed by the first run (kept in ``root/shards.json``); a later run
    may leave them out, and giving other values is an error (re-sharding is not supported).
    ``model``: a model name or folder; default: the collection's (its first shard's), else
    the default model. ``engine="ray"``: one Ray task per shard (local Ray, or the cluster at ``address``; ``root``
    must then be on a file system every worker writes to).
    """
    import time

    started = time.perf_counter()
    layout = ShardLayout.load(root)
    if layout is None:
        if shards is None:
            raise ValueError(f"{root} is not a sharded collection yet: give the number of shards")
        layout = ShardLayout(shards, by or "hash")
    elif (shards is not None and shards != layout.shards) or (by is not None and by != layout.by):
        raise ValueError(f"{root} is split into {layout.shards} shards by {layout.by}; it cannot be re-split "
                         f"into {shards or layout.shards} by {by or layout.by} (index into a new --db instead)")
    model_spec = sharded_model_spec(root, model)
    files = [os.path.abspath(os.fspath(p)) for p in paths]
    layout.assign(files)
    layout.save(root)
    names = layout.names()
    if engine == "ray":
        from .distributed import ray_session

        with ray_session(address):
            reports = _sync_shards_on_ray(root, layout, files, model_spec, batch_size=batch_size)
    else:
        embedding_model = create_model(model_spec)
        reports = {}
        for number, name in enumerate(names):
            if progress:
                print(f"imagespace: {name} ({number + 1} of {len(names)})", file=sys.stderr, flush=True)
            reports[name] = sync_shard(Path(root) / name, number, layout, files, model_spec, model=embedding_model,
                                       batch_size=batch_size, workers=workers, progress=progress)
    return ShardedReport(reports, time.perf_counter() - started)


def sharded_model_spec(root: str | os.PathLike[str], model: str | None = None) -> str:
    """The model a sharded collection embeds with: ``model`` if given, else its first shard's."""
    from .collection import DB_FILE

    existing = None
    if Path(root).is_dir():
        for folder in shard_folders(root):
            if (folder / DB_FILE).exists():
                with Collection(folder, create=False, readonly=True) as c:
                    existing = c.model_spec
                break
    return resolve_model_spec(model, existing)


def _sync_shards_on_ray(root, layout: ShardLayout, paths: list[str], model_spec: str, *, batch_size: int,
                        cpus_per_shard: float = 0.5, threads_per_shard: int = 1) -> dict[str, SyncReport]:
    import ray

    @ray.remote(num_cpus=cpus_per_shard)
    def task(number: int) -> SyncReport:
        os.environ["IMAGESPACE_THREADS"] = str(threads_per_shard)
        return sync_shard(Path(root) / shard_name(number), number, layout, paths, model_spec,
                          batch_size=batch_size, workers=threads_per_shard)

    refs = {shard_name(i): task.remote(i) for i in range(layout.shards)}
    return dict(zip(refs, ray.get(list(refs.values()))))
