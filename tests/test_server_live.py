"""Against a real ``python -m imagespace serve`` (uvicorn) on a free loopback port."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from serverkit import LiveServer, build_collection, jpeg_bytes


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    db, photos = build_collection(tmp_path_factory.mktemp("live"), n=8)
    server = LiveServer(db)
    server.wait_ready()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield server, http, db, photos
    assert server.stop() is not None


def test_page_and_schema(live):
    _, http, _, _ = live
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = http.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert http.get(f"/static/{name}", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    schema = http.get("/openapi.json").json()
    assert schema["info"]["title"] == "imagespace" and "/api/search/image" in schema["paths"]
    assert http.get("/docs").status_code == 404  # the interactive docs would load a CDN


def test_upload_search_and_neighbours(live):
    _, http, _, _ = live
    r = http.post("/api/search/image", params={"k": 3}, files={"file": ("q.jpg", jpeg_bytes(5), "image/jpeg")})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["path"].endswith("img_005.jpg") and top["score"] > 0.99
    d = http.get(f"/api/images/{top['id']}", params={"k": 4}).json()
    assert len(d["neighbours"]) == 4 and top["id"] not in [n["id"] for n in d["neighbours"]]


def test_thumbnails_with_caching_headers(live):
    _, http, db, _ = live
    url = http.get("/api/images/3").json()["thumb"]
    first = http.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert "immutable" in first.headers["cache-control"]
    assert http.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert list((db / "thumbs" / "256").glob("3-*.jpg"))


def test_errors_are_json(live):
    _, http, _, _ = live
    for path, status in (("/api/images/12345", 404), ("/api/images/x", 422), ("/nowhere", 404)):
        r = http.get(path)
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        assert isinstance(r.json()["detail"], str) and "Traceback" not in r.text
    r = http.post("/api/search/image", files={"file": ("a.txt", b"plain text", "text/plain")})
    assert r.status_code == 415 and "not a recognised image format" in r.json()["detail"]


def test_oversized_upload_over_real_http(live):
    _, http, _, _ = live
    r = http.post("/api/search/image", files={"file": ("big.jpg", b"\xff" * (21 * 1024 * 1024), "image/jpeg")})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert http.get("/api/health").status_code == 200  # and the server carries on


def test_indexing_run_started_and_followed_over_http(live):
    _, http, _, photos = live
    for i in range(60, 63):
        (photos / f"added_{i}.jpg").write_bytes(jpeg_bytes(i))
    before = http.get("/api/health").json()["images"]
    r = http.post("/api/index")
    assert r.status_code == 202, r.text
    states = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = http.get("/api/index").json()
        states.append(job["state"])
        if job["state"] != "running":
            break
        time.sleep(0.2)
    assert job["state"] == "done", job
    assert job["report"]["added"] == 3 and job["total"] == 3 and job["done"] == 3
    assert http.get("/api/health").json()["images"] == before + 3
    hits = http.post("/api/search/image", params={"k": 1}, files={"file": ("q.jpg", jpeg_bytes(61), "image/jpeg")}).json()
    assert Path(hits["results"][0]["path"]).name == "added_61.jpg"


def test_server_stops_cleanly(live):
    server = LiveServer(live[2])  # a second server over the same collection
    server.wait_ready()
    assert httpx.get(server.url + "/api/health").status_code == 200
    # SIGTERM: uvicorn shuts down gracefully, then re-raises the signal (never a SIGKILL)
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/api/health", timeout=2)
