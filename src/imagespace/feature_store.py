"""Per-image arrays kept beside a collection for the duplicate pass, keyed by file digest and
bounded in bytes.

Two kinds of entries:

- ``grey``: the grey image duplicate verification works on (longest side 500), written by
  indexing when its own decode gave it for free (large JPEGs decode at 1/8 for the model
  and for verification alike), so the duplicate pass need not decode those files again;
- ``features``: what verification computed of an image (local features, thumbnail, facts),
  written by the duplicate pass, so a later pass, or the same pass when an image comes back
  after leaving its memory, does not compute them again. It replaces the image's ``grey``.

A cache only: a SQLite file of its own (never the collection's database), safe to delete;
where it cannot be written, callers run without it. Entries go oldest first once the file
holds more than its limit; the entries of the pass that is running are kept until it closes,
so that one pass never computes an image twice.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from pathlib import Path

import numpy as np

FILE_NAME = "image-features.sqlite"
# About 5,500 camera photos' grey images, or 6,500 images' features; the file may grow
# beyond it while a duplicate pass runs (by ~160 KB an image) and is trimmed when it closes.
LIMIT_BYTES = 1 << 30
# Part of every key: a change to what is stored must not reuse old entries.
VERSION = "1"


class FeatureStore:
    """``get`` and ``put`` blobs by (kind, digest); safe to share between threads."""

    def __init__(self, folder: str | Path | None, limit_bytes: int = LIMIT_BYTES, *, keep_this_run: bool = False):
        self.limit = int(limit_bytes)
        self.keep_this_run = keep_this_run
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._first_of_run: int | None = None
        self.total = 0
        if folder is None:
            return
        try:
            db = sqlite3.connect(str(Path(folder) / FILE_NAME), check_same_thread=False, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # a cache: a torn write only loses entries
            db.execute("CREATE TABLE IF NOT EXISTS blobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE, "
                       "bytes INTEGER, data BLOB)")
            db.commit()
            self.total = int(db.execute("SELECT coalesce(sum(bytes), 0) FROM blobs").fetchone()[0])
            self._first_of_run = int(db.execute("SELECT coalesce(max(seq), 0) FROM blobs").fetchone()[0]) + 1
            self._db = db
        except sqlite3.Error:
            self._db = None  # read-only or broken: run without it

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def get(self, kind: str, digest: str) -> bytes | None:
        if self._db is None:
            return None
        with self._lock:
            try:
                row = self._db.execute("SELECT data FROM blobs WHERE key=?", (_key(kind, digest),)).fetchone()
            except sqlite3.Error:
                return None
        return None if row is None else bytes(row[0])

    def put(self, kind: str, items: list[tuple[str, bytes]], *, replaces: str | None = None) -> None:
        """Store ``items`` (digest, blob) of ``kind``; with ``replaces``, drop those digests' entries of that kind."""
        if self._db is None or not items:
            return
        with self._lock:
            try:
                if replaces is not None:
                    keys = [(_key(replaces, d),) for d, _ in items]
                    freed = sum(r[0] for k in keys for r in self._db.execute("SELECT bytes FROM blobs WHERE key=?", k))
                    self._db.executemany("DELETE FROM blobs WHERE key=?", keys)
                    self.total -= freed
                for digest, blob in items:
                    key = _key(kind, digest)
                    old = self._db.execute("SELECT bytes FROM blobs WHERE key=?", (key,)).fetchone()
                    self._db.execute("DELETE FROM blobs WHERE key=?", (key,))
                    self._db.execute("INSERT INTO blobs (key, bytes, data) VALUES (?, ?, ?)", (key, len(blob), blob))
                    self.total += len(blob) - (old[0] if old else 0)
                self._trim(keep_from=self._first_of_run if self.keep_this_run else None)
                self._db.commit()
            except sqlite3.Error:
                self._db = None  # could not write after all (read-only, disk full): go on without it

    def _trim(self, keep_from: int | None) -> None:
        """Drop the oldest entries while over the limit (never those at or after ``keep_from``)."""
        while self.total > self.limit:
            row = self._db.execute("SELECT seq, bytes FROM blobs ORDER BY seq LIMIT 1").fetchone()
            if row is None or (keep_from is not None and row[0] >= keep_from):
                return
            self._db.execute("DELETE FROM blobs WHERE seq=?", (row[0],))
            self.total -= row[1]

    def close(self) -> None:
        if self._db is None:
            return
        with self._lock:
            try:
                self._trim(keep_from=None)
                self._db.commit()
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


def _key(kind: str, digest: str) -> str:
    return f"{VERSION}:{kind}:{digest}"


def pack_grey(grey: np.ndarray) -> bytes:
    """A 2-D uint8 image as bytes: height and width, then the pixels."""
    h, w = grey.shape
    return struct.pack("<II", h, w) + np.ascontiguousarray(grey, dtype=np.uint8).tobytes()


def unpack_grey(blob: bytes) -> np.ndarray:
    h, w = struct.unpack_from("<II", blob)
    return np.frombuffer(blob, dtype=np.uint8, offset=8).reshape(h, w)
