"""Load against a real `imagespace serve` on loopback: nothing lost, nothing torn, memory flat.

1. Eight clients search while an `imagespace index` run writes to the same collection: no
   error, every answer whole (k distinct existing rows, best first, scores that are the
   true cosines of the stored vectors), the new rows found once the run ends; p99 reported.
2. Many requests at concurrency 32 against a large collection made with random unit vectors
   (written through Collection.write_embedded, far faster than embedding): every request
   answered correctly, the server's memory flat after warming up; peak reported.

Quick versions run in `make test`; the full sizes (10,000 images, 1,000 requests) under slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_photo
from serverkit import LiveServer, jpeg_bytes

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.embed import Embedded, FileInfo
from imagespace.models import DEFAULT_MODEL, create_model

K = 5
RUN_LIMIT = 600  # seconds: a bound on every loop here, never a measurement


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def _raw_vectors(db: Path) -> dict[int, np.ndarray]:
    with Collection(db, create=False) as coll:
        ids, vecs = coll.raw_vectors(coll.ids())
    return {int(i): v / np.linalg.norm(v) for i, v in zip(ids, vecs)}


def _p(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q)) if latencies else 0.0


def _vectors(db: Path) -> dict[int, np.ndarray]:
    with Collection(db, create=False) as coll:
        ids, vecs = coll.vectors()
    return {int(i): v for i, v in zip(ids, vecs)}


def _check_answer(results: list[dict], k: int, exclude: int | None = None, by_score: bool = True) -> None:
    """Whole and ordered: k distinct rows, not the query itself, best first (``by_score``:
    in order of score; an expanded query, the default of a centred collection, orders by
    the expanded query while each score stays the plain cosine)."""
    ids = [r["id"] for r in results]
    assert len(ids) == k and len(set(ids)) == k, ids
    assert exclude not in ids
    scores = [r["score"] for r in results]
    if by_score:
        assert scores == sorted(scores, reverse=True), scores


# -- 1. searches while an indexing run writes ---------------------------------------------


def _searches_during_indexing(tmp_path: Path, first: int, added: int) -> dict:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(first):
        make_photo(i, (64, 48)).save(photos / f"img_{i:03d}.jpg", quality=85)
    db = tmp_path / "db"
    model = create_model(DEFAULT_MODEL)
    with Collection(db) as coll:
        sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL)
    for i in range(first, first + added):  # waiting for the run that the test starts
        make_photo(i, (64, 48)).save(photos / f"img_{i:03d}.jpg", quality=85)
    server = LiveServer(db)
    server.wait_ready()
    answers: list[tuple[int, list[dict]]] = []  # (query id, results) for the score check
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            first_ids = [item["id"] for item in http.get("/api/images", params={"limit": first}).json()]
        run = subprocess.Popen(
            [sys.executable, "-m", "imagespace", "index", str(photos), "--db", str(db), "--json", "--batch-size", "4", "--workers", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "IMAGESPACE_THREADS": "1"},
        )

        def client(n: int) -> None:
            rng = np.random.default_rng(n)
            deadline = time.monotonic() + RUN_LIMIT
            with httpx.Client(base_url=server.url, timeout=120, limits=httpx.Limits(keepalive_expiry=2.0)) as http:
                while not stop.is_set() and time.monotonic() < deadline:
                    started = time.monotonic()
                    try:
                        if n == 0:  # one client uploads query images; the others search by stored ones
                            r = http.post("/api/search/image", params={"k": K}, files={"file": ("q.jpg", jpeg_bytes(int(rng.integers(1000))), "image/jpeg")})
                            query = None
                        else:
                            query = int(rng.choice(first_ids))
                            r = http.get(f"/api/images/{query}/similar", params={"k": K})
                        took = time.monotonic() - started
                        if r.status_code != 200:
                            raise AssertionError(f"{r.status_code}: {r.text[:300]}")
                        results = r.json()["results"]
                        _check_answer(results, K, exclude=query, by_score=False)
                        with lock:
                            latencies.append(took)
                            if query is not None:
                                answers.append((query, results))
                    except Exception as e:  # noqa: BLE001 - collected and reported by the test
                        with lock:
                            errors.append(f"client {n}: {type(e).__name__}: {e}")
                        return

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, n) for n in range(8)]
            out, err = run.communicate(timeout=RUN_LIMIT)
            time.sleep(1.0)  # a last round of searches after the run has ended
            stop.set()
            for f in futures:
                f.result(timeout=RUN_LIMIT)
        assert run.returncode == 0, err.decode()
        assert errors == [], errors[:5]
        # Nothing stale: the new rows are found once the run has ended.
        with httpx.Client(base_url=server.url, timeout=120) as http:
            info = http.get("/api/info").json()
            assert info["images"] == first + added
            newest = photos / f"img_{first + added - 1:03d}.jpg"
            r = http.post("/api/search/image", params={"k": 1}, files={"file": ("q.jpg", newest.read_bytes(), "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"][0]["path"] == str(newest)
            assert r.json()["results"][0]["score"] > 0.999
        rebuilds = server.log.read_text(errors="replace").count("rebuilding the vector index")
    finally:
        stop.set()
        server.stop()
    # Nothing torn: every score of an answer is the cosine of the two vectors under one mean.
    # A run that takes the collection past 100 images learns its mean at the end (every
    # stored vector rewritten in one transaction), so an answer is wholly before it (the
    # network's own vectors) or wholly after it (the stored ones), never a mix.
    states = [_vectors(db), _raw_vectors(db)]
    for query, results in answers:
        assert any(all(abs(float(v[query] @ v[r["id"]]) - r["score"]) < 1e-4 for r in results) for v in states), (
            query, results)
    figures = {
        "requests": len(latencies), "p50_ms": round(_p(latencies, 50), 1), "p99_ms": round(_p(latencies, 99), 1),
        "rows_added_meanwhile": added, "index_rebuilds": rebuilds,
    }
    print(f"\nsearches during indexing: {figures}")
    assert len(latencies) >= 8
    return figures


def test_searches_while_indexing_quick(tmp_path: Path) -> None:
    _searches_during_indexing(tmp_path, first=12, added=8)


@pytest.mark.slow
def test_searches_while_indexing_long(tmp_path: Path) -> None:
    _searches_during_indexing(tmp_path, first=40, added=80)


# -- 2. many requests at concurrency 32 on a large collection ------------------------------


def _synthetic_collection(db: Path, n: int) -> None:
    """``n`` rows with random unit vectors, bound to the real model (so uploads can be embedded)."""
    model = create_model(DEFAULT_MODEL)
    rng = np.random.default_rng(0)
    with Collection(db) as coll:
        # raw: random vectors have no mean worth removing, and a raw collection answers with
        # the plain nearest rows, which the brute-force check below computes
        coll.bind_model(model.model_id, DEFAULT_MODEL, model.dim, "raw")
        for start in range(0, n, 1000):
            vecs = rng.normal(size=(min(1000, n - start), model.dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            items = [
                Embedded(FileInfo(f"/nonexistent/synthetic/{start + i:06d}.jpg", 1000, 1, f"{start + i:032x}"), v, [("daisy", 0.5)], 64, 48, "JPEG")
                for i, v in enumerate(vecs)
            ]
            coll.write_embedded(items, [])


def _many_requests(tmp_path: Path, images: int, requests: int) -> dict:
    db = tmp_path / "db"
    _synthetic_collection(db, images)
    vectors = _vectors(db)
    ids = np.array(sorted(vectors))
    matrix = np.stack([vectors[int(i)] for i in ids])
    server = LiveServer(db)
    server.wait_ready()
    server.wait_warm()  # the words model loads in the background: ~0.5 GB that is not serving
    latencies: list[float] = []
    lock = threading.Lock()
    rss: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:  # warm: index loaded, model loaded
            assert http.get(f"/api/images/{int(ids[0])}/similar", params={"k": K}).status_code == 200
            assert http.post("/api/search/image", files={"file": ("q.jpg", jpeg_bytes(1), "image/jpeg")}).status_code == 200
        rss.append(_rss_mb(server.proc.pid))
        rng = np.random.default_rng(1)
        plan = [("similar", int(rng.choice(ids))) if i % 10 else ("upload", i) for i in range(requests)]

        def one(step: tuple[str, int], http: httpx.Client) -> None:
            kind, arg = step
            started = time.monotonic()
            try:
                if kind == "similar":
                    r = http.get(f"/api/images/{arg}/similar", params={"k": K})
                else:
                    r = http.post("/api/search/image", params={"k": K}, files={"file": ("q.jpg", jpeg_bytes(arg), "image/jpeg")})
            except httpx.TransportError as e:
                raise AssertionError(f"{kind} {arg} lost after {time.monotonic() - started:.2f}s: {type(e).__name__}: {e}") from None
            took = time.monotonic() - started
            assert r.status_code == 200, f"{kind} {arg}: {r.status_code} {r.text[:200]}"
            results = r.json()["results"]
            _check_answer(results, K, exclude=arg if kind == "similar" else None)
            if kind == "similar":  # the exact answer: a brute-force check against the rows
                truth = ids[np.argsort(-(matrix @ vectors[arg]))][1 : K + 1]
                assert [x["id"] for x in results] == [int(t) for t in truth], (arg, results)
            with lock:
                latencies.append(took)
                if len(latencies) % 100 == 0:
                    rss.append(_rss_mb(server.proc.pid))

        # uvicorn closes a connection idle for 5 s; a client that keeps one as long races it
        # (a request sent as the server closes is reset). Let ours expire first.
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=2.0)
        with httpx.Client(base_url=server.url, timeout=300, limits=limits) as http, ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(one, step, http) for step in plan]
            failures = []
            for f in futures:
                try:
                    f.result(timeout=RUN_LIMIT)
                except Exception as e:  # noqa: BLE001 - every failure is listed
                    failures.append(f"{type(e).__name__}: {e}")
        peak = _rss_mb(server.proc.pid, "VmHWM")
        rss.append(_rss_mb(server.proc.pid))
    finally:
        server.stop()
    figures = {
        "images": images, "requests": requests, "answered": len(latencies), "failed": len(failures),
        "p50_ms": round(_p(latencies, 50), 1), "p99_ms": round(_p(latencies, 99), 1),
        "rss_after_warmup_mb": round(rss[0]), "rss_end_mb": round(rss[-1]), "peak_rss_mb": round(peak),
    }
    print(f"\nconcurrency 32: {figures}")
    assert failures == [], failures[:5]
    assert len(latencies) == requests  # none lost
    # Memory stable: after warming up, serving does not keep growing (allocator noise allowed).
    assert rss[-1] - rss[0] < 200, rss
    return figures


def test_many_requests_at_concurrency_32_quick(tmp_path: Path) -> None:
    _many_requests(tmp_path, images=500, requests=100)


@pytest.mark.slow
def test_many_requests_at_concurrency_32_on_10000_images(tmp_path: Path) -> None:
    _many_requests(tmp_path, images=10_000, requests=1000)
