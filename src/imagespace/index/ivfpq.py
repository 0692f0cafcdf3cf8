"""Collections beyond memory: compressed vectors served from disk, re-ranked exactly.

A FAISS ``PCA -> IVF -> PQ`` index keeps a few dozen bytes per image (product-quantised
codes of the PCA-reduced vector, in inverted lists) and is opened memory-mapped, so a
search process holds only the small coarse quantiser and the pages of the lists it probes.
The compressed distances only choose candidates: the top ``rerank`` of them are scored
again with the exact float vectors, fetched from wherever the collection keeps them
(SQLite rows for a collection, :class:`Float16Store` for a bare file of vectors), so the
scores are exact cosine similarities, as with :class:`hnsw.VectorIndex`.

:class:`LargeIndex` has :class:`hnsw.VectorIndex`'s search surface (``search(queries, k) ->
(ids, cosine sims)``, ``len``, ``seq``); :func:`imagespace.index.open_index` picks one of the two by size or
by name.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..collection import Collection
from ..atomic import write_text_atomic
from .tuning import SampleTruth, Tuning, describe, measured_truth, sample_truth, tune_compressed

LARGE_FILE = "vectors.ivfpq.faiss"
LARGE_META = "vectors.ivfpq.json"
LARGE_FORMAT = 1
# From this many vectors on, "auto" serves a collection from the compressed on-disk index.
# Below it the in-memory graph (128-d int8, about 0.53 KB a vector) answers in under a
# millisecond: about 1 GB of RAM at this size, and a full rebuild of at least twice the
# 411 s measured at 1M on 2 cores, which is where the compressed index (0.04 KB a vector,
# on disk) starts to pay.
LARGE_LIMIT = 2_000_000
# Rows written since the on-disk index was built are searched exactly from memory; past
# this share of the collection the index is rebuilt instead.
MAX_DELTA_SHARE = 0.10

log = logging.getLogger(__name__)

# fetch(ids) -> float32 vectors, one row per id in the order given
VectorFetch = Callable[[np.ndarray], np.ndarray]


@dataclass
class LargeSettings:
    pca_dim: int = 256  # PCA before the coarse quantiser: cheaper assignment, shorter codes
    nlist: int | None = None  # inverted lists; None: about 2*sqrt(n), a power of two, 64..16384
    pq_m: int = 32  # bytes per vector (sub-quantisers of 8 bits)
    nprobe: int = 32  # lists visited per query
    rerank: int = 200  # candidates scored again with the exact vectors
    train_size: int = 100_000  # vectors the PCA, k-means and PQ codebooks are trained on
    kmeans_iterations: int = 10

    def lists_for(self, n: int) -> int:
        if self.nlist:
            return int(self.nlist)
        return int(min(16384, max(64, 2 ** round(math.log2(max(2.0, 2 * math.sqrt(n)))))))


# -- the compressed index itself (no collection attached) --------------------------------


class CompressedIndex:
    """A FAISS PCA+IVF+PQ index plus a source of exact vectors for re-ranking."""

    def __init__(self, index, fetch: VectorFetch, settings: LargeSettings):
        import faiss

        self.index = index
        self.fetch = fetch
        self.settings = settings
        self._ivf = faiss.extract_index_ivf(index)
        self._ivf.nprobe = settings.nprobe

    @property
    def nlist(self) -> int:
        """The number of inverted lists (cells) the index was trained with."""
        return int(self._ivf.nlist)

    @staticmethod
    def train(sample: np.ndarray, n_total: int, settings: LargeSettings):
        """An empty FAISS index trained on ``sample`` for a collection of ``n_total`` vectors."""
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        # PCA needs more samples than output dimensions; a tiny collection keeps all of them
        pca = min(settings.pca_dim, dim) if len(sample) >= 4 * settings.pca_dim else dim
        nlist = min(settings.lists_for(n_total), max(1, len(sample) // 39))
        m = settings.pq_m
        while pca % m:  # sub-quantisers must divide the dimension
            m -= 1
        nbits = 8 if len(sample) >= 256 * 39 else max(1, int(math.log2(max(2, len(sample) // 39))))
        # L2 on unit vectors ranks exactly as cosine does, and unlike inner product it is
        # unchanged by the centring that PCA applies.
        prefix = f"PCA{pca}," if pca < dim else ""
        index = faiss.index_factory(dim, f"{prefix}IVF{nlist},PQ{m}x{nbits}np", faiss.METRIC_L2)  # np: no polysemous training (slow, unused)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = settings.kmeans_iterations  # coarse centroids only choose candidates
        ivf.pq.cp.niter = settings.kmeans_iterations
        index.train(sample)
        return index

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def save(self, path: str | os.PathLike[str]) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], fetch: VectorFetch, settings: LargeSettings, *, mmap: bool = True):
        """Open an index file; with ``mmap`` the inverted lists stay on disk, paged in on use."""
        import faiss

        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return cls(faiss.read_index(str(path), flags), fetch, settings)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def candidates(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Ids of the ``n`` nearest by the compressed codes, (n_queries, n), -1 padded."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        _, ids = self.index.search(queries, n)
        return ids

    def search(self, queries: np.ndarray, k: int, *, exclude: set[int] | frozenset[int] = frozenset(),
               extra: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, exact cosine similarities), (n_queries, k), best first; -1 pads missing.

        ``exclude``: ids whose compressed codes are stale; ``extra``: (ids, vectors) searched
        exactly beside the index (rows written after it was built).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        nq = len(queries)
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_sims = np.full((nq, k), -np.inf, dtype=np.float32)
        if k <= 0:
            return out_ids[:, :0], out_sims[:, :0]
        want = max(k, self.settings.rerank)
        cands = self.candidates(queries, want + min(len(exclude), want)) if len(self) else np.full((nq, 0), -1, np.int64)
        valid = cands >= 0
        if exclude:
            valid &= ~np.isin(cands, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        flat, inverse = np.unique(cands[valid], return_inverse=True)  # each vector fetched once
        vecs = self.fetch(flat) if len(flat) else np.zeros((0, queries.shape[1]), np.float32)
        ends = np.cumsum(valid.sum(axis=1))
        for qi in range(nq):
            rows = inverse[ends[qi] - valid[qi].sum() : ends[qi]][:want]
            ids, sims = flat[rows], vecs[rows] @ queries[qi]
            if extra is not None and len(extra[0]):
                ids = np.concatenate([ids, extra[0]])
                sims = np.concatenate([sims, extra[1] @ queries[qi]])
            top = np.argsort(-sims, kind="stable")[:k]
            out_ids[qi, : len(top)] = ids[top]
            out_sims[qi, : len(top)] = sims[top]
        return out_ids, out_sims


def build_compressed(sample: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], n_total: int,
                     fetch: VectorFetch, settings: LargeSettings | None = None) -> CompressedIndex:
    """Train on ``sample``, then add (ids, vectors) chunk by chunk: memory stays one chunk."""
    settings = settings or LargeSettings()
    index = CompressedIndex(CompressedIndex.train(sample, n_total, settings), fetch, settings)
    for ids, vecs in chunks:
        index.add(ids, vecs)
    return index


# -- exact vectors for re-ranking --------------------------------------------------------


class Float16Store:
    """A flat file of float16 vectors, row ``i`` = id ``i``: the re-ranking store for vectors
    that are not in SQLite (synthetic benchmarks, exports). Rows are read with ``pread``, so
    a search process keeps none of the file in its own memory (the OS page cache may)."""

    def __init__(self, path: str | os.PathLike[str], dim: int):
        self.path = Path(path)
        self.dim = dim
        self.row_bytes = dim * 2
        self.fd = os.open(self.path, os.O_RDONLY)
        self.count = os.fstat(self.fd).st_size // self.row_bytes

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float16)
        for j, i in enumerate(np.asarray(ids, dtype=np.int64)):
            out[j] = np.frombuffer(os.pread(self.fd, self.row_bytes, int(i) * self.row_bytes), dtype=np.float16)
        return out.astype(np.float32)

    def close(self) -> None:
        os.close(self.fd)


def collection_fetch(collection: Collection) -> VectorFetch:
    """Exact float32 vectors from the collection's rows, in the order asked."""

    def fetch(ids: np.ndarray) -> np.ndarray:
        got_ids, vecs = collection.vectors([int(i) for i in ids])
        where = {int(i): j for j, i in enumerate(got_ids)}
        out = np.zeros((len(ids), collection.dim or 0), dtype=np.float32)
        for j, i in enumerate(ids):
            if int(i) in where:
                out[j] = vecs[where[int(i)]]
        return out

    return fetch


# -- a collection's large index ----------------------------------------------------------


@dataclass
class LargeIndex:
    """A collection's compressed on-disk index, kept up to date like :class:`VectorIndex`.

    The file answers for the rows as of change ``built_seq``; rows written or removed since
    are taken from the collection on opening (written ones searched exactly in memory).
    """

    collection: Collection
    core: CompressedIndex
    built_seq: int
    seq: int = 0
    stale: set[int] = field(default_factory=set)
    delta_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    delta_vecs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # The file is written when the index is built; later rows are replayed on opening and
    # never saved, so there is never anything unsaved (the same surface as VectorIndex).
    dirty: bool = False
    # The self-check's measurement (index/tuning.py); `auto`: its knobs are searched with.
    tuning: Tuning | None = None
    auto: bool = True

    def save_if_changed(self) -> None:
        """Only an index saved before the self-check existed is measured, once (its
        description gets the result); otherwise nothing to do: see ``dirty``."""
        if self.auto and self.tuning is None:
            self.measure()
            meta_path = self.collection.root / LARGE_META
            meta = json.loads(meta_path.read_text())
            meta["tuning"] = self.tuning.to_dict()
            meta["settings"].update(self.tuning.knobs)
            _write_json(meta_path, meta)

    def measure(self, truth: SampleTruth | None = None) -> Tuning:
        """Measure recall on the collection's own vectors; search with the cheapest knobs."""
        self.tuning = _tune(self.core, truth or measured_truth(self.collection, len(self.core)))
        return self.tuning

    def describe(self) -> dict:
        s = self.core.settings
        knobs = {"nprobe": s.nprobe, "rerank": s.rerank, "nlist": int(self.core._ivf.nlist), "pq_m": s.pq_m,
                 "pca_dim": s.pca_dim}
        return describe("ivfpq", len(self), knobs, self.tuning)

    @classmethod
    def open(cls, collection: Collection, settings: LargeSettings | None = None) -> LargeIndex:
        auto = settings is None
        settings = settings or LargeSettings()
        path, meta_path = collection.root / LARGE_FILE, collection.root / LARGE_META
        reason = "no compressed index yet"
        if path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("format") != LARGE_FORMAT or meta.get("model_id") != collection.model_id:
                    reason = "compressed index made for another model or format"
                else:
                    saved = LargeSettings(**meta["settings"])
                    tuning = Tuning.from_dict(meta.get("tuning"))
                    # search-time knobs: the self-check's, else the caller's (or the defaults)
                    knobs = tuning.knobs if auto and tuning is not None else asdict(settings)
                    saved.nprobe, saved.rerank = int(knobs["nprobe"]), int(knobs["rerank"])
                    core = CompressedIndex.load(path, collection_fetch(collection), saved)
                    me = cls(collection, core, int(meta["seq"]), int(meta["seq"]), tuning=tuning, auto=auto)
                    if me._catch_up():
                        return me
                    reason = "too many rows changed since the compressed index was built"
            except (ValueError, OSError, RuntimeError, KeyError, TypeError) as e:
                reason = f"compressed index unreadable ({e})"
        log.info("building the compressed vector index: %s", reason)
        return cls.build(collection, None if auto else settings)

    @classmethod
    def build(cls, collection: Collection, settings: LargeSettings | None = None) -> LargeIndex:
        """Without ``settings``, the new index also measures its recall on the rows and
        searches with the cheapest nprobe and re-rank depth reaching the target (index/tuning.py)."""
        auto = settings is None
        settings = settings or LargeSettings()
        seq = collection.seq
        n = collection.count(collection.model_id)
        if n == 0:
            raise ValueError("the collection has no vectors yet: index some images first")
        sample_ids = collection.sample_ids(settings.train_size)
        _, sample = collection.vectors(sample_ids)
        truth = sample_truth(collection, n) if auto else None

        def chunks():  # the self-check's exact answers, from the rows read anyway
            for ids, vecs in collection.iter_vectors():
                if truth is not None:
                    truth.update(ids, vecs)
                yield ids, vecs

        core = build_compressed(sample, chunks(), n, collection_fetch(collection), settings)
        tuning = _tune(core, truth) if truth is not None else None
        root = collection.root
        tmp = root / f"{LARGE_FILE}.{os.getpid()}.tmp"
        try:
            core.save(tmp)
            meta = {"format": LARGE_FORMAT, "seq": seq, "model_id": collection.model_id, "dim": collection.dim,
                    "count": len(core), "settings": asdict(settings),
                    "tuning": tuning.to_dict() if tuning is not None else None}
            os.replace(tmp, root / LARGE_FILE)
            _write_json(root / LARGE_META, meta)
        finally:
            tmp.unlink(missing_ok=True)
        me = cls(collection, CompressedIndex.load(root / LARGE_FILE, core.fetch, core.settings), seq, seq,
                 tuning=tuning, auto=auto)
        me._catch_up()
        return me

    def refresh(self) -> bool:
        """Take in the rows changed since the index was opened; False when a rebuild is due."""
        return self.seq == self.collection.seq or self._catch_up()

    def _catch_up(self) -> bool:
        """Take in the rows changed after the build; False when a rebuild is due."""
        seq = self.collection.seq
        if seq != self.seq:
            removed, ids, vecs = self.collection.changes_since(self.built_seq)
            self.stale = set(removed) | set(ids.tolist())
            self.delta_ids, self.delta_vecs = ids, vecs
            self.seq = seq
        return len(self.delta_ids) <= MAX_DELTA_SHARE * max(len(self.core), 1)

    def __len__(self) -> int:
        return self.collection.count(self.collection.model_id)

    def search(self, queries: np.ndarray, k: int, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine similarities), each (n_queries, <=k), best first; -1 pads missing."""
        del exact  # always re-ranked exactly; kept for VectorIndex's signature
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self))
        extra = (self.delta_ids, self.delta_vecs) if len(self.delta_ids) else None
        return self.core.search(queries, k, exclude=self.stale, extra=extra)


def _tune(core: CompressedIndex, truth: SampleTruth) -> Tuning:
    """Sweep ``core``'s nprobe and re-rank depth; it then searches with the chosen ones."""
    tuning = tune_compressed(core, truth)
    core.settings.nprobe, core.settings.rerank = int(tuning.knobs["nprobe"]), int(tuning.knobs["rerank"])
    core._ivf.nprobe = core.settings.nprobe
    return tuning


def _write_json(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc))
