"""The fast paths keep the answers: the reduced (projected, re-ranked) index and int8 model.

No timings here: speed is measured by ``make bench``, never asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.embed import Embedded, FileInfo
import dataclasses

import imagespace.index.hnsw as index_mod
from imagespace.index.hnsw import REDUCE_ABOVE, REDUCED_DIM, IndexSettings, VectorIndex, fit_projection, settings_for


def _clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Vectors with a decaying spectrum and clusters, like image embeddings, L2-normalised."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(np.arange(1, dim + 1))
    centres = rng.normal(size=(max(2, n // 20), dim)) * scale
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.normal(size=(n, dim)) * scale + 0.8 / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _collection(root, vectors: np.ndarray, start: int = 0) -> Collection:
    coll = Collection(root)
    if coll.model_id is None:
        coll.bind_model("test-model", "test-model", vectors.shape[1])
    items = [
        Embedded(FileInfo(f"/photos/{start + i}.jpg", 1, 1, f"{start + i:032x}"), v, [("thing", 0.5)], 8, 8, "JPEG")
        for i, v in enumerate(vectors)
    ]
    for i in range(0, len(items), 100):
        coll.write_embedded(items[i : i + 100], [])
    return coll


def _exact(coll: Collection, queries: np.ndarray, k: int) -> np.ndarray:
    ids, vecs = coll.vectors()
    return ids[np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]]


# What large collections get (int8 graph over projections), at a size that fits a test.
REDUCED = dataclasses.replace(settings_for(REDUCE_ABOVE + 1), reduce_dim=24, rerank=40, expansion_search=128)


def test_reduced_index_returns_exact_top_results_and_cosines(tmp_path):
    vecs = _clustered(600)
    coll = _collection(tmp_path / "db", vecs)
    index = VectorIndex.open(coll, settings=REDUCED)
    assert index.projection is not None and index.index.ndim == 24
    queries = _clustered(20, seed=1)
    ids, sims = index.search(queries, 5)
    want = _exact(coll, queries, 5)
    assert (ids[:, 0] == want[:, 0]).mean() >= 0.95
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, want)]) >= 0.9
    # scores are exact cosines with the stored vectors, not the projection's
    _, stored = coll.vectors(ids[0].tolist())
    order = np.argsort(ids[0])
    np.testing.assert_allclose(np.sort(sims[0])[::-1], np.sort(stored @ queries[0])[::-1], atol=1e-5)
    assert sims[0][order].shape == (5,)
    np.testing.assert_allclose(index.vectors_of(ids[0][:2]), vecs[ids[0][:2] - 1], atol=1e-6)
    # Many queries at once (each against its own candidates) answer as one at a time.
    for i in (0, 7, 19):
        one_ids, one_sims = index.search(queries[i : i + 1], 5)
        assert one_ids[0].tolist() == ids[i].tolist()
        np.testing.assert_allclose(one_sims[0], sims[i], atol=1e-5)


def test_reduced_index_survives_saving_reopening_and_new_rows(tmp_path):
    coll = _collection(tmp_path / "db", _clustered(400))
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    more = _clustered(50, seed=7)
    _collection(tmp_path / "db", more, start=400)
    again = VectorIndex.open(coll, settings=REDUCED)
    assert len(again) == 450 and again.projection is not None
    ids, sims = again.search(more[:3], 1)
    assert ids[:, 0].tolist() == [401, 402, 403]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_reopened_index_searches_with_its_settings_ef(tmp_path, capsys):
    """usearch does not store ef in its file: a reopened graph searched with usearch's
    default (64) instead of the settings'. The search-time knobs also follow the code (or
    the caller) without a rebuild."""
    coll = _collection(tmp_path / "db", _clustered(400))
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    again = VectorIndex.open(coll, settings=REDUCED)
    assert again.index.expansion_search == REDUCED.expansion_search == 128
    faster = dataclasses.replace(REDUCED, expansion_search=32, rerank=20)
    tuned = VectorIndex.open(coll, settings=faster)
    assert "rebuilding" not in capsys.readouterr().err  # same graph, other search knobs
    assert tuned.index.expansion_search == 32 and tuned.settings.rerank == 20
    assert not tuned.dirty


def test_an_index_saved_with_older_settings_is_kept_and_searched(tmp_path, monkeypatch, capsys):
    """Reduced indexes saved before the int8 graph (float16 projections) stay valid: opening
    one keeps its structure from its own description, with this code's search knobs."""
    coll = _collection(tmp_path / "db", _clustered(400))
    older = IndexSettings(metric="ip", dtype="f16", reduce_dim=32, rerank=40, expansion_search=96)
    VectorIndex.open(coll, settings=older).save_if_changed()
    monkeypatch.setattr(index_mod, "EXACT_LIMIT", 100)  # 400 rows now count as a large collection
    again = VectorIndex.open(coll)
    assert "rebuilding" not in capsys.readouterr().err
    assert again.settings.dtype == "f16" and again.index.ndim == 32
    assert again.settings.expansion_search == settings_for(REDUCE_ABOVE + 1).expansion_search
    queries = _clustered(10, seed=5)
    ids, _ = again.search(queries, 5)
    assert (ids[:, 0] == _exact(coll, queries, 1)[:, 0]).mean() >= 0.9


def test_small_collections_stay_exact_and_full(tmp_path):
    coll = _collection(tmp_path / "db", _clustered(300))
    index = VectorIndex.open(coll)
    assert index.projection is None and index.settings.reduce_dim == 0
    queries = _clustered(10, seed=3)
    ids, _ = index.search(queries, 10)
    assert (ids == _exact(coll, queries, 10)).all()


def test_large_collections_choose_a_compact_representation():
    assert settings_for(100).reduce_dim == 0
    big = settings_for(1_000_000)
    assert big.reduce_dim == REDUCED_DIM and big.dtype == "i8" and big.rerank >= 10
    # under 1 KB a vector: projected int8 values plus about 2*connectivity graph links
    assert big.reduce_dim * 1 + 2 * big.connectivity * 4 + 8 < 1024


def test_projection_keeps_inner_products_of_low_rank_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 32))
    p = fit_projection(x, 8)
    y = x @ p
    np.testing.assert_allclose(y @ y.T, x @ x.T, rtol=1e-3, atol=1e-3)


# -- int8 model -----------------------------------------------------------------------------


def test_calibration_reads_a_folder_and_skips_what_it_cannot_read(photo_folder, tmp_path):
    from imagespace.models.quantize import calibration_pixels

    folder = photo_folder(3)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    px = calibration_pixels([str(folder)], size=32)
    assert px.shape == (6, 32, 32, 3) and px.dtype == np.uint8  # 3 photos and their mirrors
    with pytest.raises(FileNotFoundError):
        calibration_pixels([str(tmp_path / "nothing-here")])


# -- cold start -----------------------------------------------------------------------------


def test_a_stored_image_query_imports_nothing_heavy(photo_folder, tmp_path):
    import subprocess
    import sys

    from imagespace.collection import Collection
    from imagespace.models import create_model

    folder = photo_folder(4)
    with Collection(tmp_path / "db") as coll:
        model = create_model()
        sync(coll, [str(folder)], model, model_spec=model.name)
    code = (
        "import sys\nfrom imagespace.collection import Collection\nfrom imagespace.search import Searcher\n"
        f"hits = Searcher(Collection({str(tmp_path / 'db')!r})).query(like={str(folder / 'img_000.jpg')!r}, k=2).hits\n"
        "assert len(hits) == 2\n"
        "print(','.join(m for m in ('torch', 'sklearn', 'scipy', 'cv2', 'pandas', 'transformers', 'ray', 'onnxruntime')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"a --like search imported {out}"


# -- re-scoring from the snapshot file --------------------------------------------------------


def test_reduced_index_rescores_from_its_snapshot_with_the_rows_exact_cosines(tmp_path):
    from imagespace.index.rescore import RESCORE_FILE

    vecs = _clustered(500)
    coll = _collection(tmp_path / "db", vecs)
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    assert (tmp_path / "db" / RESCORE_FILE).exists()
    index = VectorIndex.open(coll, settings=REDUCED)
    assert index.rescore is not None and not index.fresh
    queries = _clustered(10, seed=4)
    ids, sims = index.search(queries, 5)
    _, stored = coll.vectors(ids[0].tolist())
    np.testing.assert_allclose(np.sort(sims[0]), np.sort(stored @ queries[0]), atol=1e-6)
    # the snapshot gives the same answers as re-scoring from SQLite
    index.rescore = None
    ids_db, sims_db = index.search(queries, 5)
    assert (ids == ids_db).all()
    np.testing.assert_allclose(sims, sims_db, atol=1e-6)


def test_rows_written_after_the_snapshot_are_scored_from_the_database(tmp_path):
    vecs = _clustered(500)
    coll = _collection(tmp_path / "db", vecs)
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    # photo 7 is edited (same path, new vector) and two photos are added, after the snapshot
    new7 = _clustered(1, seed=11)
    _collection(tmp_path / "db", new7, start=7)
    _collection(tmp_path / "db", _clustered(2, seed=12), start=500)
    index = VectorIndex.open(coll, settings=REDUCED)
    written = {coll.row_by_path(f"/photos/{i}.jpg").id for i in (7, 500, 501)}
    assert index.rescore is not None and index.fresh == written
    ids, sims = index.search(new7, 1)
    assert ids[0, 0] == coll.row_by_path("/photos/7.jpg").id and sims[0, 0] == pytest.approx(1.0, abs=1e-5)  # the snapshot holds the old vector


def test_a_snapshot_that_does_not_match_is_not_used_and_is_rewritten(tmp_path):
    from imagespace.index.rescore import HEADER_BYTES, RESCORE_FILE

    coll = _collection(tmp_path / "db", _clustered(300))
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    path = tmp_path / "db" / RESCORE_FILE
    with open(path, "r+b") as f:  # cut short: a snapshot from some other moment
        f.truncate(HEADER_BYTES + 100 * 24)
    index = VectorIndex.open(coll, settings=REDUCED)
    assert index.rescore is None
    queries = _clustered(5, seed=2)
    ids, sims = index.search(queries, 3)
    _, stored = coll.vectors(ids[0].tolist())
    np.testing.assert_allclose(np.sort(sims[0]), np.sort(stored @ queries[0]), atol=1e-6)
    index.save_if_changed()
    assert index.rescore is not None and VectorIndex.open(coll, settings=REDUCED).rescore is not None


def test_a_new_snapshot_is_written_when_a_tenth_of_the_rows_are_newer(tmp_path):
    coll = _collection(tmp_path / "db", _clustered(300))
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    _collection(tmp_path / "db", _clustered(20, seed=3), start=300)
    index = VectorIndex.open(coll, settings=REDUCED)
    assert len(index.fresh) == 20
    index.save_if_changed()
    assert len(index.fresh) == 20  # 20 of 320: under a tenth, the old snapshot stays
    _collection(tmp_path / "db", _clustered(30, seed=4), start=320)
    index = VectorIndex.open(coll, settings=REDUCED)
    index.save_if_changed()
    assert index.fresh == set() and index.rescore.seq == coll.seq


def test_snapshot_rows_sit_at_their_ids_across_gaps(tmp_path):
    from imagespace.index.rescore import RescoreStore, write_snapshot

    vecs = _clustered(60)
    coll = _collection(tmp_path / "db", vecs)
    gone = [coll.row_by_path(f"/photos/{i}.jpg").id for i in (0, 5, 6, 7, 30)]
    coll.write_file_changes(removed=gone)
    stamp = write_snapshot(coll, tmp_path / "snap")
    (tmp_path / "snap").rename(tmp_path / "db" / "vectors.rescore.f32")
    store = RescoreStore.open(tmp_path / "db", stamp)
    ids, want = coll.vectors()
    assert len(ids) == 55
    np.testing.assert_array_equal(store.read(ids.tolist()), want)
    assert RescoreStore.open(tmp_path / "db", {**stamp, "seq": stamp["seq"] - 1}) is None  # another moment


def test_check_finds_a_damaged_snapshot_row_and_repair_fixes_it(tmp_path):
    from imagespace.integrity import check_collection
    from imagespace.index.rescore import HEADER_BYTES, RESCORE_FILE

    coll = _collection(tmp_path / "db", _clustered(300))
    VectorIndex.open(coll, settings=REDUCED).save_if_changed()
    assert check_collection(coll).ok
    row_id = coll.row_by_path("/photos/42.jpg").id
    with open(tmp_path / "db" / RESCORE_FILE, "r+b") as f:  # one flipped byte inside row 42's vector
        f.seek(HEADER_BYTES + row_id * 64 * 4 + 17)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    report = check_collection(coll)
    found = [e for e in report.errors if e.kind == "index-snapshot"]
    assert found and found[0].examples == [row_id]
    fixed = check_collection(coll, repair=True)
    assert fixed.ok, fixed.errors
