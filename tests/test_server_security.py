"""Safety by default: traversal, symlinks, uploads, tokens, hosts, cross-site writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serverkit import LiveServer, build_collection, jpeg_bytes, model, png_bytes

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.server import create_app

LOCAL = "http://127.0.0.1"
SECRET = "root:x:0:0:TOP-SECRET-MARKER"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    base = tmp_path_factory.mktemp("sec")
    db, photos = build_collection(base, n=4)
    (base / "secret.txt").write_text(SECRET)
    return db, photos


@pytest.fixture(scope="module")
def client(indexed):
    with TestClient(create_app(indexed[0], max_upload_bytes=200_000), base_url=LOCAL) as c:
        yield c


def ids_by_name(db: Path) -> dict[str, int]:
    with Collection(db, create=False) as c:
        return {Path(r.path).name: r.id for r in c.all_rows()}


def refused(r, secret: str = SECRET) -> bool:
    """Not served: an error status, a JSON message, and none of the secret in the body."""
    return r.status_code in (400, 404, 405, 422) and "detail" in r.json() and secret not in r.text


# -- traversal: nothing but the page's three files and rows by id -------------------------

TRAVERSALS = [
    "/static/%2e%2e/%2e%2e/secret.txt",
    "/static/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/static/..%2f..%2fsecret.txt",
    "/static/%2fetc%2fpasswd",
    "/static//etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",
    "/api/images/..%2f..%2fsecret.txt/file",
    "/api/images/%2Fetc%2Fpasswd/thumb",
    "/api/images/1%2F..%2F..%2Fsecret.txt/file",
    "/static/",
    "/static",
    "/api/",
    "/thumbs/",
    "/thumbs/256/",
    "/collection.sqlite",
    "/db/collection.sqlite",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_and_listing_are_refused(client, path):
    assert refused(client.get(path)), path


def test_path_parameters_are_ignored_for_bytes(client, indexed):
    ids = ids_by_name(indexed[0])
    r = client.get(f"/api/images/{ids['img_001.jpg']}/file", params={"path": "/etc/passwd", "name": "../secret.txt"})
    assert r.status_code == 200 and r.content == (indexed[1] / "img_001.jpg").read_bytes()


def raw_request(port: int, target: str) -> tuple[int, bytes]:
    """Send the request line as written (HTTP clients would normalise ``../`` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def live_with_token(indexed):
    """A real server whose token comes from the environment."""
    server = LiveServer(indexed[0], env={"IMAGESPACE_TOKEN": "env-token-123"})
    server.wait_ready()
    yield server
    server.stop()


def test_raw_dot_dot_segments_on_a_real_server(indexed, live_with_token):
    db, server = indexed[0], live_with_token
    for target in ("/static/../../secret.txt", "/static/../app.py", "/../../../../etc/passwd",
                   "/api/images/../../secret.txt", "/static/..\\..\\secret.txt", "/%2e%2e/secret.txt",
                   "/static/%2e%2e%2f%2e%2e%2fsecret.txt", str(db.parent / "secret.txt")):
        status, body = raw_request(server.port, target)
        assert status in (400, 404), (target, status)
        assert SECRET.encode() not in body and b"root:" not in body, target
    assert raw_request(server.port, "/static/app.js")[0] == 200


# -- symbolic links and files changed on disk --------------------------------------------


def test_symlinks_out_of_the_collection_are_not_served(tmp_path):
    db, photos = build_collection(tmp_path, n=4)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.jpg").write_bytes(jpeg_bytes(99))
    (outside / "secret.txt").write_text(SECRET)
    # indexed through a symlink that points out of the collection's folder
    os.symlink(outside / "private.jpg", photos / "linked.jpg")
    with Collection(db, create=False) as c:
        m = model()
        sync(c, [str(photos)], m, model_spec=m.name)
    ids = ids_by_name(db)
    # after indexing: a photo swapped for a link to a secret, another for a link to an outside image
    (photos / "img_001.jpg").unlink()
    os.symlink(outside / "secret.txt", photos / "img_001.jpg")
    (photos / "img_002.jpg").unlink()
    os.symlink(outside / "private.jpg", photos / "img_002.jpg")
    # and one changed in place (same path, other bytes)
    (photos / "img_003.jpg").write_bytes(jpeg_bytes(77))
    with TestClient(create_app(db), base_url=LOCAL) as c:
        for name in ("linked.jpg", "img_001.jpg", "img_002.jpg"):
            for kind in ("file", "thumb"):
                r = c.get(f"/api/images/{ids[name]}/{kind}")
                assert r.status_code == 404 and "outside the collection" in r.json()["detail"], (name, kind, r.text)
                assert SECRET not in r.text
        for kind in ("file", "thumb"):
            r = c.get(f"/api/images/{ids['img_003.jpg']}/{kind}")
            assert r.status_code == 404 and "changed on disk" in r.json()["detail"]
        assert c.get(f"/api/images/{ids['img_000.jpg']}/file").status_code == 200
    assert not list((db / "thumbs").rglob("*.jpg"))  # no thumbnail was made of a refused file


# -- uploads ---------------------------------------------------------------------------------


def test_oversized_upload_is_413_with_a_message(client):
    big = os.urandom(300_000)
    r = client.post("/api/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413
    assert "over the limit of 200,000 bytes" in r.json()["detail"]


def test_oversized_streamed_upload_without_length_is_413(client):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    r = client.post("/api/search/image", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


@pytest.mark.parametrize(
    "name,data,expect",
    [
        ("notes.txt", b"just some words, not an image", "not a recognised image format"),
        ("empty.jpg", b"", "empty"),
        ("cut.jpg", jpeg_bytes(1)[:300], "truncated"),
        ("page.html", b"<html><script>alert(1)</script></html>", "not a recognised image format"),
    ],
)
def test_non_image_uploads_are_415_with_a_message(client, name, data, expect):
    r = client.post("/api/search/image", files={"file": (name, data, "image/jpeg")})
    assert r.status_code == 415, r.text
    assert expect in r.json()["detail"].lower()


def test_pixel_bomb_upload_is_refused(client):
    bomb = png_bytes(Image.new("L", (9000, 9000)))  # 81 megapixels in a few kB
    assert len(bomb) < 200_000
    r = client.post("/api/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 415 and "over the limit" in r.json()["detail"]


def test_upload_without_a_file_is_422(client):
    r = client.post("/api/search/image", data={"other": "x"})
    assert r.status_code == 422 and "file" in r.json()["detail"]


# -- tokens, hosts, cross-site writes ----------------------------------------------------------


def test_token_is_required_on_every_api_route(indexed):
    app = create_app(indexed[0], token="s3cret-token")
    api_paths = [p for p in app.openapi()["paths"] if p.startswith("/api/") and not p.startswith("/api/session")]
    assert len(api_paths) >= 12
    with TestClient(app, base_url="http://192.168.1.20:8000") as c:
        for path in api_paths:
            url = path.replace("{image_id}", "1")
            method = "post" if path in ("/api/recommend", "/api/search/image") else "get"
            r = getattr(c, method)(url)
            assert r.status_code == 401, (path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
        assert c.post("/api/index").status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/").status_code == 200  # the page holds no data; it asks for the token
        assert c.get("/api/session").json() == {"token_required": True, "authenticated": False}


def test_the_page_gets_an_httponly_cookie_for_the_token(indexed):
    with TestClient(create_app(indexed[0], token="s3cret-token"), base_url="http://10.0.0.5:8000") as c:
        assert c.post("/api/session", json={"token": "nope"}).status_code == 401
        assert c.get("/api/images/1/thumb").status_code == 401
        r = c.post("/api/session", json={"token": "s3cret-token"})
        assert r.status_code == 204
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/api/images/1/thumb").status_code == 200
        assert c.get("/api/session").json() == {"token_required": True, "authenticated": True}


def test_without_a_token_only_local_host_names_are_served(indexed):
    with TestClient(create_app(indexed[0]), base_url=LOCAL) as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
        r = c.get("/api/health", headers={"Host": "attacker.example:8000"})  # DNS rebinding
        assert r.status_code == 400 and "not served" in r.json()["detail"]


def test_other_sites_cannot_start_an_indexing_run(indexed):
    with TestClient(create_app(indexed[0]), base_url="http://127.0.0.1:8000") as c:
        r = c.post("/api/index", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "other sites" in r.json()["detail"]
        assert c.get("/api/index").json()["state"] == "idle"


def test_security_headers_on_page_and_api(client):
    for path in ("/", "/api/health", "/api/images/1/thumb"):
        h = client.get(path).headers
        assert h["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in h["content-security-policy"] and "frame-ancestors 'none'" in h["content-security-policy"]


def serve_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagespace", "serve", *args], capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "IMAGESPACE_TOKEN"}, **(env or {})},
    )


def test_cli_refuses_a_non_local_bind_without_a_token(indexed):
    r = serve_cli("--db", str(indexed[0]), "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 1
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr and "--token" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "host,local",
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False), ("example.org", False), ("", False)],
)
def test_which_hosts_count_as_local(host, local):
    from imagespace.server.security import is_loopback

    assert is_loopback(host) is local


def test_token_from_the_environment_is_enforced(live_with_token):
    url = live_with_token.url
    assert httpx.get(url + "/api/health").status_code == 401
    assert httpx.get(url + "/api/images/1/file").status_code == 401
    ok = httpx.get(url + "/api/health", headers={"Authorization": "Bearer env-token-123"})
    assert ok.status_code == 200 and ok.json()["images"] == 6
