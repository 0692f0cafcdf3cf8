"""What the duplicate pass learnt, kept between runs: each compared pair's verdict and each
image's small facts, keyed by file digests (a moved or renamed file keeps them; an edited one
does not). A second run after adding a few photos then compares only the pairs it has not
seen, and decodes only the images in them.

The store is a small SQLite file of its own beside the collection (not the collection's
database: it is a cache, safe to delete). Where it cannot be written (a read-only folder),
the pass runs without it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..images import CaptureFacts
from .copies import PairVerdict

_VERDICT_FIELDS = tuple(f.name for f in fields(PairVerdict))

# Part of every key: a change to the checks or their thresholds must not reuse old verdicts.
VERSION = "tiers-3"  # 2: verdicts carry band_ratio (enlargements); 3: aspect_change, region
FILE_NAME = "duplicates-cache.sqlite"


@dataclass
class ImageSummary:
    """The facts of one image that choosing the kept copy and the best shot need."""

    border: bool
    sharpness: float
    clipped: float
    facts: CaptureFacts


class PairCache:
    def __init__(self, folder: str | Path | None):
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if folder is None:
            return
        try:
            db = sqlite3.connect(str(Path(folder) / FILE_NAME), check_same_thread=False, timeout=5)
            db.execute("CREATE TABLE IF NOT EXISTS pairs (a TEXT, b TEXT, verdict TEXT, PRIMARY KEY (a, b))")
            db.execute("CREATE TABLE IF NOT EXISTS images (digest TEXT PRIMARY KEY, summary TEXT)")
            db.commit()
            self._db = db
        except sqlite3.Error:
            self._db = None  # read-only or broken: run without it

    def pair(self, digest_a: str, digest_b: str) -> PairVerdict | None:
        """The verdict of a pair seen before, oriented as (a, b)."""
        if self._db is None:
            return None
        a, b = f"{VERSION}:{digest_a}", f"{VERSION}:{digest_b}"
        swapped = a > b
        with self._lock:
            row = self._db.execute("SELECT verdict FROM pairs WHERE a=? AND b=?", (b, a) if swapped else (a, b)).fetchone()
        if row is None:
            return None
        v = PairVerdict(**json.loads(row[0]))
        if swapped:
            v.covered_a, v.covered_b = v.covered_b, v.covered_a
            v.scale = 1.0 / v.scale if v.scale else v.scale
            v.aspect_change = 1.0 / v.aspect_change if v.aspect_change else v.aspect_change
        return v

    def put_pairs(self, found: list[tuple[str, str, PairVerdict]]) -> None:
        if self._db is None or not found:
            return
        out = []
        for da, db, v in found:
            a, b = f"{VERSION}:{da}", f"{VERSION}:{db}"
            d = {name: getattr(v, name) for name in _VERDICT_FIELDS}  # asdict's deep copy: 5x the time
            if a > b:
                a, b = b, a
                d["covered_a"], d["covered_b"] = d["covered_b"], d["covered_a"]
                d["scale"] = 1.0 / d["scale"] if d["scale"] else d["scale"]
                d["aspect_change"] = 1.0 / d["aspect_change"] if d["aspect_change"] else d["aspect_change"]
            out.append((a, b, json.dumps(d)))
        self._write("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?)", out)

    def image(self, digest: str) -> ImageSummary | None:
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT summary FROM images WHERE digest=?", (f"{VERSION}:{digest}",)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        return ImageSummary(d["border"], d["sharpness"], d["clipped"], CaptureFacts(**d["facts"]))

    def put_images(self, found: list[tuple[str, ImageSummary]]) -> None:
        if self._db is None or not found:
            return
        self._write("INSERT OR REPLACE INTO images VALUES (?, ?)", [(f"{VERSION}:{d}", json.dumps(asdict(s))) for d, s in found])

    def _write(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            try:
                self._db.executemany(sql, rows)
                self._db.commit()
            except sqlite3.Error:
                self._db = None  # could not write after all (read-only): go on without it

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
