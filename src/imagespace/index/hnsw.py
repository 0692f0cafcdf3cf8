"""The in-memory index (usearch HNSW) over a collection's vectors.

Up to ``EXACT_LIMIT`` vectors every query is compared with every vector (exact). Large
collections (over ``REDUCE_ABOVE``) keep a compact graph instead: vectors projected onto
their top ``REDUCED_DIM`` principal directions (uncentred PCA fitted on the collection, so
inner products approximate cosines), stored as int8 (usearch scales each projection to unit
length and then to +-127): about 0.5 KB per vector with the graph in memory, against 5.6 KB
for float32 at 1,280 dimensions. The graph only proposes candidates: they are scored again
with the rows' exact vectors, so scores stay exact cosine similarities whatever the size.
Those vectors come from a snapshot file beside the index (:mod:`imagespace.index.rescore`), and
from SQLite for rows written since the snapshot.

The index is a derived file beside the database. It records the change sequence number it
has applied; opening it replays the rows written and removed since then, and a missing,
corrupt or inconsistent file is rebuilt from the rows, so it can never give answers that
the rows do not support.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..collection import Collection, CollectionError
from .tuning import SampleTruth, Tuning, describe, exact_tuning, measured_truth, sample_truth, tune_graph
from .rescore import MAX_FRESH_SHARE, RESCORE_FILE, RescoreStore, write_snapshot

INDEX_FILE = "vectors.usearch"
INDEX_META = "vectors.json"
# Below this many vectors a query compares against every vector (exact, still ~ms);
# above it the HNSW graph answers.
EXACT_LIMIT = 20_000
INDEX_FORMAT = 1
PROJECTION_FILE = "vectors.projection.npy"
# Above this many vectors a new index is built reduced (see the module's docstring); a
# reduced index that shrinks back to EXACT_LIMIT or fewer is rebuilt full and exact.
REDUCE_ABOVE = 2 * EXACT_LIMIT
REDUCED_DIM = 128
PROJECTION_SAMPLE = 10_000  # vectors the projection is fitted on
_RERANK_BYTES = 32 << 20  # the candidates' vectors gathered at once when many queries rerank

log = logging.getLogger(__name__)


@dataclass
class IndexSettings:
    metric: str = "cos"
    dtype: str = "f32"
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    reduce_dim: int = 0  # > 0: the graph holds projections to this many dimensions
    rerank: int = 0  # with reduce_dim: candidates per query re-scored exactly, at least k


def settings_for(count: int) -> IndexSettings:
    """The representation for a collection of ``count`` vectors."""
    if count > REDUCE_ABOVE:
        # 128-d int8, ef 32, 24 re-scored: at 1M vectors recall@10 0.982 and a whole search
        # of a collection p50 0.61 ms, 531 B a vector in RAM; the 256-d float16 graph it
        # replaces needed ef 48 and 1.56 ms (graph and re-score alone) for the same recall,
        # at 800 B (benchmarks/bench_search.py, one run of each).
        return IndexSettings(metric="ip", dtype="i8", connectivity=16, expansion_add=128,
                             expansion_search=32, reduce_dim=REDUCED_DIM, rerank=24)
    return IndexSettings()


def _with_search_knobs(saved: IndexSettings, chosen: IndexSettings | None, tuning: Tuning | None = None) -> IndexSettings:
    """A saved index's structure with the search-time settings its self-check chose (else
    those of this code, or the caller's): ef and the number re-scored can change without
    rebuilding anything."""
    if chosen is None and tuning is not None and not tuning.exact:
        saved.expansion_search = int(tuning.knobs.get("expansion_search", saved.expansion_search))
        saved.rerank = int(tuning.knobs.get("rerank", saved.rerank))
        return saved
    knobs = chosen or (settings_for(REDUCE_ABOVE + 1) if saved.reduce_dim else IndexSettings())
    saved.expansion_search, saved.rerank = knobs.expansion_search, knobs.rerank
    return saved


def _fits(settings: IndexSettings, count: int) -> bool:
    return count > EXACT_LIMIT if settings.reduce_dim else count <= REDUCE_ABOVE


def _describe(settings: IndexSettings, count: int, tuning: Tuning | None) -> dict:
    if not settings.reduce_dim and count <= EXACT_LIMIT:
        return describe("exact", count, {}, tuning)
    knobs = {"dtype": settings.dtype, "expansion_search": settings.expansion_search}
    if settings.reduce_dim:
        knobs.update(reduce_dim=settings.reduce_dim, rerank=settings.rerank)
    return describe("hnsw", count, knobs, tuning)


def saved_description(collection: Collection) -> dict | None:
    """What the saved index's description says (kind, knobs, measured recall), without
    opening or building anything; None when there is none. A saved index without a
    measurement searches with this code's knobs, as ``VectorIndex.open`` would."""
    try:
        meta = json.loads((collection.root / INDEX_META).read_text())
        tuning = Tuning.from_dict(meta.get("tuning"))
        settings = _with_search_knobs(IndexSettings(**meta.get("settings", {})), None, tuning)
        return _describe(settings, int(meta.get("count", 0)), tuning)
    except (OSError, ValueError, TypeError):
        return None


def fit_projection(sample: np.ndarray, dim: int) -> np.ndarray:
    """(d, dim) float32: the top ``dim`` right singular vectors of ``sample`` (not centred,
    so that projected inner products approximate the original ones)."""
    sample = np.asarray(sample, dtype=np.float32)
    gram = (sample.T @ sample).astype(np.float64) / max(len(sample), 1)
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][:dim]
    return np.ascontiguousarray(vectors[:, top], dtype=np.float32)


def load_projection(collection: Collection, meta: dict, settings: IndexSettings) -> np.ndarray | None:
    """The saved PCA projection of a reduced index, checked against its recorded checksum."""
    if not settings.reduce_dim:
        return None
    path = collection.root / PROJECTION_FILE
    if meta.get("projection_digest") != file_checksum(path):
        raise ValueError("projection file missing or damaged")
    return np.load(path)


class VectorIndex:
    def __init__(self, collection: Collection, index, seq: int, settings: IndexSettings, dirty: bool,
                 projection: np.ndarray | None = None):
        self.collection = collection
        self.index = index
        # usearch does not keep ef in the file: a restored graph would search with its default.
        index.expansion_search = settings.expansion_search
        self.seq = seq
        self.settings = settings
        self.dirty = dirty
        self.projection = projection  # (dim, reduce_dim) or None
        # A reduced index re-scores from this snapshot, except rows in `fresh` (written
        # since the snapshot), which come from SQLite; without a snapshot, all do.
        self.rescore: RescoreStore | None = None
        self.fresh: set[int] = set()
        # The self-check's measurement (index/tuning.py); `auto`: the knobs are the self-check's
        # to choose (False when the caller gave settings).
        self.tuning: Tuning | None = None
        self.auto = True

    # -- opening, catching up, rebuilding ------------------------------------------------

    @classmethod
    def open(cls, collection: Collection, *, settings: IndexSettings | None = None) -> VectorIndex:
        """The collection's index, up to date with its rows (rebuilt if it must be).

        Without ``settings`` the representation follows the collection's size."""
        chosen = settings
        dim = collection.dim
        if dim is None:
            raise ValueError("the collection has no model yet: index some images first")
        path = collection.root / INDEX_FILE
        meta_path = collection.root / INDEX_META
        loaded = None
        reason = "no index file yet"
        if path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("format") != INDEX_FORMAT or meta.get("model_id") != collection.model_id or meta.get("dim") != dim:
                    reason = "index made for another model or format"
                elif meta.get("collection_id") != collection.collection_id:
                    reason = "index file belongs to another collection"
                elif int(meta.get("seq", -1)) > collection.seq:
                    reason = "index file is newer than the rows (a database restored from a backup?)"
                elif meta.get("digest") != file_checksum(path):
                    reason = "index file damaged (its checksum does not match)"
                else:
                    loaded = cls._load(path)
                    if loaded is None:
                        reason, loaded = "index file unreadable", None
                    else:
                        tuning = Tuning.from_dict(meta.get("tuning"))
                        settings = _with_search_knobs(IndexSettings(**meta.get("settings", {})), chosen, tuning)
                        projection = load_projection(collection, meta, settings)
                        if settings.reduce_dim:
                            if projection.shape != (dim, settings.reduce_dim) or loaded.ndim != settings.reduce_dim:
                                raise ValueError("projection does not fit the index")
                        elif loaded.ndim != dim:
                            reason, loaded = "index file unreadable", None
                        if chosen is not None and chosen != settings:
                            reason, loaded = "other index settings asked for", None
            except (ValueError, OSError, RuntimeError, TypeError) as e:
                reason, loaded = f"index file unreadable ({e})", None
        if loaded is not None:
            me = cls(collection, loaded, int(meta["seq"]), settings, dirty=False, projection=projection)
            me.tuning, me.auto = tuning, chosen is None
            if projection is not None:
                me._use_snapshot(RescoreStore.open(collection.root, meta.get("rescore")))
            if me._catch_up():
                if chosen is not None or _fits(settings, len(me)):
                    return me
                reason = f"{len(me):,} vectors call for a {'full' if settings.reduce_dim else 'reduced'} index"
            else:
                reason = "index does not match the rows"
        if path.exists():
            log.warning("rebuilding the vector index: %s", reason)
        return cls.build(collection, chosen)

    @staticmethod
    def _load(path):
        from usearch.index import Index

        return Index.restore(str(path), view=False)

    @classmethod
    def build(cls, collection: Collection, settings: IndexSettings | None = None) -> VectorIndex:
        """A new index of the rows; without ``settings`` it also measures its recall on them
        and searches with the cheapest knobs that reach the target (:mod:`.tuning`)."""
        seq = collection.seq  # read first: rows written meanwhile have a higher seq and are replayed
        count = collection.count(collection.model_id)
        auto = settings is None
        settings = settings or settings_for(count)
        projection = None
        if settings.reduce_dim:
            step = max(1, -(-count // PROJECTION_SAMPLE))
            sample = [vecs[::step] for _, vecs in collection.iter_vectors()]
            sample = np.concatenate(sample) if sample else np.zeros((0, collection.dim), np.float32)
            projection = fit_projection(sample, settings.reduce_dim)
        me = cls(collection, cls.new_graph(settings.reduce_dim or collection.dim, settings), seq, settings,
                 dirty=True, projection=projection)
        me.auto = auto
        truth = sample_truth(collection, count) if auto and not me._searches_exactly(count) else None
        for ids, vecs in collection.iter_vectors():
            me.index.add(ids, me._to_index(vecs))
            if truth is not None:  # the self-check's exact answers, from the rows read anyway
                truth.update(ids, vecs)
        if auto:
            me.measure(truth)
        return me

    # -- the self-check (index/tuning.py) --------------------------------------------------

    def _searches_exactly(self, count: int) -> bool:
        return self.projection is None and count <= EXACT_LIMIT

    def measure(self, truth: SampleTruth | None = None) -> Tuning:
        """Measure recall on the collection's own vectors and search with the cheapest knobs
        that reach the target; ``truth``: the sample's exact answers if already computed."""
        n = len(self)
        if self._searches_exactly(n):
            self.tuning = exact_tuning(n)
        else:
            self.tuning = tune_graph(self, truth or measured_truth(self.collection, n))
            self.settings.expansion_search = int(self.tuning.knobs["expansion_search"])
            self.settings.rerank = int(self.tuning.knobs["rerank"])
            self.index.expansion_search = self.settings.expansion_search
        self.dirty = True
        return self.tuning

    def _measure_due(self) -> bool:
        if not self.auto:
            return False
        return self.tuning is None or self.tuning.due(len(self), self._searches_exactly(len(self)))

    def describe(self) -> dict:
        """The index's kind, search settings and measured recall (info, check, search --json)."""
        return _describe(self.settings, len(self), self.tuning)

    def _exact_vectors_sorted(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._exact_vectors(np.asarray(wanted).tolist())

    def _to_index(self, vectors: np.ndarray) -> np.ndarray:
        """What the graph holds for ``vectors``: themselves, or their projection."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.projection is None:
            return vectors
        return np.ascontiguousarray(vectors @ self.projection)

    @staticmethod
    def new_graph(dim: int, settings: IndexSettings):
        """An empty usearch graph of ``dim`` dimensions built as ``settings`` say (the one an
        index of this class holds; benchmarks fill one directly)."""
        from usearch.index import Index

        return Index(
            ndim=dim,
            metric=settings.metric,
            dtype=settings.dtype,
            connectivity=settings.connectivity,
            expansion_add=settings.expansion_add,
            expansion_search=settings.expansion_search,
        )

    def refresh(self) -> bool:
        """Take in the rows written and removed since the index was opened; False when the
        index no longer matches the rows (then open it again: it is rebuilt)."""
        return self.seq == self.collection.seq or self._catch_up()

    def _catch_up(self) -> bool:
        """Replay changes after ``self.seq``; False if the result disagrees with the rows."""
        seq = self.collection.seq
        if seq != self.seq:
            removed, ids, vecs = self.collection.changes_since(self.seq)
            drop = [i for i in set(removed) | set(ids.tolist()) if self.index.contains(i)]
            if drop:
                self.index.remove(np.asarray(drop, dtype=np.int64))
            if len(ids):
                self.index.add(ids, self._to_index(vecs))
                if self.rescore is not None:
                    self.fresh.update(ids.tolist())
            self.seq = seq
            self.dirty = True
        return len(self.index) == self.collection.count(self.collection.model_id)

    def _use_snapshot(self, store: RescoreStore | None) -> None:
        old, self.rescore = self.rescore, store
        if old is not None:
            old.close()
        self.fresh = self.collection.ids_written_since(store.seq) if store is not None else set()

    def _snapshot_due(self) -> bool:
        """A reduced index without a usable snapshot, or with too many rows newer than it."""
        if self.projection is None:
            return False
        return self.rescore is None or len(self.fresh) > MAX_FRESH_SHARE * max(len(self), 1)

    def save_if_changed(self) -> None:
        if self._measure_due():
            self.measure()
        if not (self.dirty or self._snapshot_due()):
            return
        root = self.collection.root
        tmp = root / f"{INDEX_FILE}.{os.getpid()}.tmp"
        meta_tmp = root / f"{INDEX_META}.{os.getpid()}.tmp"
        proj_tmp = root / f"{PROJECTION_FILE}.{os.getpid()}.tmp.npy"
        store_tmp = root / f"{RESCORE_FILE}.{os.getpid()}.tmp"
        new_store = None
        try:
            self.index.save(str(tmp))
            extra = {}
            if self.projection is not None:
                np.save(proj_tmp, self.projection)
                extra["projection_digest"] = file_checksum(proj_tmp)
                os.replace(proj_tmp, root / PROJECTION_FILE)  # checked against the meta on opening
                if self._snapshot_due():
                    new_store = write_snapshot(self.collection, store_tmp)
                    os.replace(store_tmp, root / RESCORE_FILE)  # used only once the meta names its stamp
                extra["rescore"] = new_store or self.rescore.stamp
            meta = {
                **extra,
                "format": INDEX_FORMAT,
                "seq": self.seq,
                "model_id": self.collection.model_id,
                "collection_id": self.collection.collection_id,
                "dim": self.collection.dim,
                "count": len(self.index),
                "settings": self.settings.__dict__,
                "tuning": self.tuning.to_dict() if self.tuning is not None else None,
                "digest": file_checksum(tmp),  # a damaged file is rebuilt, never searched
            }
            meta_tmp.write_text(json.dumps(meta))
            # Index first, then its description. A crash between the two leaves an index
            # whose checksum does not match its description: it is rebuilt from the rows.
            os.replace(tmp, root / INDEX_FILE)
            os.replace(meta_tmp, root / INDEX_META)
        except (OSError, RuntimeError) as e:  # e.g. no space left: the rows are safe, the index is derived
            raise CollectionError(
                f"cannot write the vector index in {root} ({e}); the rows are saved and the index "
                "is rebuilt from them once there is space"
            ) from None
        finally:  # leave no half-written temporary files behind
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
            proj_tmp.unlink(missing_ok=True)
            store_tmp.unlink(missing_ok=True)
        if self.projection is None:  # a full index needs no snapshot: do not keep gigabytes for nothing
            (root / RESCORE_FILE).unlink(missing_ok=True)
        if new_store is not None:
            self._use_snapshot(RescoreStore.open(root, new_store))
        self.collection.prune_removed(self.seq)
        self.dirty = False

    # -- searching -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: np.ndarray, k: int, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine similarities), each (n_queries, <=k), best first; -1 pads missing."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        n = len(self.index)
        if n == 0 or k <= 0:
            return np.full((len(queries), 0), -1, dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        k = min(k, n)
        if exact is None:
            exact = n <= EXACT_LIMIT
        if self.projection is not None:
            fetch = min(n, max(k, self.settings.rerank))
            keys, _ = self._graph_search(self._to_index(queries), fetch, exact)
            return self._rerank(queries, keys, k)
        return self._graph_search(queries, k, exact)

    def _graph_search(self, queries: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        # A few queries run on this thread: waking usearch's pool for one query cost more
        # than the search itself on a busy machine.
        threads = 1 if len(queries) <= 4 else 0
        matches = self.index.search(queries, k, exact=exact, threads=threads)
        keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
        # cos and ip distances in usearch are both 1 - similarity
        sims = 1.0 - np.asarray(matches.distances, dtype=np.float32).reshape(len(queries), -1)
        # usearch returns one Matches for a single query and BatchMatches for several;
        # rows with fewer than k hits are padded, and `counts` says how many are real.
        counts = np.asarray(getattr(matches, "counts", [len(matches.keys)])).reshape(-1)
        for row, c in enumerate(counts):
            keys[row, c:] = -1
            sims[row, c:] = -np.inf
        return keys, sims

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of each row's candidates by exact cosine with the rows' vectors."""
        wanted = np.unique(candidates[candidates >= 0])
        ids, vecs = self._exact_vectors(wanted.tolist())
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        out_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        if not len(ids):
            return out_ids, out_sims
        if len(queries) == 1:  # a single query (the common case): every row found is its candidate
            s = vecs @ queries[0]
            top = np.argsort(-s, kind="stable")[:k]
            out_ids[0, : len(top)] = ids[top]
            out_sims[0, : len(top)] = s[top]
            return out_ids, out_sims
        # Each query against its own candidates only (ids are sorted): a product of every
        # query with every row found grew with the collection (4,096 queries x 60,000 rows
        # for the duplicate pass's candidates: 0.76 ms an image at 60,000, now 0.29).
        pos = np.minimum(np.searchsorted(ids, candidates), len(ids) - 1)
        valid = (candidates >= 0) & (ids[pos] == candidates)
        block = max(1, _RERANK_BYTES // max(1, candidates.shape[1] * vecs.shape[1] * vecs.itemsize))
        for start in range(0, len(queries), block):
            p, ok = pos[start : start + block], valid[start : start + block]
            s = np.einsum("qcd,qd->qc", vecs[p], queries[start : start + block])
            s[~ok] = -np.inf
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            found = np.take_along_axis(ok, top, axis=1)
            rows = slice(start, start + len(p))
            out_ids[rows, : top.shape[1]] = np.where(found, ids[np.take_along_axis(p, top, axis=1)], -1)
            out_sims[rows, : top.shape[1]] = np.where(found, np.take_along_axis(s, top, axis=1), -np.inf)
        return out_ids, out_sims

    def _exact_vectors(self, wanted: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of the current rows among ``wanted`` (sorted), ids sorted."""
        store = self.rescore
        if store is None:
            return self.collection.vectors(wanted)
        rows = int(store.stamp["rows"])
        from_store, from_db = [], []
        for i in wanted:
            (from_db if i in self.fresh or i >= rows else from_store).append(i)
        if not from_db:
            return np.asarray(wanted, dtype=np.int64), store.read(wanted)
        db_ids, db_vecs = self.collection.vectors(from_db)
        ids = np.concatenate([np.asarray(from_store, dtype=np.int64), db_ids])
        vecs = np.concatenate([store.read(from_store), db_vecs])
        order = np.argsort(ids, kind="stable")
        return ids[order], vecs[order]

    @property
    def holds_full_vectors(self) -> bool:
        """Whether :meth:`vectors_of` reads the graph's own float32 vectors (exact, in memory)."""
        return self.projection is None and self.settings.dtype == "f32"

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The full vectors of ``ids``, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.projection is not None:
            found, vecs = self._exact_vectors(np.unique(ids).tolist())
            return vecs[np.searchsorted(found, ids)]
        if not len(ids):
            return np.zeros((0, self.index.ndim), dtype=np.float32)
        got = self.index.get(ids)  # a tuple of vectors, None for a key the graph lacks
        try:
            whole = np.asarray(got, dtype=np.float32)
            if whole.shape == (len(ids), self.index.ndim):
                return whole
        except (TypeError, ValueError):
            pass
        out = np.full((len(ids), self.index.ndim), np.nan, dtype=np.float32)
        for row, v in enumerate(got):
            if v is not None:
                out[row] = v
        return out


def file_checksum(path: os.PathLike[str] | str) -> str:
    """blake2b of a file's bytes, read in chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
