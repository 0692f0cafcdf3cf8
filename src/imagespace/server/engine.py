"""What one server process keeps open: the collection, one Searcher, the model, caches, jobs.

Every answer comes from the library; this module only decides what is shared between
requests (one Searcher and its index per process, the model loaded on first need) and
guards it for use from the threads that serve requests.
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

from ..analysis.map_grid import map_grid
from ..collection import Collection, CollectionError, Row
from ..indexing import sync
from ..models import create_model, resolve_model_spec
from ..search import Hit, QueryError, Searcher
from ..search.text import warm as warm_words

# Uploaded queries are decoded under a tighter pixel limit than files on disk: a request
# must never make the server hold gigabytes of pixels.
UPLOAD_MAX_PIXELS = 50_000_000
# A query is one image or one sentence: one thread answers it sooner on a busy machine
# (measured under load: 62 ms against 105 ms with two threads for an image, 52 against
# 751 ms for a sentence) and leaves the other cores to requests running beside it.
QUERY_THREADS = 1


class EmptyCollection(Exception):
    """Nothing to search yet."""


class Unavailable(Exception):
    """A feature whose library part is not installed in this build."""


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
        self.collection = Collection(self.db_path, create=False)
        self.root = self.collection.root
        self._search_lock = threading.RLock()  # the Searcher and its SQLite connection
        self._model_lock = threading.Lock()
        self._rows_lock = threading.Lock()
        self._rows_db = Collection(self.root, create=False, readonly=True)  # lookups for thumbnails
        self._searcher: Searcher | None = None
        self._searcher_model_id: str | None = None
        self._model = None
        self._cache: dict[tuple, Any] = {}
        self._cache_lock = threading.Lock()
        self._job = IndexJob()
        self._job_lock = threading.Lock()
        self._job_thread: threading.Thread | None = None
        self._text_lock = threading.Lock()
        self._roots: tuple[int, list[str]] | None = None
        self._text_ready = False
        self.warmed = False

    def close(self) -> None:
        # A running indexing run is not waited for: it commits batch by batch, and the next
        # run finishes what it had not.
        with self._search_lock, self._rows_lock:
            self.collection.close()
            self._rows_db.close()

    # -- shared objects ------------------------------------------------------------------

    def model(self):
        """The collection's embedding model, loaded on first need and kept."""
        with self._rows_lock:
            spec, model_id = self._rows_db.model_spec, self._rows_db.model_id
        with self._model_lock:
            if self._model is None or self._model.model_id != model_id:
                if spec is None:
                    raise EmptyCollection("the collection has no model yet: index some images first")
                model = create_model(spec, threads=QUERY_THREADS)
                if model.model_id != model_id:
                    raise CollectionError(
                        f"the collection's model {spec!r} now makes vectors of {model.model_id!r}, "
                        f"not {model_id!r}: re-index the collection"
                    )
                self._model = model
            return self._model

    def _searcher_locked(self) -> Searcher:
        coll = self.collection
        if coll.model_id is None or len(coll) == 0:
            raise EmptyCollection(f"the collection at {coll.root} is empty: index some images first")
        if self._searcher is None or self._searcher_model_id != coll.model_id:
            model = self._model if self._model is not None and self._model.model_id == coll.model_id else None
            self._searcher = Searcher(coll, model=model)
            self._searcher_model_id = coll.model_id
            self._keep_index(self._searcher)
        else:
            self._searcher.refresh()
        return self._searcher

    def _keep_index(self, searcher: Searcher) -> None:
        """Save an index that opening had to rebuild or catch up, so the next start loads it."""
        index = searcher.index
        if not index.dirty:
            return
        try:
            with self.collection.lock():  # not while an indexing run owns the collection
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
            except (QueryError, EmptyCollection, CollectionError):
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
        from ..images import decode

        model = self.model()
        decoded = decode(data, size=model.input_size, max_pixels=UPLOAD_MAX_PIXELS)
        raw = model.embed(decoded.pixels[None]).vectors[0]
        with self._rows_lock:  # the collection's pipeline (its mean), as its stored vectors had
            return self._rows_db.post_process(raw)

    def by_vector(self, vector: np.ndarray, **opts) -> list[Hit]:
        return self.with_searcher(lambda s: s.query(vector=vector, **opts).hits)

    def similar(self, row: Row, **opts) -> list[Hit]:
        return self.with_searcher(lambda s: s.query(like=row.path, **opts).hits)

    def by_text(self, text: str, *, k: int, offset: int, where: str | None, min_score: float | None) -> tuple[list[Hit], dict]:
        self._load_text_side()  # first use: load the models without holding up other queries
        answer = self.with_searcher(lambda s: s.query(text=text, k=k, offset=offset, where=where, min_score=min_score))
        return answer.hits, answer.extra

    def recommend(self, like: list[int], unlike: list[int], k: int) -> list[Hit]:
        recommend = _optional("imagespace.analysis.recommend", "recommend", "recommendations")
        # the process's open index: no reload of the index file per request
        return self.with_searcher(lambda s: recommend(s.collection, like=like, unlike=unlike, k=k, index=s.index))

    # -- analysis (own connection, cached until the rows change) -------------------------

    def duplicates(self, threshold: float | None) -> list[list[int]]:
        find_duplicates = _optional("imagespace.analysis.duplicates", "find_duplicates", "duplicate detection")
        return self._cached(("duplicates", threshold), lambda c: find_duplicates(c, threshold=threshold))

    def duplicate_groups(self, threshold: float | None) -> list[dict] | None:
        """Copy and retake groups with each member's reason; None where the duplicates module
        offers groups only."""
        try:
            report = _optional("imagespace.analysis.duplicates", "duplicate_report", "duplicate detection")
            explain = _optional("imagespace.analysis.duplicates", "explained_groups", "duplicate detection")
        except Unavailable:
            return None
        return self._cached(("duplicate_groups", threshold), lambda c: explain(report(c, threshold=threshold)))

    def clusters(self, k: int | None):
        cluster_collection = _optional("imagespace.analysis.clusters", "cluster_collection", "clustering")
        return self._cached(("clusters", k), lambda c: cluster_collection(c, k=k))

    def layout(self, max_points: int) -> tuple[np.ndarray, np.ndarray]:
        layout = _optional("imagespace.analysis.maps", "layout", "the map")
        return self._cached(("map", max_points), lambda c: layout(c, max_points=max_points))

    def map_grid(self, max_points: int, aspect: float, ids: list[int], xy: np.ndarray, tags: list):
        """The layout as a grid of the window's shape, with labelled regions (cached like the layout)."""
        key = ("map-grid", max_points, aspect, len(ids))
        seq = self.seq()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == seq:
                return hit[1]
        value = map_grid(xy, tags, aspect=aspect)
        with self._cache_lock:
            self._cache[key] = (seq, value)
        return value

    def _with_reader(self, fn: Callable[[Collection], Any]) -> Any:
        with Collection(self.root, create=False, readonly=True) as c:
            if c.model_id is None or len(c) == 0:
                raise EmptyCollection(f"the collection at {c.root} is empty: index some images first")
            return fn(c)

    def _cached(self, key: tuple, compute: Callable[[Collection], Any]) -> Any:
        seq = self.seq()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == seq:
                return hit[1]
        value = self._with_reader(compute)
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
                raise EmptyCollection("the collection has no folders yet: run 'imagespace index PATH' once first")
            with self.collection.lock():  # fails fast if another process is indexing
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
            with Collection(self.root, create=False) as c:
                spec = resolve_model_spec(None, c.model_spec)
                model = create_model(spec)  # all cores for batches (queries use one)
                report = sync(c, roots, model, model_spec=spec, progress=False, on_progress=progress)
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


def _optional(module: str, name: str, feature: str):
    """A library function that may not be part of this build yet."""
    import importlib

    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise  # the module is there but something it needs is not: a real error
        found = None
    if found is None or not hasattr(found, name):
        raise Unavailable(f"{feature} is not available in this version of imagespace ({module}.{name} is missing)")
    return getattr(found, name)
