"""Search at 100,000 and 1,000,000 vectors: build time, memory per vector, single-query
latency (p50/p99) and recall@10 against exact search over the full 1,280-d float32 vectors.

The vectors are synthetic but shaped like this model's embeddings (measured on flowers12):
a shared mean direction (mean cosine between unrelated images about 0.5), a power-law
spectrum (variance of the i-th direction ~ 1/i), and clusters of similar images (50 per
cluster, neighbours at cosine ~0.85-0.9). Queries are new vectors from the same clusters.

Measured: the index imagespace builds at that size (:func:`imagespace.index.hnsw.settings_for`:
projection to 128 dimensions, int8 HNSW graph, 24 candidates re-scored exactly), its graph
alone, a sweep of its search-time knobs, and the whole :class:`VectorIndex` over a real
SQLite collection (candidates' exact vectors read from the re-scoring snapshot, page cache
warm; and from the SQLite rows, as before the snapshot) against exact numpy search (and,
with IMAGESPACE_BENCH_F32_GRAPH=1, the float32 1,280-d graph) as baselines. At 1,000,000
vectors the SQLite rows, the snapshot and the float16 copy take about 14 GB of temporary
disk.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import header, row

DIM = 1280
CHUNK = 20_000
SWEEP_EF = (16, 24, 32, 48, 64)
SWEEP_RERANK = (16, 24, 32)  # the graph searches with max(ef, re-scored)


class Synthetic:
    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n = n
        self.scale = (1.0 / np.sqrt(np.arange(1, DIM + 1))).astype(np.float32)
        self.centres = rng.standard_normal((max(1, n // 50), DIM), dtype=np.float32)
        self.mean = np.zeros(DIM, np.float32)
        self.mean[rng.permutation(DIM)[:64]] = 3.24 / 8.0  # a unit direction of norm 3.24, spread out

    def chunk(self, start: int, stop: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, start])
        z = rng.integers(0, len(self.centres), stop - start)
        x = self.centres[z] + 0.6 * rng.standard_normal((stop - start, DIM), dtype=np.float32)
        x *= self.scale
        x += self.mean
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self, seed: int = 1):
        for start in range(0, self.n, CHUNK):
            stop = min(self.n, start + CHUNK)
            yield start, self.chunk(start, stop, seed)


def exact_top(data: Synthetic, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k ids (0-based rows) over the full float32 vectors, streamed in chunks."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start, x in data.chunks():
        s = queries @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def latencies(fn, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    out, lat = [], []
    fn(queries[0])
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t)
    return np.stack(out), lat


def fmt_lat(lat: list[float]) -> str:
    a = np.asarray(lat) * 1000
    return f"p50 {np.percentile(a, 50):.3f} ms  p99 {np.percentile(a, 99):.3f} ms"


def reduced_graph(data: Synthetic, store: np.ndarray | None):
    """The graph VectorIndex builds at this size, built from the synthetic chunks."""
    from usearch.index import Index

    from imagespace.index.hnsw import PROJECTION_SAMPLE, REDUCE_ABOVE, VectorIndex, fit_projection, settings_for

    settings = settings_for(max(data.n, REDUCE_ABOVE + 1))
    t = time.perf_counter()
    sample = data.chunk(0, min(data.n, PROJECTION_SAMPLE), seed=1)  # chunks are alike: the first will do
    projection = fit_projection(sample, settings.reduce_dim)
    t_fit = time.perf_counter() - t
    index: Index = VectorIndex.new_graph(settings.reduce_dim, settings)
    t = time.perf_counter()
    for start, x in data.chunks():
        index.add(np.arange(start, start + len(x)), np.ascontiguousarray(x @ projection))
        if store is not None:
            store[start : start + len(x)] = x
    t_add = time.perf_counter() - t
    return settings, projection, index, t_fit, t_add


def bench_size(n: int, n_queries: int, with_collection: bool) -> None:
    from imagespace.index.hnsw import VectorIndex

    header(f"search over {n:,} synthetic vectors ({DIM}-d), {n_queries} single queries")
    data = Synthetic(n)
    queries = Synthetic(n).chunk(0, n_queries, seed=99)
    t = time.perf_counter()
    truth = exact_top(data, queries)
    row("exact top-10 ground truth (numpy, all queries)", f"{time.perf_counter() - t:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="imagespace-bench-search-"))
    store = np.lib.format.open_memmap(tmp / "full.npy", mode="w+", dtype=np.float16, shape=(n, DIM))
    settings, projection, index, t_fit, t_add = reduced_graph(data, store)
    path = tmp / "graph.usearch"
    index.save(str(path))
    per_vec = os.path.getsize(path) / n
    row(f"build: projection {DIM}->{settings.reduce_dim} fit", f"{t_fit:.1f} s")
    row(f"build: HNSW {settings.dtype} M={settings.connectivity} ef_add={settings.expansion_add}",
        f"{t_add:.1f} s", f"{n / t_add:,.0f} vectors/s")
    row("memory per vector in the index", f"{index.memory_usage / n:,.0f} B in RAM", f"{per_vec:,.0f} B on disk",
        "goal <= 1024 B")

    # threads=1: what VectorIndex does for a single query (waking a pool costs more than it gives)
    def graph_only(q, k=10):
        m = index.search(np.ascontiguousarray(q @ projection), k, threads=1)
        return np.asarray(m.keys, np.int64)[:k]

    found, lat = latencies(graph_only, queries)
    row(f"graph alone, ef={settings.expansion_search}, top 10", fmt_lat(lat), f"recall@10 {recall(found, truth):.3f}")

    def reranked(q, k=10, rerank=settings.rerank):
        cands = np.asarray(index.search(np.ascontiguousarray(q @ projection), max(k, rerank), threads=1).keys, np.int64)
        cands = np.sort(cands[cands >= 0])
        s = store[cands].astype(np.float32) @ q
        return cands[np.argsort(-s, kind="stable")[:k]]

    found, lat = latencies(reranked, queries)
    row(f"graph + exact re-score of {settings.rerank} (vectors from memory)", fmt_lat(lat),
        f"recall@10 {recall(found, truth):.3f}")
    # The search-time knobs: how much latency each step of recall costs at this size.
    for ef in SWEEP_EF:
        index.expansion_search = ef
        for rerank in SWEEP_RERANK:
            found, lat = latencies(lambda q: reranked(q, rerank=rerank), queries)
            row(f"  sweep: ef={ef}, re-score {rerank}", fmt_lat(lat), f"recall@10 {recall(found, truth):.3f}")
    index.expansion_search = settings.expansion_search

    if with_collection:
        from imagespace.collection import Collection

        coll = Collection(tmp / "db")
        coll.bind_model("synthetic", "synthetic", DIM)
        t = time.perf_counter()
        for start in range(0, n, 50_000):  # bounded transactions: the WAL stays small
            with coll.transaction():
                coll.conn.executemany(
                    "INSERT INTO images(id,path,size,mtime_ns,digest,width,height,format,tags,embedding,model,seq,"
                    "indexed_at) VALUES(?,?,1,1,'',1,1,'JPEG','[]',?,'synthetic',1,0)",
                    ((i, f"/v/{i}", np.asarray(store[i], np.float32).tobytes())  # id = graph key
                     for i in range(start, min(n, start + 50_000))),
                )
        with coll.transaction():
            coll.set_meta("seq", "1")
        coll.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        os.sync()  # timings below must not share the disk with the write-back of these rows
        row("(writing the SQLite rows for the next line)", f"{time.perf_counter() - t:.0f} s")
        # the graph built above is exactly what VectorIndex.build makes from these rows;
        # saving it writes what a collection keeps: graph, projection, re-scoring snapshot
        vi = VectorIndex(coll, index, coll.seq, settings, dirty=True, projection=projection)
        t = time.perf_counter()
        vi.save_if_changed()
        row("save: graph, projection and re-scoring snapshot", f"{time.perf_counter() - t:.1f} s",
            f"snapshot {os.path.getsize(vi.rescore.path) / n:,.0f} B per vector on disk")

        def collection_search(q, k=10):
            return vi.search(q[None], k)[0][0]

        found, lat = latencies(collection_search, queries)
        row("VectorIndex.search (re-scored from the snapshot)", fmt_lat(lat), f"recall@10 {recall(found, truth):.3f}")
        snapshot, vi.rescore = vi.rescore, None
        found, lat = latencies(collection_search, queries)
        row("  baseline: re-scored from the SQLite rows instead", fmt_lat(lat), f"recall@10 {recall(found, truth):.3f}")
        vi.rescore = snapshot
        cand = [np.sort(np.asarray(index.search(np.ascontiguousarray(q @ projection), settings.rerank).keys, np.int64))
                for q in queries[:100]]
        _, lat = latencies(lambda i: snapshot.read(cand[int(i)].tolist())[:1], np.arange(len(cand)))
        row(f"  reading {settings.rerank} vectors from the snapshot", fmt_lat(lat))
        _, lat = latencies(lambda i: coll.vectors(cand[int(i)].tolist())[1][:1], np.arange(len(cand)))
        row(f"  reading {settings.rerank} vectors from SQLite", fmt_lat(lat))
        coll.close()

        # baselines: exact numpy search; the foundation's float32 1,280-d graph only when asked
        # (IMAGESPACE_BENCH_F32_GRAPH=1): it builds about 5x slower and holds ~5.3 KB a vector
        if os.environ.get("IMAGESPACE_BENCH_F32_GRAPH"):
            from imagespace.index.hnsw import IndexSettings

            full = VectorIndex.new_graph(DIM, IndexSettings())
            t = time.perf_counter()
            for start, x in data.chunks():
                full.add(np.arange(start, start + len(x)), x)
            row("baseline: f32 1280-d HNSW (foundation) build", f"{time.perf_counter() - t:.1f} s",
                f"{full.memory_usage / n:,.0f} B per vector in RAM")
            found, lat = latencies(lambda q: np.asarray(full.search(q, 10).keys, np.int64), queries)
            row("baseline: f32 1280-d HNSW search", fmt_lat(lat), f"recall@10 {recall(found, truth):.3f}")
            del full
        matrix = np.asarray(store, dtype=np.float32)

        def numpy_exact(q, k=10):
            s = matrix @ q
            top = np.argpartition(-s, k)[:k]
            return top[np.argsort(-s[top])]

        found, lat = latencies(numpy_exact, queries[:50])
        row("baseline: exact numpy search (f32 matrix in RAM)", fmt_lat(lat), f"recall@10 {recall(found, truth[:50]):.3f}")
        del matrix
    del store
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool = False) -> None:
    bench_size(100_000, 300 if quick else 500, with_collection=True)
    if not quick:
        bench_size(1_000_000, 300, with_collection=True)


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
