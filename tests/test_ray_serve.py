"""A sharded collection (``index --shards``) served from Ray Serve (``serve --engine ray``), for real:
the answers equal the single-process server's on the unsharded collection, and a replica
SIGKILLed under load costs no request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import run_cli
from serverkit import LiveServer


def replica_pids(deployment: str) -> list[int]:
    """Process ids of the Ray Serve replicas of ``deployment`` (Ray names the processes so)."""
    want = f"ray::ServeReplica:imagespace:{deployment}"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0].decode(errors="replace").strip() == want:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def servers(flowers12, tmp_path_factory):
    """(single-process server on the unsharded collection, Ray Serve on 2 shards x 2 replicas, queries).

    The collection is flowers12's 240 test photos (the whole set would triple the embedding
    time of the fixture); the queries are 100 of its training photos, uploaded."""
    base = tmp_path_factory.mktemp("rayserve")
    photos = flowers12 / "test"
    sharded = run_cli("index", photos, "--db", base / "sharded", "--shards", "2", "--json")
    assert sharded.returncode == 0, sharded.stderr
    report = json.loads(sharded.stdout)
    assert report["added"] == 240 and all(s["added"] > 90 for s in report["shards"].values())
    ray = LiveServer(base / "sharded", "--engine", "ray", "--replicas", "2")  # starts while the other is built
    local = None
    try:
        # raw, as the shards' are: shards answer one query vector together, so they do not
        # centre on a mean each (a new collection's default would rank otherwise)
        whole = run_cli("index", photos, "--db", base / "whole", "--vectors", "raw", "--json")
        assert whole.returncode == 0, whole.stderr
        local = LiveServer(base / "whole")
        local.wait_ready()
        ray.wait_ready(timeout=240)
        queries = [p.read_bytes() for p in sorted((flowers12 / "train").glob("*/*.jpg"))[::7][:100]]
        yield local, ray, queries
    finally:
        if local is not None:
            local.stop()
        assert ray.stop() == 0, ray.log.read_text()[-3000:]


def top10(http: httpx.Client, data: bytes) -> list[tuple[str, float]]:
    r = http.post("/api/search/image", params={"k": 10}, files={"file": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return [(h["path"], h["score"]) for h in r.json()["results"]]


def test_sharded_on_ray_answers_as_the_single_process_server(servers):
    local, ray, queries = servers
    with httpx.Client(base_url=local.url, timeout=60) as a, httpx.Client(base_url=ray.url, timeout=60) as b:
        for data in queries:
            want, got = top10(a, data), top10(b, data)
            assert len(got) == 10 and [p for p, _ in got] == [p for p, _ in want]
            assert max(abs(x - y) for (_, x), (_, y) in zip(got, want)) < 1e-5
        health = b.get("/api/health").json()
        assert health["images"] == 240 and health["shards"]["shards_answering"] == 2
        assert {n: d["running"] for n, d in health["shards"]["replicas"].items() if n.startswith("shard-")} == {"shard-000": 2, "shard-001": 2}
        page = b.get("/")  # the same page, from the ingress
        assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
        first = b.get("/api/images", params={"limit": 1, "offset": 150}).json()[0]  # browsing crosses shards
        assert b.get(first["thumb"]).headers["content-type"] == "image/jpeg"
        # a whole-collection analysis says why it is not served from shards, as JSON
        r = b.get("/api/duplicates")
        assert r.status_code == 501 and "every vector" in r.json()["detail"]


def test_replica_killed_under_load_fails_no_request(servers):
    _, ray, queries = servers
    victim = replica_pids("shard-001")
    assert len(victim) == 2, "two replicas of shard-001 should run"
    done = []
    killed = threading.Event()

    def killer() -> None:
        while len(done) < 60:
            time.sleep(0.01)
        os.kill(victim[0], signal.SIGKILL)
        killed.set()

    with httpx.Client(base_url=ray.url, timeout=120) as http:
        def one(i: int) -> tuple[int, int]:
            r = http.post("/api/search/image", params={"k": 10}, files={"file": ("q.jpg", queries[i % len(queries)], "image/jpeg")})
            done.append(i)
            return r.status_code, len(r.json().get("results", [])) if r.status_code == 200 else r.text

        threading.Thread(target=killer, daemon=True).start()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(300)))
        assert killed.is_set() and victim[0] not in replica_pids("shard-001")
        failed = [a for a in answers if a != (200, 10)]
        assert not failed, failed[:3]
        # Ray starts a new replica; health shows both shards answering, then two replicas again
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            shards = http.get("/api/health").json()["shards"]
            if shards["replicas"]["shard-001"]["running"] == 2:
                break
            time.sleep(0.5)
        assert shards["shards_answering"] == 2 and shards["replicas"]["shard-001"]["running"] == 2, shards


@pytest.mark.slow
def test_calls_in_flight_on_a_killed_replica_are_sent_again():
    """The retry itself, in this process: Serve's router only re-routes calls a replica had not
    accepted; calls it was running when SIGKILLed fail with ActorDiedError unless sent again."""
    import ray
    from ray import serve

    from imagespace.server.ray_serve import ServeClient

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1}, health_check_period_s=2)
        class Slow:
            def work(self, x: int) -> int:
                time.sleep(1)
                return os.getpid()

            def pid(self) -> int:
                return os.getpid()

        client = ServeClient(serve.run(Slow.bind(), name="retry", route_prefix=None), "slow")
        pids = {client.call("pid") for _ in range(20)}
        assert len(pids) == 2
        pending = [client.submit("work", i) for i in range(6)]
        time.sleep(0.4)  # both replicas are now running calls
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        answered_by = [p.result() for p in pending]
        assert victim not in answered_by and client.retried >= 1
    finally:
        serve.shutdown()
        ray.shutdown()
