"""The index checks itself: it measures recall@10 on the collection's own vectors when built,
picks the cheapest search settings reaching the target, saves both, and says so in
``info``, ``check`` and ``search --json``. Vectors are made in code; no timings asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import imagespace.index.hnsw as index_mod
from imagespace.collection import Collection
from imagespace.embed import Embedded, FileInfo
from imagespace.index import describe_index
from imagespace.index.hnsw import INDEX_META, VectorIndex
from imagespace.index.ivfpq import LARGE_META, LargeIndex, LargeSettings
from imagespace.index.tuning import EF_STEPS, RESCORE_STEPS, TARGET_RECALL, SampleTruth, recall_at_k
from imagespace.integrity import check_collection


def _hard(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Tight clusters of 50 over a decaying spectrum: projected to a few dimensions, the
    neighbours inside a cluster are hard to tell apart, so few candidates miss many."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(np.arange(1, dim + 1))
    centres = rng.normal(size=(max(2, n // 50), dim)) * scale
    x = centres[rng.integers(0, len(centres), n)] + 0.25 * rng.normal(size=(n, dim)) + 0.5 * scale
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _collection(root, vectors: np.ndarray, start: int = 0) -> Collection:
    coll = Collection(root)
    if coll.model_id is None:
        coll.bind_model("test-model", "test-model", vectors.shape[1])
    items = [Embedded(FileInfo(f"/photos/{start + i}.jpg", 1, 1, f"{start + i:032x}"), v, [("thing", 0.5)], 8, 8, "JPEG")
             for i, v in enumerate(vectors)]
    for i in range(0, len(items), 500):
        coll.write_embedded(items[i : i + 500], [])
    return coll


@pytest.fixture
def graph_sizes(monkeypatch):
    """A few thousand rows count as a large collection: reduced 16-d int8 graph, re-scored."""
    monkeypatch.setattr(index_mod, "EXACT_LIMIT", 100)
    monkeypatch.setattr(index_mod, "REDUCE_ABOVE", 200)
    monkeypatch.setattr(index_mod, "REDUCED_DIM", 16)


def _like_recall(index, coll: Collection, ids: np.ndarray) -> float:
    """recall@10 of ``search --like``-style queries (own row dropped) against exact search."""
    all_ids, vecs = coll.vectors()
    truth = SampleTruth(ids, vecs[np.searchsorted(all_ids, ids)])
    truth.update(all_ids, vecs)
    found, _ = index.search(truth.queries, 11)
    found = np.array([[i for i in row if i != q][:10] for row, q in zip(found, ids)])
    return recall_at_k(found, truth.truth)


def test_self_check_picks_larger_settings_on_hard_vectors_and_reaches_the_target(tmp_path, graph_sizes):
    coll = _collection(tmp_path / "db", _hard(2000))
    index = VectorIndex.open(coll)
    t = index.tuning
    assert t is not None and not t.exact and t.queries == 200 and t.count == 2000
    assert t.recall >= TARGET_RECALL
    # the cheapest setting was tried first and missed: the self-check had to go up
    first = t.sweep[0]
    assert (first["expansion_search"], first["rerank"]) == (EF_STEPS[0], RESCORE_STEPS[0])
    assert first["recall"] < TARGET_RECALL
    assert (index.settings.expansion_search, index.settings.rerank) == (t.knobs["expansion_search"], t.knobs["rerank"])
    assert index.settings.rerank > RESCORE_STEPS[0]
    assert index.index.expansion_search == index.settings.expansion_search  # searched with, not only recorded
    # the recall holds on other stored vectors than the sample, through the real search path
    others = np.arange(1, 2001)[np.random.default_rng(5).permutation(2000)[:150]]
    assert _like_recall(index, coll, others) >= TARGET_RECALL - 0.03


def test_easy_vectors_keep_the_cheapest_settings(tmp_path, graph_sizes, monkeypatch):
    monkeypatch.setattr(index_mod, "REDUCED_DIM", 64)  # nothing lost in the projection
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 64)).astype(np.float32)
    coll = _collection(tmp_path / "db", x / np.linalg.norm(x, axis=1, keepdims=True))
    index = VectorIndex.open(coll)
    assert index.tuning.recall >= TARGET_RECALL
    assert index.settings.rerank <= 32 and index.settings.expansion_search <= 48


def test_reopening_keeps_the_measured_settings_and_growth_measures_again(tmp_path, graph_sizes, capsys):
    coll = _collection(tmp_path / "db", _hard(1500))
    index = VectorIndex.open(coll)
    index.save_if_changed()
    chosen = dict(index.tuning.knobs)
    meta = json.loads((coll.root / INDEX_META).read_text())
    assert meta["tuning"]["knobs"] == chosen and meta["tuning"]["recall"] >= TARGET_RECALL
    again = VectorIndex.open(coll)
    assert "rebuilding" not in capsys.readouterr().err
    assert {"expansion_search": again.settings.expansion_search, "rerank": again.settings.rerank} == chosen
    assert again.index.expansion_search == chosen["expansion_search"]
    assert again.tuning.recall == index.tuning.recall
    assert again.describe()["recall_at_10"] == round(index.tuning.recall, 4)
    # more than twice the rows since the measurement: the next save measures again
    _collection(tmp_path / "db", _hard(1800, seed=3), start=1500)
    grown = VectorIndex.open(coll)
    assert len(grown) == 3300 and grown.tuning.count == 1500
    grown.save_if_changed()
    assert grown.tuning.count == 3300
    assert json.loads((coll.root / INDEX_META).read_text())["tuning"]["count"] == 3300


def test_given_settings_are_kept_as_given(tmp_path, graph_sizes):
    coll = _collection(tmp_path / "db", _hard(600))
    given = index_mod.IndexSettings(metric="ip", dtype="i8", reduce_dim=16, expansion_search=16, rerank=16)
    index = VectorIndex.open(coll, settings=given)
    index.save_if_changed()
    assert index.tuning is None and (index.settings.expansion_search, index.settings.rerank) == (16, 16)


def test_small_collections_are_exact_with_recall_one(tmp_path):
    coll = _collection(tmp_path / "db", _hard(300))
    index = VectorIndex.open(coll)
    index.save_if_changed()
    assert index.tuning.exact and index.tuning.recall == 1.0 and index.tuning.sweep == []
    desc = describe_index(coll)
    assert desc["kind"] == "exact" and desc["recall_at_10"] == 1.0


@pytest.fixture
def one_faiss_thread():
    """FAISS's OpenMP threads spin against each other on a busy 2-core machine (30 s against 3)."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_compressed_index_tunes_nprobe_and_rerank_and_keeps_them(tmp_path, one_faiss_thread):
    coll = _collection(tmp_path / "db", _hard(2500, seed=2))
    large = LargeIndex.build(coll)
    t = large.tuning
    assert t.recall >= TARGET_RECALL and t.sweep[0]["nprobe"] == 1 and t.sweep[0]["recall"] < TARGET_RECALL
    assert (large.core.settings.nprobe, large.core.settings.rerank) == (t.knobs["nprobe"], t.knobs["rerank"])
    assert large.core._ivf.nprobe == t.knobs["nprobe"]
    again = LargeIndex.open(coll)
    assert (again.core.settings.nprobe, again.core.settings.rerank) == (t.knobs["nprobe"], t.knobs["rerank"])
    assert again.core._ivf.nprobe == t.knobs["nprobe"]
    desc = describe_index(coll)  # the compressed index is the one searches use now
    assert desc["kind"] == "ivfpq" and desc["settings"]["nprobe"] == t.knobs["nprobe"]
    assert desc["recall_at_10"] == round(t.recall, 4)
    # given settings are searched as given
    fixed = LargeIndex.open(coll, LargeSettings(nprobe=2, rerank=30))
    assert fixed.core._ivf.nprobe == 2 and fixed.core.settings.rerank == 30


def test_check_reports_the_recall_and_warns_below_target(tmp_path, graph_sizes):
    coll = _collection(tmp_path / "db", _hard(1000))
    VectorIndex.open(coll).save_if_changed()
    report = check_collection(coll).to_dict()
    assert report["ok"] and report["index"]["kind"] == "hnsw"
    assert report["index"]["recall_at_10"] >= TARGET_RECALL
    assert not [n for n in report["notices"] if n["kind"].startswith("recall")]
    meta_path = coll.root / INDEX_META
    meta = json.loads(meta_path.read_text())
    meta["tuning"]["recall"] = 0.8  # as if even the largest settings fell short
    meta_path.write_text(json.dumps(meta))
    report = check_collection(coll).to_dict()
    assert report["ok"]  # a warning, not an error
    assert [n["kind"] for n in report["notices"]] == ["recall-below-target"]
    meta["tuning"] = None  # an index saved before the self-check
    meta_path.write_text(json.dumps(meta))
    kinds = [n["kind"] for n in check_collection(coll).to_dict()["notices"]]
    assert kinds == ["recall-unmeasured"]


def _cli(*args) -> dict:
    env = dict(os.environ, IMAGESPACE_THREADS="2")
    env.pop("IMAGESPACE_DB", None)
    out = subprocess.run([sys.executable, "-m", "imagespace", *map(str, args), "--json"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_info_check_and_search_json_say_which_index_answers(tmp_path):
    db = tmp_path / "db"
    _collection(db, _hard(300)).close()
    info = _cli("info", "--db", db)
    assert info["images"] == 300 and info["index"]["kind"] in ("exact", None)
    found = _cli("search", "--like", "/photos/7.jpg", "--db", db)
    assert len(found["results"]) == 10 and {"path", "score", "tags"} <= set(found["results"][0])
    assert found["index"]["kind"] == "exact" and found["index"]["recall_at_10"] == 1.0
    with Collection(db) as coll:
        VectorIndex.open(coll).save_if_changed()
    info = _cli("info", "--db", db)
    assert info["index"]["kind"] == "exact" and info["index"]["recall_at_10"] == 1.0
    check = _cli("check", "--db", db)
    assert check["ok"] and check["index"]["kind"] == "exact" and check["index"]["recall_at_10"] == 1.0
