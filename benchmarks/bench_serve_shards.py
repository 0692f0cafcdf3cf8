"""Serving a sharded collection from Ray Serve against the single-process server, side by side.

The collection: flowers12's 720 training photos, built three times with the CLI (unsharded,
``--shards 2``, ``--shards 4``); the queries: its 240 test photos, uploaded to
``/api/search/image`` (k=10) by a client in this process with 1, 8 and 32 requests in
flight. Each server is started, warmed (a first round of queries not counted) and measured
in turn: latency p50 and p99 as the client sees it, throughput, and the memory of every
process (RSS, and PSS, which shares libraries fairly between processes). Ratios are against
the single-process server measured in the same run.

    python -m benchmarks.bench_serve_shards [--work DIR] [--shards 2 4] [--replicas 2] [--queries 240]

The client, the servers and Ray share this machine's cores: on a machine of 2 cores the Ray
figures are the cost of Ray's extra processes and hops, not a speed-up (which needs more
machines); see docs/scale-out.md for what they say about many machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._common import FLOWERS12, IMAGESPACE, cpu_name, header, need, row

CONCURRENCY = (1, 8, 32)


def build(db: Path, photos: Path, shards: int | None) -> None:
    extra = ["--shards", str(shards)] if shards else []
    subprocess.run([*IMAGESPACE, "index", str(photos), "--db", str(db), "--json", *extra], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "IMAGESPACE_THREADS": "2"})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db: Path, *extra: str):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(db.parent / f"serve-{self.port}.log", "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen([*IMAGESPACE, "serve", "--db", str(db), "--port", str(self.port), *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=5).json().get("warm"):
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.2)
        self.start_seconds = time.perf_counter() - started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def load(url: str, queries: list[bytes], concurrency: int, n: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as http:
        def one(i: int) -> float:
            t = time.perf_counter()
            r = http.post("/api/search/image", params={"k": 10}, files={"file": ("q.jpg", queries[i % len(queries)], "image/jpeg")})
            if r.status_code != 200 or len(r.json()["results"]) != 10:
                raise RuntimeError(f"request failed: {r.status_code} {r.text[:200]}")
            return time.perf_counter() - t

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(min(n, 4 * concurrency))))  # warm: connections, batches, caches
            started = time.perf_counter()
            times = sorted(pool.map(one, range(n)))
            elapsed = time.perf_counter() - started
    return {"p50": 1000 * statistics.median(times), "p99": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
            "qps": n / elapsed}


def memory(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """label -> (RSS MB, PSS MB)."""
    out = {}
    for label, pid in pids.items():
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
            out[label] = (int(fields["Rss"].split()[0]) / 1024, int(fields["Pss"].split()[0]) / 1024)
        except (OSError, KeyError):
            pass
    return out


def ray_processes() -> dict[str, int]:
    """Ray Serve's processes on this machine, by name (replicas numbered per deployment)."""
    seen: dict[str, int] = {}
    out = {}
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        try:
            name = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
        except OSError:
            continue
        for prefix in ("ray::ServeReplica:imagespace:", "ray::ServeController", "ray::ProxyActor"):
            if name.startswith(prefix):
                label = name[len(prefix):] if prefix.endswith(":") else prefix[5:]
                seen[label] = seen.get(label, 0) + 1
                out[f"{label}#{seen[label]}"] = int(entry)
        if name.endswith(("/raylet", "/gcs_server")) or "/raylet " in name or "gcs_server " in name:
            out[Path(name.split()[0]).name] = int(entry)
    return out


def measure(label: str, server: Server, queries: list[bytes], n: int, baseline: dict | None) -> dict:
    figures = {}
    for c in CONCURRENCY:
        f = load(server.url, queries, c, max(n, 4 * c))
        figures[c] = f
        ratio = ""
        if baseline:
            b = baseline[c]
            ratio = f"(p50 x{f['p50'] / b['p50']:.2f}, p99 x{f['p99'] / b['p99']:.2f}, throughput x{f['qps'] / b['qps']:.2f})"
        row(f"{label}, concurrency {c}", f"p50 {f['p50']:.0f} ms  p99 {f['p99']:.0f} ms  {f['qps']:.1f} queries/s", ratio)
    return figures


def run(quick: bool = False, work: Path | None = None, shard_counts=(2, 4), replicas: int = 2, queries_n: int = 240) -> None:
    photos = need(FLOWERS12) / "train"
    queries = [p.read_bytes() for p in sorted((FLOWERS12 / "test").glob("*/*.jpg"))]
    n = 60 if quick else queries_n
    work = Path(work or tempfile.mkdtemp(prefix="bench-serve-shards-"))
    header(f"Ray Serve over shards vs one process: flowers12 (720 photos), {n} uploaded queries per point, {cpu_name()}, {os.cpu_count()} cores")
    build(work / "whole", photos, None)
    for s in shard_counts:
        build(work / f"shards-{s}", photos, s)
    local = Server(work / "whole")
    try:
        row("single process: start to warm", f"{local.start_seconds:.1f} s")
        baseline = measure("single process", local, queries, n, None)
        for label, (rss, pss) in memory({"server": local.proc.pid}).items():
            row(f"single process: memory of the {label}", f"RSS {rss:.0f} MB  PSS {pss:.0f} MB")
    finally:
        local.stop()
    for s in shard_counts:
        ray = Server(work / f"shards-{s}", "--engine", "ray", "--replicas", str(replicas))
        try:
            row(f"Ray, {s} shards x {replicas} replicas: start to warm", f"{ray.start_seconds:.1f} s")
            measure(f"Ray, {s} shards x {replicas} replicas", ray, queries, n, baseline)
            mem = memory(ray_processes())
            for label, (rss, pss) in sorted(mem.items()):
                row(f"Ray, {s} shards: memory of {label}", f"RSS {rss:.0f} MB  PSS {pss:.0f} MB")
            row(f"Ray, {s} shards: all Ray processes", f"RSS {sum(r for r, _ in mem.values()):.0f} MB  "
                f"PSS {sum(p for _, p in mem.values()):.0f} MB")
        finally:
            ray.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_serve_shards", description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="where the collections are built (reused: indexing is incremental)")
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--queries", type=int, default=240, help="measured queries per concurrency")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    run(args.quick, args.work, tuple(args.shards), args.replicas, args.queries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
