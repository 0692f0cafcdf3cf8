"""The rows' exact vectors in a flat file, for re-scoring a reduced index's candidates.

A reduced index (see :mod:`imagespace.index.hnsw`) finds candidates in a graph of compressed
projections and scores them again with the rows' exact float32 vectors. Reading those 24
rows from SQLite took 0.25 ms a query at 1,000,000 rows (each row spans a page and an
overflow page), a third of the whole search; from this file, row ``id`` at a fixed offset,
one ``pread`` each, it took 0.10 ms (benchmarks/bench_search.py).

The file is a snapshot: written whole at one change number (``seq``) and replaced
atomically, never edited in place, so a process reading it never sees a torn row. Rows
written after that change number are read from SQLite instead (the index keeps their ids);
when they pass a tenth of the collection the index writes a new snapshot. A header stamps
the file with its collection, change number and size, and the index's description records
the same stamp: a file that does not match is not used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..collection import Collection

RESCORE_FILE = "vectors.rescore.f32"
FORMAT = 1
HEADER_BYTES = 4096
# Rows written since the snapshot, as a share of the collection, past which a new one is written.
MAX_FRESH_SHARE = 0.10


@dataclass
class RescoreStore:
    path: Path
    stamp: dict
    fd: int

    @property
    def dim(self) -> int:
        return int(self.stamp["dim"])

    @property
    def seq(self) -> int:
        return int(self.stamp["seq"])

    def read(self, ids: list[int]) -> np.ndarray:
        """(len(ids), dim) float32 rows; ``ids`` must be rows of the snapshot."""
        row_bytes = self.dim * 4
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for j, i in enumerate(ids):
            out[j] = np.frombuffer(os.pread(self.fd, row_bytes, HEADER_BYTES + i * row_bytes), dtype=np.float32)
        return out

    def close(self) -> None:
        os.close(self.fd)

    @classmethod
    def open(cls, root: Path, stamp: dict | None) -> RescoreStore | None:
        """The snapshot in ``root`` if it is the one ``stamp`` describes, else None."""
        if not stamp:
            return None
        path = root / RESCORE_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            header = os.pread(fd, HEADER_BYTES, 0).rstrip(b"\0")
            size = os.fstat(fd).st_size
            expected = HEADER_BYTES + int(stamp["rows"]) * int(stamp["dim"]) * 4
            if json.loads(header or b"{}") == stamp and size == expected:
                return cls(path, stamp, fd)
        except (ValueError, KeyError, TypeError, OSError):
            pass
        os.close(fd)
        return None


def write_snapshot(collection: Collection, tmp: Path) -> dict:
    """Write every current row's vector to ``tmp``; the stamp that describes it.

    The change number is read before the rows, so a row written meanwhile has a higher one
    and is read from SQLite, whatever this file holds for it."""
    seq = collection.seq
    dim = int(collection.dim)
    row_bytes = dim * 4
    rows = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for ids, vecs in collection.iter_vectors():
            # ids come sorted: one write per run of consecutive ids; gaps (removed rows) stay holes
            starts = np.flatnonzero(np.diff(ids) != 1) + 1
            for run_ids, run_vecs in zip(np.split(ids, starts), np.split(vecs, starts)):
                os.pwrite(fd, np.ascontiguousarray(run_vecs, dtype=np.float32).tobytes(),
                          HEADER_BYTES + int(run_ids[0]) * row_bytes)
            rows = int(ids[-1]) + 1
        os.ftruncate(fd, HEADER_BYTES + rows * row_bytes)
        stamp = {"format": FORMAT, "collection_id": collection.collection_id, "seq": seq, "dim": dim, "rows": rows}
        header = json.dumps(stamp, sort_keys=True).encode()
        os.pwrite(fd, header.ljust(HEADER_BYTES, b"\0"), 0)
        os.fsync(fd)  # on disk before the index's description names it
    finally:
        os.close(fd)
    return stamp
