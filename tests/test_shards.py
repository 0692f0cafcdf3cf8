"""Shards built separately and searched together answer like one unsharded collection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_photo, run_cli

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.search import Searcher
from imagespace.index.shards import SHARD_STRIDE, ShardedIndex
from imagespace.server.sharded import ShardUnavailable, in_process_engine
from imagespace.sharding import build_shard, hash_shard, index_sharded, plan_shards, shard_folders


def test_plans_cover_every_file_once(photo_folder):
    folder = photo_folder(9)
    for sub in ("a", "b"):
        (folder / sub).mkdir()
    (folder / "img_000.jpg").rename(folder / "a" / "x.jpg")
    (folder / "img_001.jpg").rename(folder / "b" / "y.jpg")
    hashed = plan_shards([folder], 3, by="hash")
    files = sorted(p for paths in hashed.values() for p in paths)
    assert len(files) == 9 and len(set(files)) == 9
    assert all(hash_shard(p, 3) == int(name[-3:]) for name, paths in hashed.items() for p in paths)
    by_prefix = plan_shards([folder], 2, by="prefix")
    entries = sorted(p for paths in by_prefix.values() for p in paths)
    assert entries == sorted([str(folder / "a"), str(folder / "b")] + [str(folder / f"img_{i:03d}.jpg") for i in range(2, 9)])
    with pytest.raises(ValueError):
        plan_shards([folder], 2, by="alphabet")


def test_sharded_search_equals_unsharded(photo_folder, tmp_path, model):
    folder = photo_folder(14)
    with Collection(tmp_path / "whole") as whole:
        # raw, as shards are (they answer one query vector together: no mean, no expansion)
        sync(whole, [str(folder)], model, model_spec=model.name, pipeline="raw")
        ids, vecs = whole.vectors()
        searcher = Searcher(whole, model)
        queries = vecs[:5]
        expected = [[(h.path, h.score) for h in searcher.query(vector=q, k=6).hits] for q in queries]
    plan = plan_shards([folder], 3, by="hash")
    assert sum(1 for p in plan.values() if p) >= 2
    for name, shard_paths in plan.items():  # each shard on its own, as separate workers would
        if shard_paths:
            report = build_shard(tmp_path / "shards" / name, shard_paths, model.name)
            assert report.added == len(shard_paths)
    with ShardedIndex(tmp_path / "shards") as sharded:
        assert len(sharded) == len(ids) == 14
        keys, sims = sharded.search(queries, 6)
        assert (keys >= 0).all() and (keys // SHARD_STRIDE).max() <= 2
        for q, want in zip(queries, expected):
            got = [(h.row.path, h.score) for h in sharded.hits(q, 6)]
            assert [p for p, _ in got] == [p for p, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_cli_index_shards_stays_incremental(photo_folder, tmp_path):
    folder = photo_folder(10)
    db = tmp_path / "sharded"
    first = run_cli("index", folder, "--db", db, "--shards", "2", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["added"] == 10 and sorted(report["shards"]) == ["shard-000", "shard-001"]
    assert sum(s["added"] for s in report["shards"].values()) == 10
    make_photo(50).save(folder / "new.jpg")
    (folder / "img_003.jpg").unlink()
    again = json.loads(run_cli("index", folder, "--db", db, "--json").stdout)  # the split is remembered
    assert (again["added"], again["removed"], again["unchanged"]) == (1, 1, 9)
    with ShardedIndex(db) as sharded:
        assert len(sharded) == 10
    resplit = run_cli("index", folder, "--db", db, "--shards", "3")
    assert resplit.returncode == 1 and "cannot be re-split" in resplit.stderr


def test_sharded_engine_merges_like_one_collection_and_never_answers_short(photo_folder, tmp_path, model):
    folder = photo_folder(12)
    with Collection(tmp_path / "whole") as whole:
        sync(whole, [str(folder)], model, model_spec=model.name, pipeline="raw")  # as shards are
        _, vecs = whole.vectors()
        searcher = Searcher(whole, model)
        expected = [[(h.path, h.score) for h in searcher.query(vector=q, k=5, offset=1).hits] for q in vecs[:4]]
    index_sharded(tmp_path / "shards", [folder], shards=3, by="folder")  # loose files: dealt one by one
    engine = in_process_engine(tmp_path / "shards")
    assert engine.info()["images"] == 12
    for q, want in zip(vecs[:4], expected):
        hits = engine.query(vector=q, k=5, offset=1).hits
        assert [(h.path, round(h.score, 5)) for h in hits] == [(p, round(s, 5)) for p, s in want]
        assert engine.rows([hits[0].id])[hits[0].id].path == hits[0].path
        assert engine.similar(engine.row(hits[0].id), k=3)[0].id != hits[0].id

    class NoLiveReplica:
        """A shard whose every call finds no replica (what server.ray_serve raises after its retries)."""

        def submit(self, method, *args, **kwargs):
            return self

        def result(self):
            raise ShardUnavailable("no replica answered")

    engine.shards[1] = NoLiveReplica()
    with pytest.raises(ShardUnavailable, match="shard-001 has no live replica"):
        engine.query(vector=vecs[0], k=5)
    assert engine.health()["shards_answering"] == 2
    engine.close()


def test_serve_without_ray_opens_every_shard_in_its_process(photo_folder, tmp_path):
    from fastapi.testclient import TestClient

    from imagespace.server import create_app

    folder = photo_folder(8)
    index_sharded(tmp_path / "shards", [folder], shards=2)
    app = create_app(tmp_path / "shards", engine=in_process_engine(tmp_path / "shards"))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        r = http.post("/api/search/image", params={"k": 3}, files={"file": ("q.jpg", (folder / "img_004.jpg").read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["path"].endswith("img_004.jpg") and top["score"] > 0.99
        assert http.get(f"/api/images/{top['id']}").json()["path"] == top["path"]
        assert http.get("/api/health").json()["shards"]["shards_answering"] == 2
        assert http.get("/api/clusters").status_code == 501


def test_one_process_serve_never_loads_ray():
    """`serve` without --engine ray keeps its start-up time: Ray is imported on the Ray path only."""
    import subprocess
    import sys

    code = ("import sys, imagespace.cli.serve, imagespace.server.sharded, imagespace.server.ray_serve;"
            "from imagespace.server import create_app; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_model_comes_from_a_shard_that_holds_images(photo_folder, tmp_path, model):
    from imagespace.server.sharded import EmbedService

    folder = photo_folder(1)
    index_sharded(tmp_path / "shards", [folder], shards=2)  # one of the two shards stays empty
    sizes = {}
    for f in shard_folders(tmp_path / "shards"):
        with Collection(f, create=False) as c:
            sizes[f] = len(c)
    assert sorted(sizes.values()) == [0, 1]
    empty_first = sorted(sizes, key=sizes.get)
    embedder = EmbedService(empty_first)
    assert embedder.model.model_id == model.model_id
    embedder.close()
