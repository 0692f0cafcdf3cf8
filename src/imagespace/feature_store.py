"""Per-image arrays kept beside a collection for the duplicate pass, keyed by file digest and
bounded in bytes.

Two kinds of entries:

- ``grey``: the grey image duplicate verification works on (longest side 500), written by
  indexing when its own decode gave it for free (large JPEGs decode at 1/8 for the model
  and for verification alike), so the duplicate pass need not decode those files again;
- features (the duplicate pass names the kind after its layout): what verification computed
  of an image (local features, thumbnail, facts), written when a pass ends, the newest that
  fit, so a later pass does not compute them again. They replace the image's ``grey``.

A cache only: a SQLite file of its own (never the collection's database), safe to delete;
where it cannot be written, callers run without it. Entries go oldest first once the file
holds more than its limit, so the file never grows past it by more than one write.

What a running pass computes is also kept, for that pass only, in a :class:`ScratchFile`: an
unnamed temporary file beside the collection (appended to, read back by offset, gone when
the pass ends or is killed), so that one pass never computes an image twice however large
the collection, without making the store grow with it. (The store used to keep a pass's
entries past its limit and trim them at the end: 6.3 GB and 1.5 ms an image of SQLite page
work at 60,000 images, and the file did not shrink again.)
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

FILE_NAME = "image-features.sqlite"
# About 5,500 camera photos' grey images, or 10,000 images' features.
LIMIT_BYTES = 1 << 30
# Part of every key: a change to what is stored must not reuse old entries.
VERSION = "1"


class FeatureStore:
    """``get`` and ``put`` blobs by (kind, digest); safe to share between threads."""

    def __init__(self, folder: str | Path | None, limit_bytes: int = LIMIT_BYTES):
        self.limit = int(limit_bytes)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
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
                self._trim()
                self._db.commit()
            except sqlite3.Error:
                self._db = None  # could not write after all (read-only, disk full): go on without it

    def _trim(self) -> None:
        """Drop the oldest entries while over the limit, in one statement."""
        excess = self.total - self.limit
        if excess <= 0:
            return
        last, freed = None, 0
        rows = self._db.execute("SELECT seq, bytes FROM blobs ORDER BY seq")
        for seq, size in rows:
            last, freed = seq, freed + size
            if freed >= excess:
                break
        rows.close()
        if last is not None:
            self._db.execute("DELETE FROM blobs WHERE seq <= ?", (last,))
            self.total -= freed

    def close(self) -> None:
        if self._db is None:
            return
        with self._lock:
            try:
                self._db.commit()
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


class ScratchFile:
    """Blobs by digest for one pass: appended to an unnamed temporary file (in ``folder``,
    else the system's temporary folder) and read back by offset; safe to share between
    threads. Where no file can be made, it keeps nothing."""

    def __init__(self, folder: str | Path | None = None):
        self._lock = threading.Lock()
        self._where: dict[str, tuple[int, int]] = {}
        self._order: list[str] = []
        self._end = 0
        self._file = None
        for place in ([str(folder)] if folder is not None else []) + [None]:
            try:
                self._file = tempfile.TemporaryFile(dir=place, prefix="imagespace-pass-")
                break
            except OSError:
                continue

    def put(self, items: list[tuple[str, bytes]]) -> None:
        if self._file is None or not items:
            return
        with self._lock:
            try:
                for digest, blob in items:
                    os.pwrite(self._file.fileno(), blob, self._end)
                    if digest not in self._where:
                        self._order.append(digest)
                    self._where[digest] = (self._end, len(blob))
                    self._end += len(blob)
            except OSError:
                self._close()  # the disk is full: keep what memory holds and go on

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            found, file = self._where.get(digest), self._file
        if found is None or file is None:
            return None
        try:
            return os.pread(file.fileno(), found[1], found[0])
        except (OSError, ValueError):
            return None

    def newest(self, limit_bytes: int) -> list[tuple[str, bytes]]:
        """The most recently added entries that fit in ``limit_bytes``, oldest of them first."""
        out, size = [], 0
        for digest in reversed(self._order):
            n = self._where.get(digest, (0, limit_bytes + 1))[1]
            if size + n > limit_bytes:
                break
            blob = self.get(digest)
            if blob is None:
                break
            out.append((digest, blob))
            size += n
        return out[::-1]

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._where.clear()
        self._order.clear()

    def close(self) -> None:
        with self._lock:
            self._close()


def _key(kind: str, digest: str) -> str:
    return f"{VERSION}:{kind}:{digest}"


def pack_grey(grey: np.ndarray) -> bytes:
    """A 2-D uint8 image as bytes: height and width, then the pixels."""
    h, w = grey.shape
    return struct.pack("<II", h, w) + np.ascontiguousarray(grey, dtype=np.uint8).tobytes()


def unpack_grey(blob: bytes) -> np.ndarray:
    h, w = struct.unpack_from("<II", blob)
    return np.frombuffer(blob, dtype=np.uint8, offset=8).reshape(h, w)
