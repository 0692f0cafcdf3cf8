"""Recall and latency on real vectors beside synthetic ones, through the index's self-check.

``python -m benchmarks.bench_recall [--cifar10 DB_OR_PARQUET] [--flowers12 DB_OR_PARQUET]
[--synthetic] [--noisy N] [--workdir DIR]``

Each set of vectors becomes a collection (rows in SQLite, as imagespace keeps them), and
:meth:`VectorIndex.build` makes the index imagespace makes at that size, self-check
included. Then, for 200 stored vectors *other than* the self-check's sample, asked as
``search --like`` asks (own row dropped, k=10), against exact search over every row:

- recall@10 and single-query latency (p50/p99) with the settings the self-check chose;
- the same queries, interleaved query by query, with the fixed settings used before the
  self-check (ef 32, 24 re-scored), as the baseline.

Sets: cifar10's 60,000 and flowers12's 960 real embeddings (a collection folder made by
``imagespace index``, or the Parquet file of ``imagespace export``); synthetic vectors of
the same size as cifar10 (``bench_search.Synthetic``: clusters of 50, 1/i spectrum); and
with ``--noisy N``, N vectors made from the real ones: a real vector plus a little isotropic
noise (as benchmarks/bench_map.py makes its archive), with synthetic vectors of that size
beside them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import header, row

FIXED = {"expansion_search": 32, "rerank": 24}  # the reduced index's settings before the self-check
QUERIES = 200
CHUNK = 20_000


def load_real(source: Path) -> np.ndarray:
    """(n, dim) float32 vectors of a collection folder or an exported Parquet file, by id."""
    if source.is_dir():  # read-only: an indexing run may be writing it
        import sqlite3

        conn = sqlite3.connect(f"file:{source / 'collection.sqlite'}?mode=ro", uri=True)
        try:
            blobs = [b for (b,) in conn.execute("SELECT embedding FROM images ORDER BY id")]
        finally:
            conn.close()
        return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), -1).copy()
    import pyarrow.parquet as pq

    table = pq.read_table(source, columns=["id", "embedding"])
    order = np.argsort(table.column("id").to_numpy())
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    return np.asarray(emb.values.to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)[order]


def write_collection(root: Path, chunks, dim: int):
    """A collection whose row ``i + 1`` holds the i-th vector (no images: rows only)."""
    from imagespace.collection import Collection

    coll = Collection(root)
    coll.bind_model("bench-vectors", "bench-vectors", dim)
    n = 0
    for x in chunks:
        with coll.transaction():
            coll.conn.executemany(
                "INSERT INTO images(id,path,size,mtime_ns,digest,width,height,format,tags,embedding,model,seq,"
                "indexed_at) VALUES(?,?,1,1,'',1,1,'JPEG','[]',?,'bench-vectors',1,0)",
                ((n + j + 1, f"/v/{n + j + 1}", np.asarray(v, np.float32).tobytes()) for j, v in enumerate(x)))
        n += len(x)
    with coll.transaction():
        coll.set_meta("seq", "1")
    coll.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return coll, n


def held_out_queries(coll, n: int, sample_ids: np.ndarray, count: int = QUERIES) -> np.ndarray:
    rng = np.random.default_rng(7)
    pool = np.setdiff1d(np.arange(1, n + 1), sample_ids)
    return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))


def measure(name: str, chunks, dim: int, workdir: Path) -> dict:
    """Build, self-check, then held-out recall and latency: self-check's settings and fixed ones."""
    from imagespace.index.hnsw import VectorIndex

    root = workdir / f"db-{name.split()[0]}"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    coll, n = write_collection(root, chunks, dim)
    t_rows = time.perf_counter() - t
    header(f"{name}: {n:,} vectors of {dim} dimensions")
    row("(writing the SQLite rows)", f"{t_rows:.0f} s")
    t = time.perf_counter()
    built = VectorIndex.build(coll)
    t_build = time.perf_counter() - t
    built.save_if_changed()  # graph, projection, re-scoring snapshot: what searches open
    index = VectorIndex.open(coll)
    row("build (graph + exact answers of the sample)", f"{t_build:.1f} s",
        f"of which the sweep {index.tuning.seconds:.1f} s" if not index.tuning.exact else "exact: no sweep")
    out = evaluate(name, coll, index, n)
    out["build_s"] = t_build
    coll.close()
    shutil.rmtree(root, ignore_errors=True)
    return out


def measure_collection(db: Path) -> dict:
    """The same measurements on a collection made by ``imagespace index``, as it is (its index
    opened as searches open it: nothing rebuilt unless it must be)."""
    from imagespace.collection import Collection
    from imagespace.index.hnsw import VectorIndex

    with Collection(db, create=False) as coll:
        n = coll.count(coll.model_id)
        header(f"{db}: {n:,} vectors of {coll.dim} dimensions, its own index")
        return evaluate(db.name, coll, VectorIndex.open(coll), n)


def evaluate(name: str, coll, index, n: int) -> dict:
    from imagespace.index.tuning import SampleTruth, recall_at_k, sample_truth

    tuning = index.tuning
    desc = index.describe()
    row("self-check: index and settings", desc["kind"], str(desc["settings"]))
    row("self-check: recall@10 on its own 200-query sample", f"{tuning.recall:.3f}", f"target {tuning.target}")
    sample_ids = sample_truth(coll, n).ids
    q_ids = held_out_queries(coll, n, sample_ids)
    _, q_vecs = coll.vectors(q_ids.tolist())
    truth = SampleTruth(q_ids, q_vecs)
    t = time.perf_counter()
    for ids, vecs in coll.iter_vectors():
        truth.update(ids, vecs)
    t_truth = time.perf_counter() - t
    row(f"exact truth for {len(q_ids)} held-out queries (numpy, chunks of 10,000 rows)", f"{t_truth:.1f} s")
    chosen = {"expansion_search": index.settings.expansion_search, "rerank": index.settings.rerank}
    configs = {"self-check": chosen}
    if not tuning.exact and index.projection is not None:
        configs["fixed (ef 32, 24 re-scored)"] = FIXED
    found = {c: [] for c in configs}
    lat = {c: [] for c in configs}
    # A first untimed pass reads every page these queries touch (graph, snapshot rows) for
    # every config: otherwise whichever config runs first pays the page faults of both.
    for knobs in configs.values():
        _apply(index, knobs)
        index.search(q_vecs, 11)
    names = list(configs)
    for j, (qi, q) in enumerate(zip(q_ids, q_vecs)):
        for c in names if j % 2 == 0 else names[::-1]:  # interleaved, order alternating
            _apply(index, configs[c])
            t = time.perf_counter()
            ids, _ = index.search(q[None], 11)
            lat[c].append(time.perf_counter() - t)
            found[c].append([i for i in ids[0] if i != qi][:10])
    out = {"name": name, "n": n, "kind": desc["kind"], "settings": desc["settings"], "sample_recall": tuning.recall,
           "sweep_s": tuning.seconds}
    for c in configs:
        rec = recall_at_k(np.asarray(found[c]), truth.truth)
        a = np.asarray(lat[c]) * 1000
        per_query = [len(set(f) & set(t)) / 10 for f, t in zip(found[c], truth.truth)]
        row(f"held-out --like queries, {c} {configs[c] if desc['kind'] != 'exact' else '(exact)'}",
            f"recall@10 {rec:.3f} (worst query {min(per_query):.1f})",
            f"p50 {np.percentile(a, 50):.3f} ms  p99 {np.percentile(a, 99):.3f} ms")
        out[c] = {"recall": rec, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}
    return out


def _apply(index, knobs: dict) -> None:
    index.settings.expansion_search = index.index.expansion_search = int(knobs["expansion_search"])
    index.settings.rerank = int(knobs["rerank"])


def chunked(x: np.ndarray):
    for start in range(0, len(x), CHUNK):
        yield x[start : start + CHUNK]


def noisy_chunks(real: np.ndarray, n: int, seed: int = 0, noise: float = 0.15):
    """``n`` vectors: random real parents plus isotropic noise of norm about ``noise`` (as
    benchmarks/bench_map.py makes its archive: near copies, not clones; cosine about 0.99
    with the parent), so the real spectrum and neighbour structure carry over."""
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        r = np.random.default_rng([seed, start])
        x = real[r.integers(0, len(real), m)] + noise * r.standard_normal((m, real.shape[1]), dtype=np.float32) / np.sqrt(real.shape[1])
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def like_cli(db: Path, export: Path, every: int = 50, count: int = 100) -> dict:
    """``imagespace search --like`` from the command line for every ``every``-th test image
    (sorted paths under a ``test`` folder), first ``count`` of them, against exact search
    over the exported vectors (the query's own row dropped)."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    table = pq.read_table(export, columns=["path", "embedding"])
    paths = table.column("path").to_pylist()
    emb = table.column("embedding").combine_chunks()
    vecs = np.asarray(emb.values.to_numpy(zero_copy_only=False), np.float32).reshape(len(paths), -1)
    tests = sorted(p for p in paths if f"{os.sep}test{os.sep}" in p)[::every][:count]
    where = {p: i for i, p in enumerate(paths)}
    header(f"search --like from the command line: {len(tests)} queries (every {every}th test image) over {len(paths):,}")
    recalls, walls, answered = [], [], None
    for q in tests:
        qi = where[q]
        sims = vecs @ vecs[qi]
        sims[qi] = -np.inf
        truth = {paths[i] for i in np.argsort(-sims, kind="stable")[:10]}
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "imagespace", "search", "--like", q, "-k", "10", "--db", str(db),
                              "--json"], capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t)
        doc = json.loads(out.stdout)
        answered = doc.get("index")
        recalls.append(len({r["path"] for r in doc["results"]} & truth) / 10)
    w = np.asarray(walls)
    row("index that answered", json.dumps(answered))
    row("recall@10 against exact search over the export", f"{np.mean(recalls):.3f}",
        f"worst query {min(recalls):.1f}", f"queries below 0.9: {sum(r < 0.9 for r in recalls)}")
    row("whole process per query (start, open, search, print)", f"p50 {np.median(w):.2f} s", f"max {w.max():.2f} s")
    return {"recall": float(np.mean(recalls)), "worst": float(min(recalls)), "index": answered,
            "p50_s": float(np.median(w))}


def run(quick: bool = False, cifar10: Path | None = None, flowers12: Path | None = None, synthetic: bool = True,
        noisy: int = 0, workdir: Path | None = None, skip_real: bool = False) -> list[dict]:
    from .bench_search import Synthetic

    # IMAGESPACE_DATA_CACHE: a folder holding {cifar10,flowers12}-vectors.parquet or -db made with the CLI
    cache = Path(os.environ["IMAGESPACE_DATA_CACHE"]) if os.environ.get("IMAGESPACE_DATA_CACHE") else None
    if cache is not None:
        cifar10 = cifar10 or next((p for p in (cache / "cifar10-vectors.parquet", cache / "cifar10-db") if p.exists()), None)
        flowers12 = flowers12 or next((p for p in (cache / "flowers12-vectors.parquet", cache / "flowers12-db") if p.exists()), None)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="imagespace-bench-recall-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    real = None
    if cifar10 is not None:
        real = load_real(cifar10)
        if not skip_real:
            results.append(measure(f"cifar10 real ({cifar10.name})", chunked(real), real.shape[1], workdir))
    else:
        row("skip cifar10: no collection or export given (index it with the CLI, then --cifar10 DIR)")
    if flowers12 is not None and not skip_real:
        fl = load_real(flowers12)
        results.append(measure(f"flowers12 real ({flowers12.name})", chunked(fl), fl.shape[1], workdir))
    if synthetic and not skip_real:
        n = len(real) if real is not None else 60_000
        data = Synthetic(n)
        results.append(measure("synthetic (bench_search)", (x for _, x in data.chunks()), 1280, workdir))
    if noisy and real is not None:
        results.append(measure(f"cifar10+noise at {noisy:,}", noisy_chunks(real, noisy), real.shape[1], workdir))
        if synthetic:
            data = Synthetic(noisy)
            results.append(measure(f"synthetic at {noisy:,}", (x for _, x in data.chunks()), 1280, workdir))
    header("summary: recall@10 of held-out --like queries and single-query latency")
    for r in results:
        for c in ("self-check", "fixed (ef 32, 24 re-scored)"):
            if c in r:
                row(f"{r['name']} [{r['kind']} {r['settings'] if c == 'self-check' else FIXED}]",
                    f"n {r['n']:,}", f"recall {r[c]['recall']:.3f}", f"p50 {r[c]['p50_ms']:.3f} ms",
                    f"p99 {r[c]['p99_ms']:.3f} ms", c)
    return results


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_recall", description=__doc__.splitlines()[0])
    p.add_argument("--cifar10", type=Path, help="cifar10 collection folder or its Parquet export")
    p.add_argument("--flowers12", type=Path, help="flowers12 collection folder or its Parquet export")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--noisy", type=int, default=0, help="also N vectors made from the real ones plus noise")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--skip-real", action="store_true", help="with --noisy: do not measure the real sets themselves")
    p.add_argument("--like-cli", nargs=2, type=Path, metavar=("DB", "EXPORT"),
                   help="only: 100 search --like runs of the CLI on DB against exact search over EXPORT")
    p.add_argument("--like-count", type=int, default=100, help="with --like-cli: how many queries (every 50th test image)")
    p.add_argument("--collection", type=Path, metavar="DB", help="only: measure this collection's own index as it is")
    p.add_argument("--synthetic-only", type=int, metavar="N", help="only: N synthetic vectors (bench_search's)")
    a = p.parse_args()
    if a.synthetic_only:
        from .bench_search import Synthetic

        data = Synthetic(a.synthetic_only)
        workdir = Path(a.workdir or tempfile.mkdtemp(prefix="imagespace-bench-recall-"))
        measure(f"synthetic at {a.synthetic_only:,}", (x for _, x in data.chunks()), 1280, workdir)
        return
    if a.collection:
        measure_collection(a.collection)
        return
    if a.like_cli:
        like_cli(*a.like_cli, count=a.like_count)
        return
    run(cifar10=a.cifar10, flowers12=a.flowers12, synthetic=not a.no_synthetic, noisy=a.noisy, workdir=a.workdir,
        skip_real=a.skip_real)


if __name__ == "__main__":
    main()
