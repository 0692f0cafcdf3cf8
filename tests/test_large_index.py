"""The compressed on-disk index: same top results as exact search, after re-ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.index import open_index
from imagespace.index.ivfpq import (
    LARGE_FILE, LARGE_META, CompressedIndex, Float16Store, LargeIndex, LargeSettings, build_compressed,
)

DIM = 64


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((n // 20 + 1, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(s, top, 1)


SETTINGS = LargeSettings(pca_dim=32, nlist=16, pq_m=8, nprobe=16, rerank=200, train_size=5000)


def test_compressed_index_matches_exact_search_after_reranking(tmp_path):
    x, q = clustered(5000, 1), clustered(30, 2)
    store_path = tmp_path / "v.f16"
    x.astype(np.float16).tofile(store_path)
    store = Float16Store(store_path, DIM)
    built = build_compressed(x, [(np.arange(0, 2500), x[:2500]), (np.arange(2500, 5000), x[2500:])], len(x), store, SETTINGS)
    built.save(tmp_path / "i.faiss")
    index = CompressedIndex.load(tmp_path / "i.faiss", store, SETTINGS, mmap=True)
    assert len(index) == 5000
    ids, sims = index.search(q, 10)
    want_ids, want_sims = exact_top(x, q, 10)
    assert (ids == want_ids).mean() >= 0.99
    # scores are exact cosines of the stored (float16) vectors, not compressed distances
    np.testing.assert_allclose(sims, want_sims, atol=2e-3)
    # the compressed codes alone are worse than with re-ranking: re-ranking does the work
    raw = index.candidates(q, 10)
    assert (raw == want_ids).mean() < (ids == want_ids).mean() or (raw == want_ids).all()
    store.close()


def _fake_collection(root, vectors: np.ndarray) -> Collection:
    from imagespace.embed import Embedded, FileInfo

    coll = Collection(root)
    coll.bind_model("test-model", "test", vectors.shape[1])
    items = [Embedded(FileInfo(f"/x/{i}.jpg", 1, 1, f"d{i}"), v, [], 1, 1, "JPEG") for i, v in enumerate(vectors)]
    for start in range(0, len(items), 1000):
        coll.write_embedded(items[start:start + 1000], [])
    return coll


def test_collection_large_index_follows_new_and_removed_rows(tmp_path):
    from imagespace.embed import Embedded, FileInfo

    x = clustered(3000, 3)
    coll = _fake_collection(tmp_path / "db", x)
    index = LargeIndex.build(coll, SETTINGS)
    assert (coll.root / LARGE_FILE).exists() and len(index) == 3000
    q = clustered(10, 4)
    ids_all, x_all = coll.vectors()
    top, _ = exact_top(x_all, q, 5)
    got, sims = index.search(q, 5)
    assert (got == ids_all[top]).mean() >= 0.98

    # a new row that equals the query must come first; a removed row must never come back
    coll.write_embedded([Embedded(FileInfo("/x/new.jpg", 1, 1, "new"), q[0], [], 1, 1, "JPEG")], [])
    coll.write_file_changes(removed=[int(got[1, 0])])
    reopened = open_index(coll, "auto")  # the compressed index exists: auto keeps using it
    assert isinstance(reopened, LargeIndex)
    got2, sims2 = reopened.search(q, 5)
    assert coll.row_by_path("/x/new.jpg").id == got2[0, 0] and sims2[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert int(got[1, 0]) not in got2[1].tolist()
    coll.close()


def test_open_index_by_name(tmp_path):
    from imagespace.index.hnsw import VectorIndex

    coll = _fake_collection(tmp_path / "db", clustered(500, 5))
    assert isinstance(open_index(coll, "hnsw"), VectorIndex)
    assert isinstance(open_index(coll, "auto"), VectorIndex)  # small: the in-memory graph
    with pytest.raises(ValueError):
        open_index(coll, "nope")
    coll.close()


def test_indexing_and_analyses_use_the_compressed_index_and_build_no_graph(tmp_path, photo_folder, monkeypatch):
    """A collection searched through the compressed index: an indexing run brings that index
    up to date (the first query must not pay for it) and never builds the in-memory graph,
    which at a few million rows would cost an hour for nothing."""
    from conftest import make_photo

    from imagespace.index.hnsw import INDEX_FILE
    from imagespace.models import DEFAULT_MODEL, create_model
    from imagespace.search import Searcher

    photos = photo_folder(12)
    model = create_model(DEFAULT_MODEL)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL)
        LargeIndex.build(coll)
        (coll.root / INDEX_FILE).unlink()
        make_photo(1000, (96, 72)).save(photos / "new.jpg", quality=90)
        make_photo(1001, (96, 72)).save(photos / "new2.jpg", quality=90)
        report = sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL)
        assert report.added == 2
        assert not (coll.root / INDEX_FILE).exists()
        meta = json.loads((coll.root / LARGE_META).read_text())
        assert meta["seq"] == coll.seq and meta["count"] == 14  # rebuilt: 2 new rows of 12 pass MAX_DELTA_SHARE
        searcher = Searcher(coll, model)
        assert isinstance(searcher.index, LargeIndex)  # searches go through the same index
        hits = searcher.query(vector=coll.vectors([coll.row_by_path(photos / "new.jpg").id])[1][0], k=1).hits
        assert hits[0].path == str(photos / "new.jpg") and hits[0].score == pytest.approx(1.0, abs=1e-3)
        # the analyses search the same index: none of them builds the graph either
        from imagespace.analysis.duplicates import find_duplicates
        from imagespace.analysis.recommend import recommend
        from imagespace.index.hnsw import VectorIndex

        def no_graph(*args, **kwargs):
            raise AssertionError("the in-memory graph was built for a collection with a compressed index")

        monkeypatch.setattr(VectorIndex, "build", no_graph)
        find_duplicates(coll)
        assert recommend(coll, like=[hits[0].id], k=3)


def test_server_answers_from_a_collection_with_a_compressed_index(tmp_path):
    """The server keeps the index it opens (saving one it had to catch up): with the
    compressed index that step failed (AttributeError), so every search did."""
    from imagespace.server.engine import Engine

    x = clustered(3000, 3)
    coll = _fake_collection(tmp_path / "db", x)
    LargeIndex.build(coll, SETTINGS)
    coll.close()
    engine = Engine(tmp_path / "db")
    try:
        hits = engine.similar(engine.row(5), k=3)
        ids_all = np.arange(1, 3001)
        sims = x @ x[4]
        sims[4] = -np.inf  # the query itself is not an answer
        want = ids_all[np.argsort(-sims)[:3]]
        assert [h.id for h in hits] == want.tolist()
    finally:
        engine.close()
