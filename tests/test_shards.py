"""Shards built separately and searched together answer like one unsharded collection."""

from __future__ import annotations

import numpy as np
import pytest

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.search import Searcher
from imagespace.index.shards import SHARD_STRIDE, ShardedIndex
from imagespace.sharding import build_shard, hash_shard, plan_shards


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
        sync(whole, [str(folder)], model, model_spec="efficientnet-lite0")
        ids, vecs = whole.vectors()
        searcher = Searcher(whole, model)
        queries = vecs[:5]
        expected = [[(h.path, h.score) for h in searcher.query(vector=q, k=6).hits] for q in queries]
    plan = plan_shards([folder], 3, by="hash")
    assert sum(1 for p in plan.values() if p) >= 2
    for name, shard_paths in plan.items():  # each shard on its own, as separate workers would
        if shard_paths:
            report = build_shard(tmp_path / "shards" / name, shard_paths, "efficientnet-lite0")
            assert report.added == len(shard_paths)
    with ShardedIndex(tmp_path / "shards") as sharded:
        assert len(sharded) == len(ids) == 14
        keys, sims = sharded.search(queries, 6)
        assert (keys >= 0).all() and (keys // SHARD_STRIDE).max() <= 2
        for q, want in zip(queries, expected):
            got = [(h.row.path, h.score) for h in sharded.hits(q, 6)]
            assert [p for p, _ in got] == [p for p, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
