"""The on-disk collection: one SQLite database (WAL mode) of images, vectors and the model.

Rows only: every SQL statement of the package is here, behind named methods; this module
imports no index and no model. Indexing runs (:mod:`imagespace.indexing`) decide what to
write, indexes (:mod:`imagespace.index`) and searches (:mod:`imagespace.search`) read.

Every change is made in a transaction and every row carries the sequence number of the
change that last wrote it, so that the ANN index (a derived file) can always be brought up
to date from the rows, and a run killed at any moment leaves a consistent collection.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .vector_pipeline import DEFAULT_KIND, KINDS, RAW, VectorPipeline

DB_FILE = "collection.sqlite"
SCHEMA_VERSION = 1


class CollectionError(Exception):
    """The collection cannot be used as asked (wrong model, locked, missing...)."""


class EmptyCollectionError(CollectionError):
    """The collection holds no embedded image yet: nothing to search or analyse.

    The one error for it everywhere (Python, the command line, the API), raised by
    :meth:`Collection.require_images`.
    """


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
    embedding BLOB NOT NULL,     -- float32, L2-normalised, after the collection's pipeline (meta "pipeline")
    raw BLOB,                    -- float32, the network's own vector; NULL in raw collections (it is the embedding)
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
                    f"no collection at {self.root}: for a collection elsewhere give --db DIR (or set the "
                    f"IMAGESPACE_DB environment variable to its folder); to make one here, run "
                    f"'imagespace index PATH --db {self.root}'"
                )
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # e.g. --db names a file, or a folder we may not write
                raise CollectionError(f"cannot make a collection folder at {self.root}: {e.strerror or e}") from None
        self.db_path = db_path
        # Why the collection cannot be written (read-only storage, or a folder or database
        # this user may not write), or None. Reading works either way; writing says this.
        self.read_only_reason = _read_only_reason(self.root, db_path)
        if self.read_only_reason is not None and not db_path.exists():
            self.require_writable("making a collection")
        try:
            if self.read_only_reason is None:
                self.conn = sqlite3.connect(db_path, timeout=60, isolation_level=None, check_same_thread=False)
            else:
                self.conn = _connect_read_only(db_path)
            self.conn.text_factory = _decode_text  # file names need not be UTF-8
            if self.read_only_reason is None:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint; never corrupt
            self.conn.execute("PRAGMA foreign_keys=ON")
            if not readonly and self.read_only_reason is None:
                self.conn.executescript(_SCHEMA)
                columns = {r[1] for r in self.conn.execute("PRAGMA table_info(images)")}
                if "raw" not in columns:  # collections made before the vector pipeline
                    self.conn.execute("ALTER TABLE images ADD COLUMN raw BLOB")
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

    def try_set_meta(self, key: str, value: str) -> bool:
        """``set_meta`` if the database can be written at once: never waits for a run that holds
        the write lock, and fails quietly on a read-only collection (a derived value, such as
        the weak line, is then simply measured again next time)."""
        try:
            self.conn.execute("PRAGMA busy_timeout = 0")
            try:
                self.set_meta(key, value)
            finally:
                self.conn.execute("PRAGMA busy_timeout = 60000")
        except sqlite3.Error:
            return False
        return True

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
        spec = self.get_meta("model_spec")
        if spec is None and self.model_id:
            # A collection from before specs were kept: its model id starts with the network's
            # name, and it must keep that network whatever the default has become since.
            prefix = self.model_id.split("/", 1)[0]
            spec = prefix if prefix.startswith("efficientnet-") else None
        return spec

    @property
    def dim(self) -> int | None:
        d = self.get_meta("dim")
        return int(d) if d else None

    def bind_model(self, model_id: str, spec: str, dim: int, pipeline: str | None = None) -> None:
        """Embed with ``model_id`` from now on (a new collection, or re-embedding with another
        model). The vector pipeline starts afresh with it (``pipeline``: a kind of
        :mod:`imagespace.vector_pipeline`, default the default): a mean learnt on another
        network's vectors means nothing for the new ones."""
        kind = pipeline or DEFAULT_KIND
        if kind not in KINDS:
            raise CollectionError(f"unknown vector pipeline {kind!r}: use one of {', '.join(KINDS)}")
        with self.transaction():
            self.set_meta("model_id", model_id)
            self.set_meta("model_spec", spec)
            self.set_meta("dim", str(dim))
            self.set_meta("pipeline", VectorPipeline(kind).to_json())

    # -- the vector pipeline (see imagespace.vector_pipeline) ------------------------------

    _pipeline_cache: tuple[str | None, VectorPipeline] | None = None

    @property
    def pipeline(self) -> VectorPipeline:
        """The post-processing every stored vector of the current model went through.
        Collections made before it existed have none: ``raw``, as they always answered."""
        text = self.get_meta("pipeline")
        cached = self._pipeline_cache
        if cached is None or cached[0] != text:
            cached = self._pipeline_cache = (text, VectorPipeline.from_json(text))
        return cached[1]

    def post_process(self, raw: np.ndarray) -> np.ndarray:
        """Query vectors comparable with the stored ones, from the network's raw vectors."""
        return self.pipeline.apply(raw)

    def refit_pipeline(self, force: bool = False) -> bool:
        """Learn the pipeline again when the collection has outgrown it (or ``force``), and
        rewrite every stored vector under it, all in one transaction: readers see either the
        old mean and old vectors or the new ones, never a mix, whatever kills the process.
        Every rewritten row gets the change's sequence number, so the index catches up from
        the rows as after any change. Returns whether it refitted."""
        with self.transaction():
            current = self.pipeline
            model = self.model_id
            count = self.count(model)
            if not (current.wants_refit(count) or (force and current.kind != RAW and count)):
                return False
            total = np.zeros(self.dim or 0, dtype=np.float64)
            for _, vecs in self._iter_raw(model):
                total += vecs.sum(0, dtype=np.float64)
            fitted = current.refitted(total, count)
            seq = self._next_seq()
            for ids, vecs in self._iter_raw(model):
                stored = fitted.apply(vecs)
                self.conn.executemany(
                    "UPDATE images SET embedding=?, seq=? WHERE id=?",
                    [(v.tobytes(), seq, int(i)) for i, v in zip(ids, stored)],
                )
            self.set_meta("pipeline", fitted.to_json())
            return True

    def _iter_raw(self, model_id: str | None, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, raw network vectors) of ``model_id``'s rows, in chunks."""
        yield from self._vector_chunks("coalesce(raw, embedding)", model_id, chunk)

    def raw_vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, the network's own vectors) of the current model's rows ``ids`` (for exports)."""
        pairs = []
        ids = list(ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = (f"SELECT id, coalesce(raw, embedding) FROM images WHERE model=? AND id IN "
                 f"({','.join('?' * len(chunk))}) ORDER BY id")
            pairs.extend(self.conn.execute(q, [self.model_id, *chunk]).fetchall())
        if not pairs:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim or 0), dtype=np.float32)
        out_ids = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        return out_ids, np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.float32).reshape(len(pairs), -1)

    def require_images(self) -> None:
        """Raise :class:`EmptyCollectionError` unless the collection holds embedded images."""
        if self.model_id is None or len(self) == 0:
            raise EmptyCollectionError(f"the collection at {self.root} is empty: index some images first")

    def check_model(self, model_id: str) -> None:
        """Refuse vectors from any model but the one that made the collection."""
        if self.model_id is not None and self.model_id != model_id:
            raise CollectionError(
                f"this collection was made with model {self.model_id!r} ({self.model_spec}); "
                f"vectors from model {model_id!r} are not comparable with it. Query with the "
                f"collection's model, or re-index with --model to re-embed it."
            )

    @property
    def writable(self) -> bool:
        """Whether changes can be saved (False on read-only storage: searches still work)."""
        return self.read_only_reason is None

    def require_writable(self, doing: str = "this command") -> None:
        """Refuse a change up front, saying the collection is read-only and why."""
        if self.read_only_reason is not None:
            raise CollectionError(
                f"the collection at {self.root} is read-only ({self.read_only_reason}): {doing} must write to it. "
                "'imagespace search', 'info', 'duplicates' and 'clusters' read it as it is; to change it, copy the folder somewhere writable "
                "and use --db to point at the copy"
            )

    def transaction(self) -> _Transaction:
        self.require_writable("saving changes")
        return _Transaction(self.conn)

    def lock(self) -> _RunLock:
        """An exclusive lock for a writing run (indexing); a second run fails fast."""
        self.require_writable("indexing")
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
        yield from self._vector_chunks("embedding", self.model_id, chunk)

    def _vector_chunks(self, column: str, model_id: str | None, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors of ``column``) of ``model_id``'s rows in id order, ``chunk`` at a time
        (keyset paging: each chunk starts after the last id, so rows need not fit in memory)."""
        last = -1
        while True:
            pairs = self.conn.execute(
                f"SELECT id, {column} FROM images WHERE model=? AND id>? ORDER BY id LIMIT ?", (model_id, last, chunk)
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

    def known_failures(self, roots: Sequence[str]) -> dict[str, tuple[int | None, int | None, str]]:
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
            # Read inside the transaction: a refit cannot slip in between, so every vector
            # of the batch is stored under the pipeline the meta table names.
            pipeline = self.pipeline
            keep_raw = pipeline.kind != RAW
            for e in items:
                raw = np.asarray(e.vector, dtype=np.float32)
                self.conn.execute(
                    """INSERT INTO images(path,size,mtime_ns,digest,width,height,format,tags,embedding,raw,model,seq,indexed_at)
                       VALUES(CAST(? AS TEXT),?,?,?,?,?,?,?,?,?,?,?,?)
                       ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,
                         digest=excluded.digest, width=excluded.width, height=excluded.height,
                         format=excluded.format, tags=excluded.tags, embedding=excluded.embedding, raw=excluded.raw,
                         model=excluded.model, seq=excluded.seq, indexed_at=excluded.indexed_at""",
                    (
                        _sql_path(e.file.path), e.file.size, e.file.mtime_ns, e.file.digest, e.width, e.height, e.format,
                        json.dumps([[t, s] for t, s in e.tags]), pipeline.apply(raw).tobytes(),
                        raw.tobytes() if keep_raw else None, model, seq, now,
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

    def write_file_changes(
        self,
        moved: Sequence[tuple[int, str, int, int]] = (),
        touched: Sequence[tuple[int, int]] = (),
        removed: Sequence[int] = (),
    ) -> None:
        """One change of an indexing run's plan, in one transaction.

        ``moved``: (row id, new path, size, mtime_ns) of files renamed or moved, which keep
        their row and vector; ``touched``: (row id, mtime_ns) of files whose bytes did not
        change; ``removed``: ids of rows whose files are gone.
        """
        if not (moved or touched or removed):
            return
        with self.transaction():
            seq = self._next_seq()
            for row_id, path, size, mtime_ns in moved:
                self.conn.execute(
                    "UPDATE images SET path=CAST(? AS TEXT), size=?, mtime_ns=?, seq=? WHERE id=?",
                    (_sql_path(path), size, mtime_ns, seq, row_id),
                )
            for row_id, mtime_ns in touched:
                self.conn.execute("UPDATE images SET mtime_ns=? WHERE id=?", (mtime_ns, row_id))
            for i in removed:
                self.conn.execute("DELETE FROM images WHERE id=?", (i,))
                self.conn.execute("INSERT OR REPLACE INTO removed(id,seq) VALUES(?,?)", (i, seq))

    def save_labels(self, labels: Iterable[tuple[int, str, float, str | None]]) -> int:
        """Replace every saved label with ``(id, label, score, reason)`` rows; returns how many."""
        rows = list(labels)
        with self.transaction():
            self.conn.execute("DELETE FROM labels")
            self.conn.executemany("INSERT INTO labels(id,label,score,reason) VALUES(?,?,?,?)", rows)
        return len(rows)

    def saved_labels(self) -> dict[str, tuple[str, float]]:
        """``path -> (label, score)`` of the rows still in the collection that a ``classify``
        run labelled (see :meth:`save_labels`)."""
        rows = self.conn.execute(
            "SELECT i.path, l.label, l.score FROM labels l JOIN images i ON i.id = l.id ORDER BY i.path")
        return {path: (label, float(score)) for path, label, score in rows}

    def prune_removed(self, upto_seq: int) -> None:
        """Forget removals that the saved index has already applied."""
        self.conn.execute("DELETE FROM removed WHERE seq<=?", (upto_seq,))

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

    def remember_roots(self, roots: Sequence[str]) -> None:
        """Add ``roots`` (absolute paths) to the folders and files an indexing run scans."""
        known = json.loads(self.get_meta("roots") or "[]")
        new = [r for r in roots if r not in known]
        if new:
            self.set_meta("roots", json.dumps(sorted(known + new)))

    def forget_failures_under(self, roots: Sequence[str], present: Container[str]) -> None:
        """Forget failures recorded under ``roots`` for files not in ``present`` (gone from disk)."""
        stale = []
        for root in roots:
            under, params = _under("path", root)
            for (path,) in self.conn.execute(f"SELECT path FROM failures WHERE {under}", params):
                if path not in present:
                    stale.append(path)
        if stale:
            with self.transaction():
                self.conn.executemany("DELETE FROM failures WHERE path=CAST(? AS TEXT)", [(_sql_path(p),) for p in stale])

    def rows_under(self, roots: Sequence[str]) -> dict[str, tuple[int, int, int, str, str]]:
        """path -> (id, size, mtime_ns, digest, model) of every row at or under ``roots``."""
        out: dict[str, tuple[int, int, int, str, str]] = {}
        for root in roots:
            under, params = _under("path", root)
            for r in self.conn.execute(f"SELECT path, id, size, mtime_ns, digest, model FROM images WHERE {under}", params):
                out[r[0]] = (r[1], r[2], r[3], r[4], r[5])
        return out

    # -- selections (ids only; the vectors are read by ``vectors``) ------------------------

    def ids(self) -> list[int]:
        """Ids of the rows embedded with the collection's current model, in id order."""
        return [r[0] for r in self.conn.execute("SELECT id FROM images WHERE model=? ORDER BY id", (self.model_id,))]

    def ids_where(self, condition: str, params: Sequence = ()) -> list[int]:
        """Ids of the current model's rows passing ``condition``, a parameterised SQL
        condition over ``images`` as :func:`imagespace.search.filters.compile_where` makes it."""
        return [r[0] for r in self.conn.execute(
            f"SELECT id FROM images WHERE model=? AND ({condition})", [self.model_id, *params])]

    def ids_tagged(self, labels: Sequence[str], condition: str = "1", params: Sequence = ()) -> list[int]:
        """Ids of the current model's rows with one of ``labels`` (any case) among their tags,
        passing ``condition`` as in :meth:`ids_where`."""
        labels = [str(label).lower() for label in labels]
        if not labels:
            return []
        cur = self.conn.execute(
            # EXISTS, not a join: json_each has a "path" column of its own that the condition would hit
            f"""SELECT id FROM images WHERE model=? AND EXISTS (SELECT 1 FROM json_each(images.tags) AS t
                WHERE lower(json_extract(t.value,'$[0]')) IN ({','.join('?' * len(labels))})) AND ({condition})""",
            [self.model_id, *labels, *params],
        )
        return [r[0] for r in cur]

    def ids_at_paths(self, paths: Sequence[str]) -> list[tuple[int, str]]:
        """(id, path) of the current model's rows at ``paths`` (at most 500 at a time)."""
        if not paths:
            return []
        return list(self.conn.execute(
            f"SELECT id, path FROM images WHERE model=? AND path IN ({','.join('?' * len(paths))})",
            [self.model_id, *paths]))

    def iter_tags(self, model_id: str | None = None) -> Iterator[tuple[int, list]]:
        """(id, [[label, probability], ...]) of every row of ``model_id`` (default: the
        current model); rows whose stored tags cannot be read are skipped."""
        for row_id, tags in self.conn.execute("SELECT id, tags FROM images WHERE model=?", (model_id or self.model_id,)):
            try:
                yield row_id, json.loads(tags)
            except ValueError:
                continue

    def sample_ids(self, n: int) -> list[int]:
        """Up to ``n`` ids of the current model's rows, chosen at random."""
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM images WHERE model=? ORDER BY random() LIMIT ?", (self.model_id, n))]

    def same_digest_groups(self) -> list[list[int]]:
        """Ids of rows with byte-identical files (the same digest), in groups of two or more."""
        return [[int(i) for i in ids_csv.split(",")] for (ids_csv,) in self.conn.execute(
            "SELECT group_concat(id) FROM images GROUP BY digest HAVING count(*) > 1")]

    # -- checking (see :mod:`imagespace.integrity`) ----------------------------------------

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Every read inside sees the database as of one moment (a writer may run meanwhile)."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def integrity_problems(self) -> list[str]:
        """SQLite's own check of the database file: empty when it is sound."""
        lines = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        return [] if lines == ["ok"] else lines

    def failure_count(self) -> int:
        """How many files the indexing runs could not read (see :meth:`failures`)."""
        return self.conn.execute("SELECT count(*) FROM failures").fetchone()[0]

    def iter_raw_vectors(self, chunk: int = 2000) -> Iterator[list[tuple[int, str, bytes | None]]]:
        """(id, path, stored vector bytes) of the current model's rows, unchecked, in chunks."""
        last = -1
        while True:
            rows = self.conn.execute(
                "SELECT id, path, embedding FROM images WHERE model=? AND id>? ORDER BY id LIMIT ?",
                (self.model_id, last, chunk),
            ).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]


def _read_only_reason(root: Path, db_path: Path) -> str | None:
    """Why nothing can be written under ``root`` (a WAL database writes two files beside
    itself, so the folder must be writable too), or None when it can."""
    if os.access(root, os.W_OK) and (not db_path.exists() or os.access(db_path, os.W_OK)):
        return None
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return "it is on read-only storage"
    except OSError:
        pass
    return "this user may not write to it"


def _connect_read_only(db_path: Path) -> sqlite3.Connection:
    """The database opened for reading only, creating no file beside it.

    A WAL database is normally read through its -shm file, which a reader must be able to
    create. When the -wal and -shm files are both there (the collection was not closed
    cleanly, or a writer with rights is at work) SQLite reads them as they are; when not,
    the database file holds everything and is opened as immutable: no locks, no side files.
    """
    from urllib.parse import quote

    side = [db_path.with_name(db_path.name + s).exists() for s in ("-wal", "-shm")]
    uri = f"file:{quote(os.fsencode(str(db_path)))}?mode=ro" + ("" if all(side) else "&immutable=1")
    return sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)


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
