"""What one server process keeps open: one ImageSpace, plus the locks and caches a server needs.

Every answer comes from the library: :class:`imagespace.ImageSpace` puts the collection, its
model and its searcher together and guards them (the empty-collection error, the model
check). This module only decides what is shared between requests (one ``ImageSpace`` with
its searcher and index per process, its model loaded on first need and run one thread per
query; a read-only connection for row lookups; results of analyses until the rows change)
and guards it for use from the threads that serve requests.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.page_map import page_map
from ..collection import Collection, CollectionError, Row
from ..images import decode
from ..search import Answer, Hit, QueryError, Searcher
from ..search.text import warm as warm_words
from ..space import ImageSpace

# Uploaded queries are decoded under a tighter pixel limit than files on disk: a request
# must never make the server hold gigabytes of pixels.
UPLOAD_MAX_PIXELS = 50_000_000
# A query is one image or one sentence: one thread answers it sooner on a busy machine
# (measured under load: 62 ms against 105 ms with two threads for an image, 52 against
# 751 ms for a sentence) and leaves the other cores to requests running beside it.
QUERY_THREADS = 1


class Busy(Exception):
    """An indexing run is already going."""


@dataclass
class IndexJob:
    """The state of the server's indexing run, as the API reports it."""

    state: str = "idle"  # idle | running | done | failed
    done: int = 0
    total: int | None = None
    roots: list[str] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    report: dict | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Engine:
    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        # The queries' ImageSpace: its searcher, index and SQLite connection are used under
        # _search_lock, one request at a time; its model from any thread.
        self.space = ImageSpace(self.db_path, create=False, threads=QUERY_THREADS)
        self.root = self.space.root
        self._search_lock = threading.RLock()
        self._searcher: Searcher | None = None  # the last one whose index was kept
        self._model = None  # the space's model, handed out without waiting for the search lock
        self._rows_lock = threading.Lock()
        self._rows_db = Collection(self.root, create=False, readonly=True)  # lookups for thumbnails, beside searches
        self._cache: dict[tuple, Any] = {}
        self._cache_lock = threading.Lock()
        self._job = IndexJob()
        self._job_lock = threading.Lock()
        self._job_thread: threading.Thread | None = None
        self._text_lock = threading.Lock()
        self._roots: tuple[int, list[str]] | None = None
        self._text_ready = False
        self.warmed = False

    def thumbnail_folder(self) -> Path:
        """Where thumbnails are kept: the collection folder, or, on read-only storage, a
        folder of the user's cache, one per collection."""
        if self.space.collection.writable:
            return self.root
        from ..models.cache import cache_dir

        return cache_dir() / "read-only-collections" / (self.space.collection.collection_id or "unknown")

    def close(self) -> None:
        # A running indexing run is not waited for: it commits batch by batch, and the next
        # run finishes what it had not.
        with self._search_lock, self._rows_lock:
            self.space.close()
            self._rows_db.close()

    # -- shared objects ------------------------------------------------------------------

    def model(self):
        """The collection's embedding model, loaded on first need and kept."""
        with self._rows_lock:
            model_id = self._rows_db.model_id
        model = self._model
        if model is None or model.model_id != model_id:
            with self._search_lock:  # the ImageSpace's connection is the searches'
                model = self._model = self.space.model
        return model

    def _searcher_locked(self) -> Searcher:
        searcher = self.space.searcher
        if searcher is not self._searcher:  # opened (or reopened for a new model) just now
            self._searcher = searcher
            self._keep_index(searcher)
        return searcher

    def _keep_index(self, searcher: Searcher) -> None:
        """Save an index that opening had to rebuild or catch up, so the next start loads it."""
        index = searcher.index
        if not index.dirty:
            return
        try:
            with self.space.collection.lock():  # not while an indexing run owns the collection
                index.save_if_changed()
        except (CollectionError, OSError):
            pass  # the run saves the index itself; a read-only folder just rebuilds next time

    def with_searcher(self, fn: Callable[[Searcher], Any]) -> Any:
        """Run ``fn(searcher)`` with the process's one Searcher, up to date with the rows."""
        with self._search_lock:
            return fn(self._searcher_locked())

    def warm(self) -> None:
        """Open the index and load the models ahead of the first query (best effort)."""
        def first_embedding() -> None:  # ONNX Runtime sets itself up on its first run
            model = self.model()
            model.embed(np.zeros((1, model.input_size, model.input_size, 3), dtype=np.uint8))

        for step in (lambda: self.with_searcher(lambda s: len(s.index)), first_embedding, self._load_text_side):
            try:
                step()
            except Exception:  # noqa: BLE001 - warming is an optimisation; queries report real errors
                pass
        self.warmed = True

    def _load_text_side(self) -> None:
        """Load the words-to-vectors side once, outside the search lock (it takes seconds)."""
        with self._text_lock:
            if self._text_ready:
                return
            try:
                warm_words()  # WordNet's words, outside the search lock (the sentence model waits for its first use)
                torch = sys.modules.get("torch")
                if torch is not None:  # the words side runs in PyTorch: one sentence, one thread
                    torch.set_num_threads(QUERY_THREADS)
                self.model()
                self.with_searcher(lambda s: s.query(text="daisy", k=1))
            except (QueryError, CollectionError):
                pass
            self._text_ready = True

    # -- rows ----------------------------------------------------------------------------

    def row(self, row_id: int) -> Row | None:
        with self._rows_lock:
            return self._rows_db.rows([row_id]).get(row_id)

    def rows(self, ids: list[int]) -> dict[int, Row]:
        with self._rows_lock:
            return self._rows_db.rows(ids)

    def page_of_rows(self, offset: int, limit: int) -> list[Row]:
        """Rows in the order they were added, for browsing."""
        with self._rows_lock:
            return list(itertools.islice(self._rows_db.all_rows(), offset, offset + limit))

    def info(self) -> dict:
        with self._rows_lock:
            c = self._rows_db
            return {
                "images": len(c),
                "model_id": c.model_id,
                "model": c.model_spec,
                "dim": c.dim,
                "roots": c.roots(),
                "failures": len(c.failures()),
                "seq": c.seq,
            }

    def roots(self) -> list[str]:
        """The collection's folders (asked for by every image request: kept until the rows change)."""
        with self._rows_lock:
            seq = self._rows_db.seq
            if self._roots is None or self._roots[0] != seq:
                self._roots = (seq, self._rows_db.roots())
            return self._roots[1]

    def seq(self) -> int:
        with self._rows_lock:
            return self._rows_db.seq

    # -- queries -------------------------------------------------------------------------

    def embed_upload(self, data: bytes) -> np.ndarray:
        """The query vector of uploaded image bytes (``ImageError`` when they are not an image)."""
        model = self.model()
        decoded = decode(data, size=model.input_size, max_pixels=UPLOAD_MAX_PIXELS)
        raw = model.embed(decoded.pixels[None]).vectors[0]
        with self._rows_lock:  # the collection's pipeline (its mean), as its stored vectors had
            return self._rows_db.post_process(raw)

    def query(self, **opts) -> Answer:
        """:meth:`ImageSpace.query` under the search lock (``vector=``, ``like=``, ``text=`` ...)."""
        if opts.get("text") is not None:
            self._load_text_side()  # first use: load the models without holding up other queries
        with self._search_lock:
            return self._searcher_locked().query(**opts)

    def similar(self, row: Row, **opts) -> list[Hit]:
        return self.query(like=row.path, **opts).hits

    def cosine_meaning(self, *, by_image: bool = False) -> dict:
        """What image-search scores mean in this collection, and its weak line (the same words
        as the command line's); ``by_image``: for a search by an image, which the collection
        may expand (QE orders the answer, the scores stay plain)."""
        with self._search_lock:
            searcher = self._searcher_locked()
            expanded = by_image and searcher.collection.pipeline.expands_by_default
            return searcher.judge_cosines([], expanded=expanded).to_dict()

    def recommend(self, like: list[int], unlike: list[int], k: int) -> list[Hit]:
        with self._search_lock:
            searcher = self._searcher_locked()
            hits = self.space.recommend(like, unlike, k=k)  # the process's open index
            searcher.judge_cosines(hits)  # cosines: the weak ones marked, as the command line does
            return hits

    # -- analysis (own connection, cached until the rows change) -------------------------

    def duplicate_groups(self, threshold: float | None) -> list[dict]:
        """Copy and retake groups of row ids, each member with its reason."""
        return self._cached(("duplicate_groups", threshold), lambda s: s.duplicate_groups(threshold).groups)

    def clusters(self, k: int | None):
        return self._cached(("clusters", k), lambda s: s.clusters(k))

    def layout(self, max_points: int) -> tuple[np.ndarray, np.ndarray]:
        return self._cached(("map", max_points), lambda s: s.layout(max_points))

    def page_map(self, max_points: int, aspect: float, ids: list[int], xy: np.ndarray, tags: list):
        """The layout as a grid of the window's shape, with labelled regions (cached like the layout)."""
        key = ("page-map", max_points, aspect, len(ids))
        seq = self.seq()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == seq:
                return hit[1]
        value = page_map(xy, tags, aspect=aspect)
        with self._cache_lock:
            self._cache[key] = (seq, value)
        return value

    def _cached(self, key: tuple, compute: Callable[[ImageSpace], Any]) -> Any:
        seq = self.seq()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == seq:
                return hit[1]
        # a connection of its own: an analysis takes seconds, and searches go on meanwhile
        with ImageSpace(self.root, create=False, readonly=True) as reader:
            value = compute(reader)
        with self._cache_lock:
            self._cache[key] = (seq, value)
        return value

    # -- indexing runs -------------------------------------------------------------------

    def job(self) -> IndexJob:
        with self._job_lock:
            return IndexJob(**asdict(self._job))

    def start_indexing(self) -> IndexJob:
        """Start an indexing run of the collection's folders in a background thread."""
        with self._job_lock:
            if self._job.state == "running":
                raise Busy("an indexing run is already going: follow it at GET /api/index")
            roots = self.roots()
            if not roots:
                raise CollectionError("the collection has no folders yet: run 'imagespace index PATH' once first")
            with self.space.collection.lock():  # fails fast if another process is indexing
                pass
            self._job = IndexJob(state="running", roots=roots, started_at=time.time())
            self._job_thread = threading.Thread(target=self._run_indexing, args=(roots,), name="imagespace-index", daemon=True)
            self._job_thread.start()
            return IndexJob(**asdict(self._job))

    def _run_indexing(self, roots: list[str]) -> None:
        def progress(done: int, total: int) -> None:
            with self._job_lock:
                self._job.done, self._job.total = done, total

        try:
            # its own ImageSpace: its own connection, and a model on all cores for batches
            # (queries use one); the queries' searcher catches up with the rows on its next use
            with ImageSpace(self.root, create=False) as run:
                report = run.index(roots, progress=False, on_progress=progress)
            with self._job_lock:
                self._job.state, self._job.report = "done", report.to_dict()
        except Exception as e:  # noqa: BLE001 - the run's failure is reported, never raised into a thread
            with self._job_lock:
                self._job.state, self._job.error = "failed", _reason(e)
        finally:
            with self._job_lock:
                self._job.finished_at = time.time()


def _reason(e: Exception) -> str:
    if isinstance(e, CollectionError | OSError | ValueError):
        return str(e)
    return f"{type(e).__name__}: {e}"
