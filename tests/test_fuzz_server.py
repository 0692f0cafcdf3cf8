"""Hostile requests against a real `imagespace serve` on loopback: never a 5xx, always a message.

- schemathesis generates requests for every operation of /openapi.json (no 5xx, JSON errors);
- paths that try to leave the collection, invalid UTF-8 in queries and paths, malformed
  multipart bodies, oversized bodies, a slow client holding a connection open;
- a file name that is not UTF-8 inside the collection: its rows still answer in JSON.

Quick: 5 generated requests per operation (words and map left out); slow: 150, all.
"""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest
import schemathesis
from conftest import make_photo
from hypothesis import HealthCheck, given, settings
from serverkit import LiveServer, build_collection, jpeg_bytes

from imagespace.indexing import sync
from imagespace.names import readable_path

ODD_NAME = b"odd \xff\xfe name.jpg"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from imagespace.collection import Collection
    from imagespace.models import DEFAULT_MODEL, create_model

    db, photos = build_collection(tmp_path_factory.mktemp("hostile"), n=8)
    make_photo(99, (120, 90)).save(os.path.join(os.fsencode(photos), ODD_NAME), "JPEG", quality=90)
    with Collection(db) as coll:
        report = sync(coll, [str(photos)], create_model(DEFAULT_MODEL), model_spec=DEFAULT_MODEL)
        assert report.added == 1
    server = LiveServer(db, "--max-upload-mb", "1")
    server.wait_ready()
    try:
        yield server, db, photos
    finally:
        server.stop()


def _operations(server: LiveServer) -> list:
    raw = httpx.get(server.url + "/openapi.json", timeout=60).json()
    schema = schemathesis.openapi.from_dict(raw)
    ops = [result.ok() for result in schema.get_all_operations()]
    # POST /api/index starts a real indexing run: the load tests exercise it instead.
    return [op for op in ops if not (op.method.upper() == "POST" and op.path == "/api/index")]


def _check_response(response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        ctype = response.headers.get("content-type", [""])
        assert (ctype[0] if isinstance(ctype, list) else ctype).startswith("application/json"), response.text[:200]
        assert response.json().get("detail"), response.text[:200]


# Each loads a second model on first use (the words model; UMAP compiles for ~1 minute):
# the quick run leaves them to the slow one.
HEAVY = {("GET", "/api/search"), ("GET", "/api/map")}


def _fuzz_schema(server: LiveServer, examples: int, skip: set[tuple[str, str]] = frozenset()) -> dict[str, int]:
    """Every operation of the schema, ``examples`` generated requests each; status counts."""
    statuses: dict[str, int] = {}
    ops = [op for op in _operations(server) if (op.method.upper(), op.path) not in skip]
    assert len(ops) >= 10
    for op in ops:
        started = time.monotonic()

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case) -> None:
            response = case.call(base_url=server.url, timeout=120)
            key = f"{response.status_code // 100}xx"
            statuses[key] = statuses.get(key, 0) + 1
            _check_response(response)

        run()
        print(f"  {op.method.upper()} {op.path}: {time.monotonic() - started:.1f}s")
    print(f"\nschemathesis: {len(ops)} operations, {sum(statuses.values())} requests, {statuses}")
    return statuses


def test_api_from_its_schema_quick(live) -> None:
    server, _, _ = live
    statuses = _fuzz_schema(server, examples=5, skip=HEAVY)
    assert "5xx" not in statuses


@pytest.mark.slow
def test_api_from_its_schema_long(live) -> None:
    server, _, _ = live
    statuses = _fuzz_schema(server, examples=150)
    assert "5xx" not in statuses


def _raw(server: LiveServer, request: bytes, timeout: float = 60) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side cleaning); (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _get(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize(
    "target",
    [
        b"/api/search?q=%FF%FE%FD",  # invalid UTF-8, percent-encoded
        b"/api/search?q=\xff\xfe",  # invalid UTF-8, raw bytes
        b"/api/search?q=daisy&where=path%20like%20%27%FF%25%27",
        b"/api/images/1/similar?where=%C0%AF",
        b"/api/items?ids=1,%FF,2",
        b"/api/images/%FF",
        b"/static/%FF",
        b"/api/images/1/thumb?size=%FF",
        b"/api/search?q=" + b"%00" * 10,
    ],
)
def test_invalid_utf8_in_queries_is_4xx_with_a_message(live, target: bytes) -> None:
    server, _, _ = live
    status, body = _raw(server, _get(target))
    assert 400 <= status < 500 or status == 200, (status, body[:300])
    assert status != 200 or target.startswith(b"/api/search?q=") or target.startswith(b"/api/items")
    if status >= 400:  # the app answers JSON; raw bytes in the request line stop at the HTTP parser (400)
        assert b"detail" in body or (status == 400 and b"\xff" in target and body.strip())


@pytest.mark.parametrize(
    "target",
    [
        b"/../../../../etc/passwd",
        b"/static/../../../../etc/passwd",
        b"/static/..%2f..%2f..%2fetc%2fpasswd",
        b"/api/images/..%2f..%2fetc%2fpasswd/file",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"//etc/passwd",
        b"/api/images/-1/file",
        b"/api/images/99999999999999999999999/file",
        b"/thumbs/256/1.jpg",
        b"/collection.sqlite",
    ],
)
def test_reading_outside_the_collection_is_refused(live, target: bytes) -> None:
    server, _, _ = live
    status, body = _raw(server, _get(target))
    assert 400 <= status < 500, (status, body[:200])
    assert b"root:" not in body and b"SQLite format" not in body


def test_path_parameters_never_choose_the_bytes(live) -> None:
    server, _, _ = live
    status, body = _raw(server, _get(b"/api/images/1/file?path=/etc/passwd&file=../../etc/passwd"))
    assert status == 200 and body.startswith(b"\xff\xd8") and b"root:" not in body  # image 1, by id only


def test_ids_of_files_that_left_the_collection_folders_are_refused(live) -> None:
    server, db, photos = live
    with httpx.Client(base_url=server.url, timeout=60) as http:
        first = http.get("/api/images", params={"limit": 1}).json()[0]
        assert http.get(f"/api/images/{first['id']}/file").status_code == 200
        target = photos / "img_001.jpg"
        saved = target.read_bytes()
        target.unlink()
        os.symlink("/etc/passwd", target)  # the row's path now leads out of the folders
        try:
            row_id = next(i["id"] for i in http.get("/api/images", params={"limit": 100}).json() if i["path"] == str(target))
            r = http.get(f"/api/images/{row_id}/file")
            assert r.status_code == 404 and "root:" not in r.text and r.json()["detail"]
        finally:
            target.unlink()
            target.write_bytes(saved)


MULTIPART_CASES = {
    "no boundary": (b"multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--x--\r\n"),
    "unterminated": (b"multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nabc"),
    "garbage": (b"multipart/form-data; boundary=x", b"\x00\xff" * 100),
    "no headers": (b"multipart/form-data; boundary=x", b"--x\r\n\r\n\r\n--x--\r\n"),
    "wrong field": (b"multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nabc\r\n--x--\r\n"),
    "bad filename bytes": (
        b"multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\xff\xfe.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nnot a jpeg\r\n--x--\r\n",
    ),
    "boundary too long": (b"multipart/form-data; boundary=" + b"b" * 5000, b"--" + b"b" * 5000 + b"\r\n"),
    "not multipart": (b"application/json", b"{\"file\": 1}"),
}


@pytest.mark.parametrize("name", sorted(MULTIPART_CASES))
def test_malformed_multipart_is_4xx_with_a_message(live, name: str) -> None:
    server, _, _ = live
    ctype, body = MULTIPART_CASES[name]
    request = (
        b"POST /api/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: " + ctype
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    status, reply = _raw(server, request)
    assert 400 <= status < 500, (status, reply[:300])
    assert b"detail" in reply


def test_oversized_bodies_are_413(live) -> None:
    server, _, _ = live
    big = b"\xff\xd8" + os.urandom(2 * 1024 * 1024)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and r.json()["detail"]
        lying = _raw(server, b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{}")
        assert lying[0] == 413


def test_slow_clients_do_not_block_others(live) -> None:
    """Ten connections that trickle half a request each; normal requests still answer."""
    server, _, _ = live
    slow = []
    try:
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n")
            slow.append(s)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(5):
                for s in slow:
                    s.sendall(b"X-Slow: " + str(i).encode() + b"\r\n")
                r = http.post("/api/search/image", params={"k": 2}, files={"file": ("q.jpg", jpeg_bytes(i), "image/jpeg")})
                assert r.status_code == 200 and len(r.json()["results"]) == 2
                time.sleep(0.2)
    finally:
        for s in slow:
            s.close()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/api/health").status_code == 200


def test_a_file_name_that_is_not_utf8_answers_in_json(live) -> None:
    server, _, photos = live
    odd = readable_path(os.fsdecode(os.path.join(os.fsencode(photos), ODD_NAME)))  # shown as \xff\xfe
    with httpx.Client(base_url=server.url, timeout=60) as http:
        listing = http.get("/api/images", params={"limit": 100})
        assert listing.status_code == 200, listing.text[:300]
        paths = {item["path"]: item["id"] for item in listing.json()}
        assert odd in paths
        row_id = paths[odd]
        for url in (f"/api/images/{row_id}", f"/api/images/{row_id}/similar", f"/api/images/{row_id}/file", f"/api/images/{row_id}/thumb"):
            r = http.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text[:300])
        found = http.post("/api/search/image", params={"k": 20}, files={"file": ("q.jpg", jpeg_bytes(3), "image/jpeg")})
        assert found.status_code == 200 and odd in {h["path"] for h in found.json()["results"]}
