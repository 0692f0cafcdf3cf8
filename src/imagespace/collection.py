"""The on-disk collection: one SQLite database (WAL mode) of images, vectors and the model.

Every change is made in a transaction and every row carries the sequence number of the
change that last wrote it, so that the ANN index (a derived file) can always be brought up
to date from the rows, and a run killed at any moment leaves a consistent collection.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat as statmod
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import is_image_path

DB_FILE = "collection.sqlite"
SCHEMA_VERSION = 1


class CollectionError(Exception):
    """The collection cannot be used as asked (wrong model, locked, missing...)."""


@dataclass
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int
    digest: str
    width: int
    height: int
    format: str
    tags: list[tuple[str, float]]
    model: str

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "tags": [{"label": t, "score": s} for t, s in self.tags],
        }


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    moved: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    embedded: int = 0
    found: int = 0  # image files found under the paths
    skipped_failures: int = 0  # failed before and unchanged since: listed in failed, not retried

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.embedded / self.seconds, 2) if self.seconds > 0 else 0.0,
            "embedded": self.embedded,
            "found": self.found,
            "failed_before_not_retried": self.skipped_failures,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids are the ANN index's keys
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    tags TEXT NOT NULL,          -- JSON: [[label, probability], ...], best first
    embedding BLOB NOT NULL,     -- float32, L2-normalised
    model TEXT NOT NULL,         -- model_id of the model that made the embedding
    seq INTEGER NOT NULL,        -- change sequence number of the last write
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_digest ON images(digest);
CREATE INDEX IF NOT EXISTS images_seq ON images(seq);
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
-- The label the last `classify` run gave each image ("unknown" included), for --where "label = ...".
CREATE TABLE IF NOT EXISTS labels (id INTEGER PRIMARY KEY, label TEXT NOT NULL, score REAL NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, error TEXT NOT NULL, seen_at REAL NOT NULL
);
"""


class Collection:
    """A folder (``--db``) holding the SQLite database and the derived ANN index."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, readonly: bool = False):
        self.root = Path(root).resolve()
        db_path = self.root / DB_FILE
        if self.root.exists() and not self.root.is_dir():
            raise CollectionError(
                f"{root} is a file, not a collection folder: --db names the folder that holds "
                f"{DB_FILE} (default .imagespace)"
            )
        if not db_path.exists():
            if not create:
                raise CollectionError(
                    f"no collection at {self.root}: run 'imagespace index PATH --db {self.root}' first"
                )
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # e.g. --db names a file, or a folder we may not write
                raise CollectionError(f"cannot make a collection folder at {self.root}: {e.strerror or e}") from None
        self.db_path = db_path
        try:
            self.conn = sqlite3.connect(db_path, timeout=60, isolation_level=None, check_same_thread=False)
            self.conn.text_factory = _decode_text  # file names need not be UTF-8
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; never corrupt
            self.conn.execute("PRAGMA foreign_keys=ON")
            if not readonly:
                self.conn.executescript(_SCHEMA)
                if self.get_meta("schema_version") is None:
                    self.set_meta("schema_version", str(SCHEMA_VERSION))
                if self.get_meta("collection_id") is None:  # ties derived files to this database
                    self.set_meta("collection_id", uuid.uuid4().hex)
        except sqlite3.DatabaseError as e:
            raise CollectionError(f"{db_path} is not a usable collection: {e}") from None

    # -- small helpers -------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key,value) VALUES(?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def _next_seq(self) -> int:
        """Within a transaction: the sequence number for this change."""
        seq = int(self.get_meta("seq") or 0) + 1
        self.set_meta("seq", str(seq))
        return seq

    @property
    def seq(self) -> int:
        return int(self.get_meta("seq") or 0)

    @property
    def collection_id(self) -> str | None:
        return self.get_meta("collection_id")

    @property
    def model_id(self) -> str | None:
        return self.get_meta("model_id")

    @property
    def model_spec(self) -> str | None:
        """How to make the collection's model again: a registry name or a model folder."""
        return self.get_meta("model_spec")

    @property
    def dim(self) -> int | None:
        d = self.get_meta("dim")
        return int(d) if d else None

    def bind_model(self, model_id: str, spec: str, dim: int) -> None:
        with self.transaction():
            self.set_meta("model_id", model_id)
            self.set_meta("model_spec", spec)
            self.set_meta("dim", str(dim))

    def check_model(self, model_id: str) -> None:
        """Refuse vectors from any model but the one that made the collection."""
        if self.model_id is not None and self.model_id != model_id:
            raise CollectionError(
                f"this collection was made with model {self.model_id!r} ({self.model_spec}); "
                f"vectors from model {model_id!r} are not comparable with it. Query with the "
                f"collection's model, or re-index with --model to re-embed it."
            )

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def lock(self) -> _RunLock:
        """An exclusive lock for a writing run (indexing); a second run fails fast."""
        return _RunLock(self.root / "index.lock")

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.conn.execute("SELECT count(*) FROM images").fetchone()[0]

    def count(self, model_id: str | None = None) -> int:
        if model_id is None:
            return len(self)
        return self.conn.execute("SELECT count(*) FROM images WHERE model=?", (model_id,)).fetchone()[0]

    _ROW_COLUMNS = "id, path, size, mtime_ns, digest, width, height, format, tags, model"

    @staticmethod
    def _row(r: Sequence) -> Row:
        return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], [tuple(t) for t in json.loads(r[8])], r[9])

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        ids = [i for i in ids if -(2**63) <= i < 2**63]  # SQLite's integers; others match no row
        out: dict[int, Row] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT {self._ROW_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            for r in self.conn.execute(q, chunk):
                out[r[0]] = self._row(r)
        return out

    def row_by_path(self, path: str | os.PathLike[str]) -> Row | None:
        r = self.conn.execute(f"SELECT {self._ROW_COLUMNS} FROM images WHERE path=CAST(? AS TEXT)", (_sql_path(_abspath(path)),)).fetchone()
        return self._row(r) if r else None

    def all_rows(self) -> Iterator[Row]:
        for r in self.conn.execute(f"SELECT {self._ROW_COLUMNS} FROM images ORDER BY id"):
            yield self._row(r)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the current model's rows, optionally only ``ids``."""
        # One meta read: a re-scored search calls this once per query.
        model_id = self.model_id
        if ids is None:
            cur = self.conn.execute("SELECT id, embedding FROM images WHERE model=? ORDER BY id", (model_id,))
            pairs = cur.fetchall()
        else:
            pairs = []
            ids = list(ids)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                q = f"SELECT id, embedding FROM images WHERE model=? AND id IN ({','.join('?' * len(chunk))}) ORDER BY id"
                pairs.extend(self.conn.execute(q, [model_id, *chunk]).fetchall())
        if not pairs:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim or 0), dtype=np.float32)
        out_ids = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        vecs = np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.float32).reshape(len(pairs), -1)
        return out_ids, vecs

    def iter_vectors(self, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks, for exports and index builds that must not hold everything."""
        last = -1
        while True:
            pairs = self.conn.execute(
                "SELECT id, embedding FROM images WHERE model=? AND id>? ORDER BY id LIMIT ?", (self.model_id, last, chunk)
            ).fetchall()
            if not pairs:
                return
            ids = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
            yield ids, np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.float32).reshape(len(pairs), -1)
            last = int(ids[-1])

    def changes_since(self, seq: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Rows removed and rows written (with vectors) after change ``seq``."""
        removed = [r[0] for r in self.conn.execute("SELECT id FROM removed WHERE seq>?", (seq,))]
        pairs = self.conn.execute(
            "SELECT id, embedding FROM images WHERE seq>? AND model=? ORDER BY id", (seq, self.model_id)
        ).fetchall()
        stale = [r[0] for r in self.conn.execute("SELECT id FROM images WHERE seq>? AND model!=?", (seq, self.model_id))]
        ids = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        dim = self.dim or 0
        vecs = (
            np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.float32).reshape(len(pairs), -1)
            if pairs
            else np.zeros((0, dim), dtype=np.float32)
        )
        return removed + stale, ids, vecs

    def ids_written_since(self, seq: int) -> set[int]:
        """Ids of the rows written (added or changed) after change ``seq``."""
        return {r[0] for r in self.conn.execute("SELECT id FROM images WHERE seq>?", (seq,))}

    def failures(self) -> list[dict]:
        return [{"path": p, "error": e} for p, e in self.conn.execute("SELECT path, error FROM failures ORDER BY path")]

    def size_on_disk(self) -> dict[str, int]:
        """Bytes used in the collection folder: the database (with its WAL), and everything."""
        database = sum(p.stat().st_size for p in self.root.glob(DB_FILE + "*") if p.is_file())
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:  # removed while we walked
                    pass
        return {"database": database, "total": total}

    def last_indexed_at(self) -> float | None:
        """When an indexing run last finished (seconds since the epoch), if one ever did."""
        value = self.get_meta("last_indexed_at")
        if value is not None:
            return float(value)
        row = self.conn.execute("SELECT max(indexed_at) FROM images").fetchone()  # older collections
        return row[0] if row and row[0] is not None else None

    def _known_failures(self, roots: Sequence[str]) -> dict[str, tuple[int | None, int | None, str]]:
        """Recorded failures under ``roots``: path -> (size, mtime_ns, error)."""
        out: dict[str, tuple[int | None, int | None, str]] = {}
        for root in roots:
            under, params = _under("path", root)
            for path, size, mtime_ns, error in self.conn.execute(
                f"SELECT path, size, mtime_ns, error FROM failures WHERE {under}", params
            ):
                out[path] = (size, mtime_ns, error)
        return out

    # -- writing -------------------------------------------------------------------------

    def write_embedded(self, items: Sequence, failed: Sequence) -> None:
        """One batch of embedding results in one transaction (``embed.Embedded``/``Failed``)."""
        now = time.time()
        model = self.model_id
        with self.transaction():
            seq = self._next_seq()
            for e in items:
                self.conn.execute(
                    """INSERT INTO images(path,size,mtime_ns,digest,width,height,format,tags,embedding,model,seq,indexed_at)
                       VALUES(CAST(? AS TEXT),?,?,?,?,?,?,?,?,?,?,?)
                       ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,
                         digest=excluded.digest, width=excluded.width, height=excluded.height,
                         format=excluded.format, tags=excluded.tags, embedding=excluded.embedding,
                         model=excluded.model, seq=excluded.seq, indexed_at=excluded.indexed_at""",
                    (
                        _sql_path(e.file.path), e.file.size, e.file.mtime_ns, e.file.digest, e.width, e.height, e.format,
                        json.dumps([[t, s] for t, s in e.tags]), np.asarray(e.vector, dtype=np.float32).tobytes(),
                        model, seq, now,
                    ),
                )
                self.conn.execute("DELETE FROM failures WHERE path=CAST(? AS TEXT)", (_sql_path(e.file.path),))
            for f in failed:
                self.conn.execute(
                    """INSERT INTO failures(path,size,mtime_ns,error,seen_at) VALUES(CAST(? AS TEXT),?,?,?,?)
                       ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,
                         error=excluded.error, seen_at=excluded.seen_at""",
                    (_sql_path(f.path), f.size, f.mtime_ns, f.error, now),
                )

    def save_labels(self, labels: Iterable[tuple[int, str, float, str | None]]) -> int:
        """Replace every saved label with ``(id, label, score, reason)`` rows; returns how many."""
        rows = list(labels)
        with self.transaction():
            self.conn.execute("DELETE FROM labels")
            self.conn.executemany("INSERT INTO labels(id,label,score,reason) VALUES(?,?,?,?)", rows)
        return len(rows)

    def _remove_ids(self, ids: Sequence[int], seq: int) -> None:
        for i in ids:
            self.conn.execute("DELETE FROM images WHERE id=?", (i,))
            self.conn.execute("INSERT OR REPLACE INTO removed(id,seq) VALUES(?,?)", (i, seq))

    def prune_removed(self, upto_seq: int) -> None:
        """Forget removals that the saved index has already applied."""
        self.conn.execute("DELETE FROM removed WHERE seq<=?", (upto_seq,))

    # -- incremental sync ----------------------------------------------------------------

    def sync(
        self,
        paths: Sequence[str | os.PathLike[str]],
        model,
        *,
        model_spec: str,
        batch_size: int = 32,
        workers: int | None = None,
        progress: bool = False,
        embedder=None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        """Bring the collection up to date with ``paths`` (files or folders).

        New and changed files are embedded; files gone from a scanned folder leave the
        collection; a moved or renamed file keeps its row and vector. Results are committed
        batch by batch, so a killed run loses at most one batch of work.

        ``embedder`` replaces the embedding step only (the plan and the writes stay the
        same): a callable like :func:`embed.embed_files`, e.g. ``distributed.ray_embedder()``.
        ``on_progress(done, total)`` is called before the first batch and after each one.
        """
        from .embed import embed_files, file_digest

        started = time.perf_counter()
        report = SyncReport()
        with self.lock():
            if self.model_id != model.model_id:
                # A new collection, or re-indexing with another model: every row made by
                # another model counts as changed and is re-embedded in place, resumably.
                self.bind_model(model.model_id, model_spec, model.dim)
            scan = _scan(paths)
            report.failed.extend(scan.failed)
            report.found = len(scan.files)
            self._remember_roots(scan.roots)
            existing = self._rows_under(scan.roots)
            # A folder we could not list is unreadable, not empty: its rows stay.
            existing = {p: r for p, r in existing.items() if not any(_is_under(p, u) for u in scan.unlisted)}
            current = model.model_id

            changed: list[str] = []  # in the collection, to embed again
            added: list[str] = []
            new_paths: list[tuple[str, os.stat_result]] = []
            touched: list[tuple[int, int]] = []
            for path, st in scan.files.items():
                row = existing.pop(path, None)
                if row is None:
                    new_paths.append((path, st))
                    continue
                row_id, size, mtime_ns, digest, row_model = row
                if row_model == current and size == st.st_size and mtime_ns == st.st_mtime_ns:
                    report.unchanged += 1
                elif row_model == current and size == st.st_size and _same_digest(path, digest, file_digest):
                    touched.append((row_id, st.st_mtime_ns))  # same bytes, new mtime: nothing to embed
                    report.unchanged += 1
                else:
                    changed.append(path)
            # What is left of `existing` is gone from disk. A new file with the same bytes as
            # a vanished row is that file moved: keep its row instead of embedding it again.
            vanished = {row[3]: (p, row) for p, row in existing.items() if row[4] == current}
            vanished_sizes = {row[1] for _, row in vanished.values()}
            moves: list[tuple[int, str, int, int]] = []
            for path, st in new_paths:
                if st.st_size in vanished_sizes:
                    try:
                        digest = file_digest(path)
                    except Exception:  # noqa: BLE001 - unreadable now: the embed step reports it
                        digest = None
                    if digest in vanished:
                        old_path, row = vanished.pop(digest)
                        existing.pop(old_path, None)
                        moves.append((row[0], path, st.st_size, st.st_mtime_ns))
                        continue
                added.append(path)
            gone = [row[0] for row in existing.values()]
            if moves or touched or gone:
                with self.transaction():
                    seq = self._next_seq()
                    for row_id, path, size, mtime_ns in moves:
                        self.conn.execute(
                            "UPDATE images SET path=CAST(? AS TEXT), size=?, mtime_ns=?, seq=? WHERE id=?",
                            (_sql_path(path), size, mtime_ns, seq, row_id),
                        )
                    for row_id, mtime_ns in touched:
                        self.conn.execute("UPDATE images SET mtime_ns=? WHERE id=?", (mtime_ns, row_id))
                    self._remove_ids(gone, seq)
            report.moved = len(moves)
            report.removed = len(gone)
            self._forget_failures(scan)

            # A file that failed to decode and has not changed since (same size and mtime)
            # would fail again: it is listed, not retried, until it changes.
            remembered = self._known_failures(scan.roots)
            skipped: list[dict] = []
            retry: list[str] = []
            for path in changed + added:
                known_failure = remembered.get(path)
                st = scan.files[path]
                if known_failure is not None and _still_failing(known_failure, st):
                    skipped.append({"path": path, "error": known_failure[2], "retried": False})
                else:
                    retry.append(path)
            known = set(changed)
            to_embed = sorted(retry)
            if on_progress is not None:
                on_progress(0, len(to_embed))
            for batch in (embedder or embed_files)(
                to_embed, model, batch_size=batch_size, workers=workers, total=len(to_embed), progress=progress
            ):
                ok = [r for r in batch if not hasattr(r, "error")]
                bad = [r for r in batch if hasattr(r, "error")]
                self.write_embedded(ok, bad)
                report.embedded += len(ok)
                for r in ok:
                    if r.file.path in known:
                        report.updated += 1
                    else:
                        report.added += 1
                report.failed.extend({"path": r.path, "error": r.error} for r in bad)
                if on_progress is not None:
                    on_progress(report.embedded + len(report.failed) - len(scan.failed), len(to_embed))
            report.failed.extend(skipped)
            report.skipped_failures = len(skipped)
            # Files that fail now but were indexed before keep their old row: the photo is
            # still there on disk, even if we could not read it this time.
            # The index that searches will open (by size: in-memory graph or compressed on
            # disk), brought up to date now so that the first query does not pay for it.
            from .large_index import open_index

            open_index(self).save_if_changed()
            self.set_meta("last_indexed_at", repr(time.time()))
        report.seconds = time.perf_counter() - started
        return report

    def roots(self) -> list[str]:
        """The files and folders that indexing runs have scanned (absolute paths).

        Collections made before roots were recorded: the folders that hold their images.
        """
        recorded = self.get_meta("roots")
        if recorded:
            return json.loads(recorded)
        folders = sorted({os.path.dirname(r[0]) for r in self.conn.execute("SELECT path FROM images")})
        out: list[str] = []
        for folder in folders:  # sorted: a folder comes before the folders inside it
            if not any(folder.startswith(o.rstrip("/") + "/") for o in out):
                out.append(folder)
        return out

    def _remember_roots(self, roots: Sequence[str]) -> None:
        known = json.loads(self.get_meta("roots") or "[]")
        new = [r for r in roots if r not in known]
        if new:
            self.set_meta("roots", json.dumps(sorted(known + new)))

    def _forget_failures(self, scan: _Scan) -> None:
        """Failures recorded under the scanned roots for files that are no longer there."""
        stale = []
        for root in scan.roots:
            under, params = _under("path", root)
            for (path,) in self.conn.execute(f"SELECT path FROM failures WHERE {under}", params):
                if path not in scan.files:
                    stale.append(path)
        if stale:
            with self.transaction():
                self.conn.executemany("DELETE FROM failures WHERE path=CAST(? AS TEXT)", [(_sql_path(p),) for p in stale])

    def _rows_under(self, roots: Sequence[str]) -> dict[str, tuple[int, int, int, str, str]]:
        out: dict[str, tuple[int, int, int, str, str]] = {}
        for root in roots:
            under, params = _under("path", root)
            for r in self.conn.execute(f"SELECT path, id, size, mtime_ns, digest, model FROM images WHERE {under}", params):
                out[r[0]] = (r[1], r[2], r[3], r[4], r[5])
        return out


def _still_failing(known: tuple[int | None, int | None, str], st: os.stat_result) -> bool:
    """A recorded failure still holds for the file: same size and mtime, and not a failure
    of the model (a batch that failed in the model may pass on the next run)."""
    size, mtime_ns, error = known
    return size == st.st_size and mtime_ns == st.st_mtime_ns and not error.startswith(_TRANSIENT_ERRORS)


# Failures that say nothing about the file's bytes, always retried: the model failing on a
# batch, and the file not readable now (permissions change without changing the mtime).
_TRANSIENT_ERRORS = ("model failed on this batch", "unexpected error", "permission denied", "no such file", "cannot read file")


def _same_digest(path: str, digest: str, file_digest) -> bool:
    try:
        return file_digest(path) == digest
    except Exception:  # noqa: BLE001
        return False


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _abspath(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


# File names are bytes on Linux and need not be UTF-8; Python holds the bytes that are not
# as surrogate escapes, which SQLite's driver refuses. Such paths are bound as their raw
# bytes through CAST(? AS TEXT) and read back with the same escapes, so every name
# round-trips exactly and compares byte by byte.


def _sql_path(path: str | bytes) -> str | bytes:
    """A path as a parameter for ``CAST(? AS TEXT)``."""
    if isinstance(path, bytes):
        return path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _under(column: str, root: str) -> tuple[str, list]:
    """SQL for "``column`` is ``root`` or lies under it", as a byte range the index can use."""
    low = os.fsencode(root.rstrip("/") + "/")
    high = low[:-1] + b"0"  # "0" is the byte after "/": the range holds exactly the paths under root
    return f"({column}=CAST(? AS TEXT) OR ({column}>=CAST(? AS TEXT) AND {column}<CAST(? AS TEXT)))", [_sql_path(root), low, high]


@dataclass
class _Scan:
    files: dict[str, os.stat_result] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)  # roots that exist: rows under them may be removed
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed: rows under them stay


def _scan(paths: Sequence[str | os.PathLike[str]]) -> _Scan:
    """Every image file under ``paths``, with its stat; problems become ``failed`` entries.

    Symlinked folders are not followed (no loops); symlinked files are. Hidden files and
    folders (a leading dot) are skipped. A root that does not exist is reported and its
    rows are kept: an unmounted drive must not empty the collection.
    """
    scan = _Scan()
    for raw in paths:
        root = _abspath(raw)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            scan.failed.append({"path": root, "error": "no such file or folder"})
            continue
        except OSError as e:
            scan.failed.append({"path": root, "error": f"cannot read: {e.strerror or e}"})
            continue
        if statmod.S_ISDIR(st.st_mode):
            scan.roots.append(root)
            _walk(root, scan)
        elif statmod.S_ISREG(st.st_mode):
            scan.roots.append(root)
            scan.files[root] = st
        else:
            scan.failed.append({"path": root, "error": "not a regular file or folder"})
    return scan


def _walk(root: str, scan: _Scan) -> None:
    def onerror(e: OSError) -> None:
        scan.failed.append({"path": e.filename or root, "error": f"cannot list folder: {e.strerror or e}"})
        scan.unlisted.append(e.filename or root)

    for folder, dirs, files in os.walk(root, onerror=onerror, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if is_image_path(d):
                scan.failed.append({"path": os.path.join(folder, d), "error": "is a directory, not an image file"})
        for name in sorted(files):
            if name.startswith(".") or not is_image_path(name):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError as e:
                reason = "broken symbolic link" if os.path.islink(path) else f"cannot stat: {e.strerror or e}"
                scan.failed.append({"path": path, "error": reason})
                continue
            if not statmod.S_ISREG(st.st_mode):
                scan.failed.append({"path": path, "error": "not a regular file"})
                continue
            scan.files[path] = st


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as e:
                exc = e
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and _is_disk_full(exc):
            raise CollectionError(
                "no space left on the disk that holds the collection: this batch was not saved, "
                "everything committed before it is kept; free some space and run index again to finish"
            ) from None
        if exc_type is None:
            raise exc


def _is_disk_full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)


class _RunLock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise CollectionError(f"another indexing run is using {self.path.parent}; try again when it ends") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
