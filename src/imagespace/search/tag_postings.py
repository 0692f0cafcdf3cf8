"""Which images carry which class among their stored tags, as arrays (an inverted index).

Ranking by a concept needs, for its classes, every image tagged with one of them and the
probability. Reading that from the rows means parsing every row's JSON tags: about 2 s for
200,000 rows with SQLite's json_each. These postings are built once from the rows, kept
beside the collection (``tag-postings.npz``, stamped with the collection's change number
and model) and in memory, and rebuilt whole when the rows have changed since; a lookup then
costs in proportion to the matches.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

FILE = "tag-postings.npz"
_cache: dict[str, TagPostings] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class TagPostings:
    seq: int
    model: str
    names: np.ndarray  # lower-case tag names, sorted (unicode array)
    starts: np.ndarray  # (len(names) + 1,) offsets into ids/probs
    ids: np.ndarray  # int64 row ids, grouped by name
    probs: np.ndarray  # float32 stored probabilities

    def summed(self, names) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, summed probability of ``names`` among each row's tags), rows with any of them."""
        where = np.searchsorted(self.names, sorted(set(names)))
        parts_i, parts_p = [], []
        for name, at in zip(sorted(set(names)), where):
            if at < len(self.names) and self.names[at] == name:
                parts_i.append(self.ids[self.starts[at] : self.starts[at + 1]])
                parts_p.append(self.probs[self.starts[at] : self.starts[at + 1]])
        if not parts_i:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ids, inverse = np.unique(np.concatenate(parts_i), return_inverse=True)
        sums = np.zeros(len(ids), np.float64)
        np.add.at(sums, inverse, np.concatenate(parts_p))
        return ids, sums.astype(np.float32)


def tag_postings(collection) -> TagPostings:
    """The collection's postings, current with its rows."""
    seq, model, root = collection.seq, collection.model_id or "", str(collection.root)
    with _lock:
        p = _cache.get(root)
        if p is not None and p.seq == seq and p.model == model:
            return p
        p = _load(Path(root) / FILE)
        if p is None or p.seq != seq or p.model != model:
            p = _build(collection, seq, model)
            _save(Path(root) / FILE, p)
        _cache[root] = p
        return p


def _build(collection, seq: int, model: str) -> TagPostings:
    by_name: dict[str, tuple[list[int], list[float]]] = {}
    for row_id, parsed in collection.iter_tags(model):
        for tag in parsed:
            ids, probs = by_name.setdefault(str(tag[0]).lower(), ([], []))
            ids.append(row_id)
            probs.append(float(tag[1]))
    names = sorted(by_name)
    counts = [len(by_name[n][0]) for n in names]
    return TagPostings(
        seq, model, np.array(names, dtype=str),
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.array([i for n in names for i in by_name[n][0]], dtype=np.int64),
        np.array([p for n in names for p in by_name[n][1]], dtype=np.float32),
    )


def _load(path: Path) -> TagPostings | None:
    try:
        with np.load(path, allow_pickle=False) as d:
            return TagPostings(int(d["seq"]), str(d["model"]), d["names"], d["starts"], d["ids"], d["probs"])
    except (OSError, ValueError, KeyError):
        return None


def _save(path: Path, p: TagPostings) -> None:
    try:  # a read-only collection still answers, from memory
        with atomic_write(path, suffix=".npz") as tmp:
            np.savez(tmp, seq=p.seq, model=p.model, names=p.names, starts=p.starts, ids=p.ids, probs=p.probs)
    except OSError:
        pass
