"""The REST API through FastAPI's TestClient, over a small collection indexed for real."""

from __future__ import annotations

import time
import types
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serverkit import build_collection, jpeg_bytes

from imagespace.collection import Collection
from imagespace.search import Hit
from imagespace.server import create_app
from imagespace.space import ImageSpace

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path]:
    return build_collection(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def client(indexed):
    db, _ = indexed
    with TestClient(create_app(db), base_url=LOCAL) as c:
        yield c


def ids_by_name(db: Path) -> dict[str, int]:
    with Collection(db, create=False) as c:
        return {Path(r.path).name: r.id for r in c.all_rows()}


def test_health_and_info(client, indexed):
    assert client.get("/api/health").json() == {"status": "ok", "images": 18, "indexing": "idle", "warm": False}
    info = client.get("/api/info").json()
    assert info["images"] == 18 and info["dim"] == 1280
    assert info["roots"] == [str(indexed[1].resolve())]


def test_openapi_describes_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for p in ("/api/search", "/api/search/image", "/api/images/{image_id}", "/api/images/{image_id}/similar",
              "/api/images/{image_id}/thumb", "/api/recommend", "/api/duplicates", "/api/clusters", "/api/map",
              "/api/index", "/api/health"):
        assert p in paths, p
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_search_by_uploaded_image_finds_that_image_first(client, indexed):
    ids = ids_by_name(indexed[0])
    r = client.post("/api/search/image", params={"k": 5}, files={"file": ("q.jpg", jpeg_bytes(3), "image/jpeg")})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 5
    assert results[0]["id"] == ids["img_003.jpg"] and results[0]["score"] > 0.99
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["thumb"].startswith(f"/api/images/{results[0]['id']}/thumb?v=")


def test_paging_and_filters(client, indexed):
    ids = ids_by_name(indexed[0])
    one = ids["img_005.jpg"]
    full = client.get(f"/api/images/{one}/similar", params={"k": 6}).json()["results"]
    page = client.get(f"/api/images/{one}/similar", params={"k": 2, "offset": 2}).json()["results"]
    assert [x["id"] for x in page] == [x["id"] for x in full[2:4]]
    assert one not in [x["id"] for x in full]
    png = client.get(f"/api/images/{one}/similar", params={"where": "format = PNG"}).json()["results"]
    assert [x["id"] for x in png] == [ids["small_000.png"]]
    high = client.get(f"/api/images/{ids['img_000.jpg']}/similar", params={"min_score": 0.8}).json()["results"]
    assert {x["id"] for x in high} >= {ids["copy_000.jpg"]} and all(x["score"] >= 0.8 for x in high)
    bad = client.get(f"/api/images/{one}/similar", params={"where": "colour = red"})
    assert bad.status_code == 422 and "expected a field" in bad.json()["detail"]
    assert client.get(f"/api/images/{one}/similar", params={"k": 0}).status_code == 422


def test_image_details_has_tags_and_neighbours(client, indexed):
    ids = ids_by_name(indexed[0])
    d = client.get(f"/api/images/{ids['copy_000.jpg']}").json()
    assert d["path"].endswith("copy_000.jpg") and d["width"] == 120 and d["format"] == "JPEG"
    assert len(d["tags"]) == 5 and {"label", "score"} <= set(d["tags"][0])
    assert d["neighbours"][0]["id"] in (ids["img_000.jpg"], ids["small_000.png"])
    assert d["file"] == f"/api/images/{d['id']}/file"


def test_unknown_image_and_bad_id_are_json_errors(client):
    r = client.get("/api/images/99999")
    assert r.status_code == 404 and "no image with id 99999" in r.json()["detail"]
    r = client.get("/api/images/abc")
    assert r.status_code == 422 and "image_id" in r.json()["detail"]
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json() == {"detail": "not found"}


def test_thumbnails_are_cached_on_disk_with_caching_headers(client, indexed):
    db = indexed[0]
    ids = ids_by_name(db)
    i = ids["img_007.jpg"]
    url = client.get(f"/api/images/{i}").json()["thumb"]
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    etag = r.headers["etag"]
    cached = list((db / "thumbs" / "256").glob(f"{i}-*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content
    mtime = cached[0].stat().st_mtime_ns
    again = client.get(f"/api/images/{i}/thumb")
    assert again.content == r.content and again.headers["cache-control"] == "private, no-cache"
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not made again
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    big = client.get(f"/api/images/{i}/thumb", params={"size": 128})
    assert big.status_code == 200 and big.headers["etag"] != etag
    assert client.get(f"/api/images/{i}/thumb", params={"size": 300}).status_code == 422


def test_original_file_by_id(client, indexed):
    db, photos = indexed
    i = ids_by_name(db)["small_000.png"]
    r = client.get(f"/api/images/{i}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (photos / "small_000.png").read_bytes()


def test_browse_pages_through_every_image(client, indexed):
    first = client.get("/api/images", params={"limit": 10}).json()
    rest = client.get("/api/images", params={"limit": 10, "offset": 10}).json()
    assert len(first) == 10 and len(rest) == 8
    assert sorted(x["id"] for x in first + rest) == sorted(ids_by_name(indexed[0]).values())
    assert client.get("/api/images", params={"limit": 0}).status_code == 422


def test_items_by_ids(client, indexed):
    ids = ids_by_name(indexed[0])
    want = [ids["img_001.jpg"], ids["img_002.jpg"], 424242]
    got = client.get("/api/items", params={"ids": ",".join(map(str, want))}).json()
    assert [x["id"] for x in got] == want[:2]
    assert client.get("/api/items", params={"ids": "1,x"}).status_code == 422


def test_internal_errors_never_show_a_trace(indexed, monkeypatch):
    app = create_app(indexed[0])
    monkeypatch.setattr(app.state.engine, "info", lambda: (_ for _ in ()).throw(RuntimeError("secret detail /etc")))
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c:
        r = c.get("/api/health")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error; the server's log has the details"}
    assert "secret" not in r.text and "Traceback" not in r.text


# -- analysis routes: the shaping is tested with stand-ins for the library's answers -------


def test_duplicates_route_shapes_groups(client, indexed, monkeypatch):
    from imagespace.analysis.duplicates import DuplicateGroups

    ids = ids_by_name(indexed[0])
    group = [ids["img_000.jpg"], ids["copy_000.jpg"], ids["small_000.png"]]
    seen = {}

    def duplicate_groups(space, threshold=None, *, verify=True, tier="all"):
        seen["threshold"] = threshold
        members = [{"id": i, "kept": n == 0, "reason": "", "score": None, "similarity": None} for n, i in enumerate(group)]
        return DuplicateGroups([{"tier": "copy", "ids": group, "members": members}], {})

    monkeypatch.setattr(ImageSpace, "duplicate_groups", duplicate_groups)
    r = client.get("/api/duplicates", params={"threshold": 0.5})
    assert r.status_code == 200, r.text
    assert [[x["id"] for x in g] for g in r.json()["groups"]] == [group] and seen["threshold"] == 0.5
    assert [m["kept"] for m in r.json()["details"][0]["members"]] == [True, False, False]


def test_clusters_route(client, indexed, monkeypatch):
    ids = sorted(ids_by_name(indexed[0]).values())
    result = types.SimpleNamespace(
        clusters=[types.SimpleNamespace(id=0, label="daisy", ids=ids[:10]), types.SimpleNamespace(id=1, label="rose", ids=ids[10:17])],
        outliers=ids[17:],
    )
    monkeypatch.setattr(ImageSpace, "clusters", lambda space, k=None: result)
    body = client.get("/api/clusters", params={"k": 3}).json()
    assert [(c["label"], c["size"]) for c in body["clusters"]] == [("daisy", 10), ("rose", 7)]
    assert [x["id"] for x in body["clusters"][0]["sample"]] == ids[:10] and body["outliers"] == ids[17:]


def test_map_route_scales_to_unit_square(client, indexed, monkeypatch):
    ids = np.array(sorted(ids_by_name(indexed[0]).values()))
    xy = np.stack([np.arange(len(ids)) * 3.0 - 7, np.linspace(5, 6, len(ids))], axis=1)
    monkeypatch.setattr(ImageSpace, "layout", lambda space, max_points=5000: (ids, xy))
    points = client.get("/api/map", params={"max_points": 4000}).json()["points"]
    assert [p["id"] for p in points] == ids.tolist()
    assert points[0]["x"] == 0 and points[-1]["x"] == 1 and points[-1]["y"] == 1
    assert all(p["thumb"].startswith(f"/api/images/{p['id']}/thumb") for p in points)


def test_recommend_route(client, indexed, monkeypatch):
    ids = ids_by_name(indexed[0])
    calls = {}

    def recommend(collection, like, unlike=(), k=10, *, dba=False, index=None):
        calls.update(like=like, unlike=unlike, k=k)
        return [Hit(ids["img_009.jpg"], "ignored", 0.5, [("daisy", 0.9)], 1, 1, 1)]

    monkeypatch.setattr("imagespace.analysis.recommend.recommend", recommend)
    r = client.post("/api/recommend", json={"like": [ids["img_001.jpg"]], "unlike": [ids["img_002.jpg"]], "k": 3})
    assert r.status_code == 200, r.text
    assert [x["id"] for x in r.json()["results"]] == [ids["img_009.jpg"]]
    assert calls == {"like": [ids["img_001.jpg"]], "unlike": [ids["img_002.jpg"]], "k": 3}
    assert client.post("/api/recommend", json={"like": [987654]}).status_code == 404
    assert client.post("/api/recommend", json={"like": []}).status_code == 422


def test_word_search_route_pages_and_passes_filters(client, indexed, monkeypatch):
    ids = ids_by_name(indexed[0])

    from imagespace.search import Answer, Searcher

    def by_text(searcher, text, text_model, *, k, offset, where, min_score, exclude):
        hits = searcher.query(like=indexed[1] / "img_004.jpg", k=k, offset=offset, where=where, min_score=min_score).hits
        return Answer(hits, {"understood_as": [{"concept": text}]})

    monkeypatch.setattr(Searcher, "_by_text", by_text)
    monkeypatch.setattr("imagespace.server.engine.warm_words", lambda: None)  # no word lists needed
    full = client.get("/api/search", params={"q": "red flower", "k": 4}).json()
    assert full["understood_as"] == [{"concept": "red flower"}] and len(full["results"]) == 4
    page = client.get("/api/search", params={"q": "red flower", "k": 2, "offset": 2}).json()
    assert [x["id"] for x in page["results"]] == [x["id"] for x in full["results"][2:4]]
    assert ids["img_004.jpg"] not in [x["id"] for x in full["results"]]
    assert client.get("/api/search", params={"q": ""}).status_code == 422


def test_real_duplicates_when_present(indexed):
    """With the library's own duplicate detection."""
    ids = ids_by_name(indexed[0])
    with TestClient(create_app(indexed[0]), base_url=LOCAL) as c:
        r = c.get("/api/duplicates")
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert any({ids["img_000.jpg"], ids["copy_000.jpg"]} <= {x["id"] for x in g} for g in groups)


def test_real_recommend_and_clusters_when_present(indexed):
    """With the library's own recommend() and cluster_collection()."""
    ids = ids_by_name(indexed[0])
    with TestClient(create_app(indexed[0]), base_url=LOCAL) as c:
        r = c.post("/api/recommend", json={"like": [ids["img_000.jpg"]], "unlike": [ids["img_001.jpg"]], "k": 5})
        assert r.status_code == 200, r.text
        got = [x["id"] for x in r.json()["results"]]
        assert 0 < len(got) <= 5 and ids["img_000.jpg"] not in got and ids["img_001.jpg"] not in got
        r = c.get("/api/clusters", params={"k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        members = [i for cl in body["clusters"] for i in cl["ids"]] + body["outliers"]
        assert sorted(members) == sorted(ids.values()) and all(cl["label"] for cl in body["clusters"])


# -- indexing runs from the API ---------------------------------------------------------------


def wait_for_job(c: TestClient, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = c.get("/api/index").json()
        seen.append((job["done"], job["total"]))
        if job["state"] != "running":
            return job | {"seen": seen}
        time.sleep(0.1)
    raise AssertionError(f"indexing did not finish in {timeout}s: {seen[-5:]}")


def test_indexing_run_from_the_api(tmp_path):
    db, photos = build_collection(tmp_path, n=3)
    with TestClient(create_app(db), base_url=LOCAL) as c:
        for i in range(40, 45):
            (photos / f"new_{i}.jpg").write_bytes(jpeg_bytes(i))
        (photos / "img_001.jpg").unlink()
        r = c.post("/api/index")
        assert r.status_code == 202 and r.json()["state"] == "running", r.text
        assert r.json()["roots"] == [str(photos.resolve())]
        job = wait_for_job(c)
        assert job["state"] == "done", job
        assert job["report"]["added"] == 5 and job["report"]["removed"] == 1
        assert (job["done"], job["total"]) == (5, 5)
        assert c.get("/api/health").json()["images"] == 3 + 2 + 5 - 1
        # the open Searcher sees the new rows at once
        hits = c.post("/api/search/image", params={"k": 1}, files={"file": ("q.jpg", jpeg_bytes(42), "image/jpeg")}).json()
        assert hits["results"][0]["path"].endswith("new_42.jpg")


def test_indexing_refused_while_another_run_holds_the_lock(indexed):
    db = indexed[0]
    with TestClient(create_app(db), base_url=LOCAL) as c, Collection(db, create=False) as other, other.lock():
        r = c.post("/api/index")
        assert r.status_code == 409 and "another indexing run" in r.json()["detail"]
        assert c.get("/api/index").json()["state"] == "idle"
