"""The collection: incremental indexing (add, change, touch, remove, move), odd files, a
SIGKILL mid-run, the model binding and the derived ANN index file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo, run_cli
from PIL import Image

from imagespace import indexing
from imagespace.collection import DB_FILE, Collection, CollectionError
from imagespace.index.hnsw import INDEX_FILE, INDEX_META, VectorIndex
from imagespace.models import DEFAULT_MODEL, create_model
from imagespace.models.model_dir import write_model_card
from imagespace.search import Searcher

ROOT = Path(__file__).resolve().parents[1]


def sync(coll: Collection, paths, model):
    return indexing.sync(coll, [str(p) for p in paths], model, model_spec=DEFAULT_MODEL, batch_size=8, workers=2)


def db_rows(db: Path) -> list[tuple]:
    with closing(sqlite3.connect(db / DB_FILE)) as conn:
        return conn.execute("SELECT id, path, digest, seq, indexed_at, embedding FROM images ORDER BY id").fetchall()


def exact_top(coll: Collection, query: np.ndarray, k: int) -> list[int]:
    ids, vecs = coll.vectors()
    order = np.argsort(-(vecs @ query), kind="stable")[:k]
    return [int(i) for i in ids[order]]


def index_ids(coll: Collection) -> set[int]:
    """Every key the saved ANN index answers with, asked for all of them."""
    index = VectorIndex.open(coll)
    q = np.ones(coll.dim, np.float32) / np.sqrt(coll.dim)
    ids, _ = index.search(q, len(index) + 5, exact=True)
    return {int(i) for i in ids[0] if i >= 0}


def check_consistent(coll: Collection) -> None:
    """Rows, vectors and the ANN index agree."""
    ids, vecs = coll.vectors()
    assert len(ids) == len(coll)
    assert vecs.shape == (len(coll), coll.dim)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert index_ids(coll) == set(ids.tolist())


# -- the incremental cases, through the library --------------------------------------------


def test_add_then_unchanged(tmp_path, photo_folder, model):
    folder = photo_folder(6)
    with Collection(tmp_path / "db") as coll:
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.unchanged, r.moved, r.failed) == (6, 0, 0, 0, 0, [])
        assert len(coll) == 6
        assert coll.model_id == model.model_id and coll.dim == model.dim
        for row in coll.all_rows():
            assert Path(row.path).parent == folder
            assert (row.width, row.height, row.format) == (96, 72, "JPEG")
            assert len(row.tags) >= 3 and all(isinstance(t, str) and 0 <= s <= 1 for t, s in row.tags)
        check_consistent(coll)
        seq = coll.seq
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.unchanged, r.embedded) == (0, 0, 0, 6, 0)
        assert coll.seq == seq  # nothing written at all


def test_content_change_updates_the_same_row(tmp_path, photo_folder, model):
    folder = photo_folder(5)
    target = folder / "img_002.jpg"
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        before = coll.row_by_path(target)
        _, old_vec = Searcher(coll, model).stored_vector(target)
        make_photo(99).save(target, quality=90)  # new content, same name
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.unchanged, r.embedded) == (0, 1, 0, 4, 1)
        after = coll.row_by_path(target)
        assert after.id == before.id and after.digest != before.digest
        _, new_vec = Searcher(coll, model).stored_vector(target)
        fresh = Searcher(coll, model).embed_image(target)
        assert float(new_vec @ fresh) > 0.9999
        assert float(new_vec @ old_vec) < 0.999
        # the saved index answers with the new vector
        hits = Searcher(coll, model).query(target, k=1, qe=False).hits  # plain cosine: the image itself scores 1
        assert hits[0].id == before.id and hits[0].score > 0.999
        check_consistent(coll)
        assert len(coll) == 5


def test_same_size_content_change_is_seen(tmp_path, model):
    """Same byte count, new bytes, new mtime: the digest tells them apart."""
    folder = tmp_path / "p"
    folder.mkdir()
    a = folder / "a.bmp"
    Image.fromarray(np.asarray(make_photo(1))).save(a)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        old = coll.row_by_path(a)
        Image.fromarray(np.asarray(make_photo(2))).save(a)  # BMP of the same size: same length
        assert a.stat().st_size == old.size
        os.utime(a, ns=(old.mtime_ns + 5_000_000_000, old.mtime_ns + 5_000_000_000))
        r = sync(coll, [folder], model)
        assert (r.updated, r.unchanged) == (1, 0)
        assert coll.row_by_path(a).digest != old.digest


def test_touch_is_not_re_embedded(tmp_path, photo_folder, model):
    folder = photo_folder(4)
    target = folder / "img_001.jpg"
    db = tmp_path / "db"
    with Collection(db) as coll:
        sync(coll, [folder], model)
        before = {r[1]: r for r in db_rows(db)}
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.unchanged, r.embedded) == (0, 0, 0, 4, 0)
        after = {r[1]: r for r in db_rows(db)}
        assert set(after) == set(before)
        for path, row in after.items():
            assert row[0] == before[path][0]  # id
            assert row[4] == before[path][4]  # indexed_at: not embedded again
            assert row[5] == before[path][5]  # same vector bytes
        assert coll.row_by_path(target).mtime_ns == st.st_mtime_ns + 10_000_000_000
        # the new mtime was stored: the next run does not even hash the file
        r = sync(coll, [folder], model)
        assert (r.unchanged, r.embedded) == (4, 0)


def test_rows_with_older_digests_are_still_matched(tmp_path, photo_folder, model):
    """Collections made before XXH3 hold blake2b-128 digests: a touched file and a moved file
    are recognised by them, so upgrading does not re-embed anything."""
    from imagespace.embed import DIGEST_PREFIX, content_digest, legacy_digest

    folder = photo_folder(3)
    db = tmp_path / "db"
    with Collection(db) as coll:
        sync(coll, [folder], model)
        assert all(r.digest.startswith(DIGEST_PREFIX) and r.digest == content_digest(Path(r.path).read_bytes())
                   for r in coll.all_rows())
    with closing(sqlite3.connect(db / DB_FILE)) as conn, conn:  # what an older version wrote
        for row_id, path in conn.execute("SELECT id, path FROM images").fetchall():
            conn.execute("UPDATE images SET digest=? WHERE id=?", (legacy_digest(Path(path).read_bytes()), row_id))
    touched, moved = folder / "img_000.jpg", folder / "img_001.jpg"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    os.rename(moved, folder / "renamed.jpg")
    with Collection(db) as coll:
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.moved, r.embedded) == (0, 0, 0, 1, 0)


def test_removed_file_leaves_rows_and_index(tmp_path, photo_folder, model):
    folder = photo_folder(5)
    gone = folder / "img_003.jpg"
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        gone_id = coll.row_by_path(gone).id
        query = Searcher(coll, model).embed_image(gone)
        gone.unlink()
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.unchanged) == (0, 0, 1, 4)
        assert len(coll) == 4 and coll.row_by_path(gone) is None
        assert gone_id not in index_ids(coll)
        hits = Searcher(coll, model).query(vector=query, k=10).hits
        assert len(hits) == 4 and gone_id not in {h.id for h in hits}
        check_consistent(coll)


def test_rename_and_move_keep_the_row(tmp_path, photo_folder, model):
    folder = photo_folder(5)
    db = tmp_path / "db"
    with Collection(db) as coll:
        sync(coll, [folder], model)
        ids = {r.path: r.id for r in coll.all_rows()}
        vec_before = {r[0]: r[5] for r in db_rows(db)}
        (folder / "sub").mkdir()
        os.rename(folder / "img_000.jpg", folder / "renamed.jpg")
        os.rename(folder / "img_001.jpg", folder / "sub" / "moved.jpg")
        r = sync(coll, [folder], model)
        assert (r.added, r.updated, r.removed, r.moved, r.embedded) == (0, 0, 0, 2, 0)
        assert len(coll) == 5
        assert coll.row_by_path(folder / "renamed.jpg").id == ids[str(folder / "img_000.jpg")]
        assert coll.row_by_path(folder / "sub" / "moved.jpg").id == ids[str(folder / "img_001.jpg")]
        assert coll.row_by_path(folder / "img_000.jpg") is None
        assert {r[0]: r[5] for r in db_rows(db)} == vec_before  # no vector was recomputed
        hits = Searcher(coll, model).query(like=folder / "sub" / "moved.jpg", k=10).hits
        assert str(folder / "renamed.jpg") in {h.path for h in hits}
        check_consistent(coll)
        # and once moved, nothing is left to do
        r = sync(coll, [folder], model)
        assert (r.unchanged, r.embedded, r.moved) == (5, 0, 0)


def test_move_between_two_indexed_roots(tmp_path, photo_folder, model):
    a = photo_folder(3, name="a")
    b = photo_folder(0, name="b")
    with Collection(tmp_path / "db") as coll:
        sync(coll, [a, b], model)
        old_id = coll.row_by_path(a / "img_002.jpg").id
        shutil.move(a / "img_002.jpg", b / "img_002.jpg")
        r = sync(coll, [a, b], model)
        assert (r.moved, r.added, r.removed, r.embedded) == (1, 0, 0, 0)
        assert coll.row_by_path(b / "img_002.jpg").id == old_id
        assert len(coll) == 3


def test_root_that_does_not_exist_is_reported_and_rows_kept(tmp_path, photo_folder, model):
    folder = photo_folder(4)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        missing = tmp_path / "unmounted-drive"
        r = sync(coll, [folder, missing], model)
        assert r.failed == [{"path": str(missing), "error": "no such file or folder"}]
        assert (r.unchanged, r.removed) == (4, 0)
        # the indexed folder itself disappears (an unmounted drive): its rows stay
        moved_away = tmp_path / "elsewhere"
        os.rename(folder, moved_away)
        r = sync(coll, [folder], model)
        assert [f["path"] for f in r.failed] == [str(folder)] and r.failed[0]["error"]
        assert (r.removed, len(coll)) == (0, 4)
        check_consistent(coll)


def test_single_file_root(tmp_path, photo_folder, model):
    folder = photo_folder(3)
    with Collection(tmp_path / "db") as coll:
        r = sync(coll, [folder / "img_001.jpg"], model)
        assert (r.added, len(coll)) == (1, 1)
        r = sync(coll, [folder], model)
        assert (r.added, r.unchanged) == (2, 1)


def test_the_same_folder_named_differently_is_not_indexed_twice(tmp_path, photo_folder, model, monkeypatch):
    folder = photo_folder(3)
    monkeypatch.chdir(folder.parent)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder.name], model)  # relative
        for name in (str(folder) + "/", f"{folder}/../{folder.name}", f"./{folder.name}/sub/.."):
            r = indexing.sync(coll, [name], model, model_spec=DEFAULT_MODEL)
            assert (r.added, r.removed, r.unchanged) == (0, 0, 3), name
        assert len(coll) == 3 and all(Path(r.path).is_absolute() for r in coll.all_rows())


def test_indexing_a_second_root_keeps_the_first(tmp_path, photo_folder, model):
    a = photo_folder(3, name="a")
    b = photo_folder(2, name="b")
    with Collection(tmp_path / "db") as coll:
        sync(coll, [a], model)
        r = sync(coll, [b], model)
        assert (r.added, r.removed) == (2, 0)
        assert len(coll) == 5
        check_consistent(coll)


def test_incremental_cases_through_the_cli(tmp_path, photo_folder):
    folder = photo_folder(5)
    db = tmp_path / "db"
    out = run_cli("index", folder, "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert (first["added"], first["unchanged"], first["failed"]) == (5, 0, [])
    with Collection(db) as coll:
        ids = {Path(r.path).name: r.id for r in coll.all_rows()}

    make_photo(50).save(folder / "img_001.jpg", quality=90)  # changed content
    st = (folder / "img_002.jpg").stat()
    os.utime(folder / "img_002.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))  # touched
    (folder / "img_003.jpg").unlink()  # removed
    (folder / "sub").mkdir()
    os.rename(folder / "img_004.jpg", folder / "sub" / "moved.jpg")  # moved
    make_photo(51).save(folder / "new.jpg", quality=90)  # added
    out = run_cli("index", folder, "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert (r["added"], r["updated"], r["removed"], r["unchanged"], r["failed"]) == (1, 1, 1, 2, [])
    assert r.get("moved", 1) == 1
    with Collection(db) as coll:
        assert len(coll) == 5
        assert coll.row_by_path(folder / "img_001.jpg").id == ids["img_001.jpg"]
        assert coll.row_by_path(folder / "sub" / "moved.jpg").id == ids["img_004.jpg"]
        assert coll.row_by_path(folder / "img_003.jpg") is None
        check_consistent(coll)
    out = run_cli("index", folder, "--db", db, "--json")
    r = json.loads(out.stdout)
    assert (r["added"], r["updated"], r["removed"], r["unchanged"]) == (0, 0, 0, 5)


# -- odd files in one folder -------------------------------------------------------------


def build_odd_corpus(folder: Path) -> tuple[list[Path], list[Path]]:
    """Good images and every kind of bad file, side by side. Returns (good, bad)."""
    import struct
    import zlib

    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(4):
        p = folder / f"good_{i}.jpg"
        make_photo(100 + i).save(p, quality=90)
        good.append(p)
    p = folder / "good_rgba.png"
    make_photo(200).convert("RGBA").save(p)
    good.append(p)

    bad = []

    def add(name: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        bad.append(path)

    add("empty.jpg", b"")
    jpeg = (folder / "good_0.jpg").read_bytes()
    add("truncated.jpg", jpeg[: len(jpeg) // 3])
    add("random.jpg", np.random.default_rng(5).bytes(4000))
    add("text.png", b"hello, this is a text file and not a picture\n" * 10)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)
    add("huge.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    d = folder / "x.jpg"
    d.mkdir()
    bad.append(d)
    link = folder / "dangling.jpg"
    link.symlink_to(folder / "no-such-target.jpg")
    bad.append(link)
    loop = folder / "loop.jpg"
    loop.symlink_to(loop)
    bad.append(loop)
    # A file nobody may read: chmod 000 stops every user but root, and tests may run as
    # root; so the file is listed as bad only where the test does not run as root.
    secret = folder / "secret.jpg"
    make_photo(300).save(secret)
    os.chmod(secret, 0)
    if os.geteuid() == 0:
        good.append(secret)
    else:
        bad.append(secret)
    (folder / "readme.txt").write_text("not an image extension: ignored, not a failure")
    (folder / ".hidden.jpg").write_bytes(b"hidden files are skipped")
    return good, bad


def test_odd_file_corpus_through_the_cli(tmp_path):
    folder = tmp_path / "odd"
    good, bad = build_odd_corpus(folder)
    db = tmp_path / "db"
    out = run_cli("index", folder, "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    failed = {f["path"]: f["error"] for f in report["failed"]}
    assert set(failed) == {str(p) for p in bad}
    assert all(isinstance(e, str) and len(e) > 5 for e in failed.values()), failed
    assert "empty" in failed[str(folder / "empty.jpg")]
    assert "directory" in failed[str(folder / "x.jpg")]
    assert "pixels" in failed[str(folder / "huge.png")]
    assert "not a recognised image format" in failed[str(folder / "text.png")]
    assert "symbolic link" in failed[str(folder / "dangling.jpg")]
    assert report["added"] == len(good)
    with Collection(db) as coll:
        assert {r.path for r in coll.all_rows()} == {str(p) for p in good}
        check_consistent(coll)
    # a second run still lists the bad files (they are tried again) and embeds nothing new
    out = run_cli("index", folder, "--db", db, "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["added"] == 0 and report["unchanged"] == len(good)
    assert {f["path"] for f in report["failed"]} == {str(p) for p in bad}


def test_failures_are_remembered_and_forgotten(tmp_path, model):
    folder = tmp_path / "odd"
    good, bad = build_odd_corpus(folder)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        recorded = {f["path"] for f in coll.failures()}
        decode_failures = {str(folder / n) for n in ("empty.jpg", "truncated.jpg", "random.jpg", "text.png", "huge.png")}
        assert decode_failures <= recorded
        # a bad file replaced by a good one is indexed and no longer listed as failed
        make_photo(400).save(folder / "truncated.jpg", quality=90)
        # a bad file that is deleted is no longer listed either
        (folder / "random.jpg").unlink()
        r = sync(coll, [folder], model)
        assert r.added == 1
        now = {f["path"] for f in coll.failures()}
        assert str(folder / "truncated.jpg") not in now
        assert str(folder / "random.jpg") not in now, "a deleted file is still listed as a failure"
        assert str(folder / "empty.jpg") in now


def test_unreadable_file_is_listed_with_a_reason(model):
    """chmod 000 stops every user but root. Tests may run as root: the run is then made
    as the unprivileged 'nobody' (effective uid only, restored afterwards)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="imagespace-unreadable-"))
    try:
        os.chmod(base, 0o777)
        folder = base / "photos"
        folder.mkdir()
        make_photo(1).save(folder / "ok.jpg")
        make_photo(2).save(folder / "secret.jpg")
        os.chmod(folder / "secret.jpg", 0)
        with Collection(base / "db") as coll:
            os.chmod(base / "db", 0o777)
            # everything the run needs is loaded before any privilege is dropped: nobody
            # may not read the Python installation under /root
            assert model.dim
            import imagespace.embed  # noqa: F401
            import usearch.index  # noqa: F401
            dropped = False
            if os.geteuid() == 0:
                try:
                    os.seteuid(65534)
                    dropped = True
                except OSError as e:
                    pytest.skip(f"running as root and cannot drop to an unprivileged user ({e})")
            try:
                r = sync(coll, [folder], model)
            finally:
                if dropped:
                    os.seteuid(0)
            assert r.added == 1
            assert r.failed == [{"path": str(folder / "secret.jpg"), "error": "permission denied"}]
            assert [f["path"] for f in coll.failures()] == [str(folder / "secret.jpg")]
    finally:
        os.chmod(base / "photos" / "secret.jpg", 0o644)
        shutil.rmtree(base)


# -- a run killed with SIGKILL ------------------------------------------------------------


def test_sigkill_mid_run_leaves_a_consistent_collection(tmp_path, model):
    folder = tmp_path / "many"
    folder.mkdir()
    n = 300
    for i in range(n):
        make_photo(1000 + i, size=(48, 40)).save(folder / f"p{i:04d}.jpg", quality=85)
    db = tmp_path / "db"
    env = dict(os.environ, IMAGESPACE_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagespace", "index", str(folder), "--db", str(db), "--json", "--batch-size", "8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    seen = 0
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (db / DB_FILE).exists():
                try:
                    with closing(sqlite3.connect(db / DB_FILE, timeout=1)) as conn:
                        seen = conn.execute("SELECT count(*) FROM images").fetchone()[0]
                except sqlite3.OperationalError:
                    seen = 0  # schema not there yet
                if seen >= 16:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    with closing(sqlite3.connect(db / DB_FILE)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        dim = int(conn.execute("SELECT value FROM meta WHERE key='dim'").fetchone()[0])
        rows = conn.execute("SELECT path, length(embedding), tags FROM images").fetchall()
    killed_at = len(rows)
    assert 16 <= killed_at < n, f"{killed_at} rows after the kill: the kill did not land mid-run"
    assert all(length == dim * 4 for _, length, _ in rows)
    assert all(json.loads(tags) for _, _, tags in rows)
    with Collection(db) as coll:  # readable and searchable as it is
        ids, vecs = coll.vectors()
        assert len(ids) == killed_at and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
        check_consistent(coll)

    out = run_cli("index", folder, "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["added"] == n - killed_at
    assert report["unchanged"] == killed_at
    assert report["failed"] == []
    with closing(sqlite3.connect(db / DB_FILE)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*), count(DISTINCT path), count(DISTINCT digest) FROM images").fetchone() == (n, n, n)
    with Collection(db) as coll:
        assert len(coll) == n
        check_consistent(coll)


# -- the model binding -------------------------------------------------------------------


def other_model_folder(folder: Path, model, model_id: str) -> Path:
    """A real model folder: a copy of the cached ONNX graph under another model id."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model.onnx_path, folder / "model.onnx")
    write_model_card(folder, name="other", model_id=model_id, input_size=model.input_size, imagenet_labels=True)
    return folder


def test_collection_refuses_queries_from_another_model(tmp_path, photo_folder, model):
    folder = photo_folder(4)
    other = create_model(str(other_model_folder(tmp_path / "other-model", model, "other-net/v1")))
    assert other.model_id != model.model_id
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        with pytest.raises(CollectionError, match="made with model"):
            Searcher(coll, other)
        with pytest.raises(CollectionError, match="other-net/v1"):
            coll.check_model(other.model_id)


def test_cli_search_refuses_when_the_model_changed(tmp_path, photo_folder, model):
    """A collection indexed with model folder A; A's model id then changes (retrained in
    place): searching must say the collection was made with another model."""
    folder = photo_folder(4)
    mdir = other_model_folder(tmp_path / "my-model", model, "my-net/v1")
    db = tmp_path / "db"
    out = run_cli("index", folder, "--db", db, "--model", mdir, "--json")
    assert out.returncode == 0, out.stderr
    with Collection(db) as coll:
        assert coll.model_id == "my-net/v1"
    out = run_cli("search", folder / "img_000.jpg", "--db", db, "--json", "-k", "2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["path"] == str(folder / "img_000.jpg")
    write_model_card(mdir, name="other", model_id="my-net/v2", input_size=model.input_size, imagenet_labels=True)
    out = run_cli("search", folder / "img_000.jpg", "--db", db, "--json")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "made with model" in out.stderr and "my-net/v1" in out.stderr
    assert "Traceback" not in out.stderr


# -- the derived index file --------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "zero-length", "bad-meta", "meta-deleted"])
def test_damaged_index_file_is_rebuilt(tmp_path, photo_folder, model, damage):
    folder = photo_folder(8)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        path, meta = coll.root / INDEX_FILE, coll.root / INDEX_META
        assert path.exists() and meta.exists()
        size = path.stat().st_size
        if damage == "deleted":
            path.unlink()
        elif damage == "garbage":
            path.write_bytes(np.random.default_rng(6).bytes(size))
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[: size // 2])
        elif damage == "zero-length":
            path.write_bytes(b"")
        elif damage == "bad-meta":
            meta.write_text("{not json")
        else:
            meta.unlink()
        query = Searcher(coll, model).embed_image(folder / "img_005.jpg")
        hits = Searcher(coll, model).query(vector=query, k=8, qe=False).hits  # the index alone
        assert [h.id for h in hits] == exact_top(coll, query, 8)
        assert hits[0].path == str(folder / "img_005.jpg") and hits[0].score > 0.999
    # the next indexing run leaves a good index file behind again
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        VectorIndex.open(coll).save_if_changed()
        assert len(VectorIndex._load(coll.root / INDEX_FILE)) == 8


def test_stale_index_file_catches_up(tmp_path, photo_folder, model):
    """An index saved before later changes (e.g. restored from a backup) is brought up to
    date from the rows, or rebuilt; it never answers with rows that are gone."""
    folder = photo_folder(6)
    with Collection(tmp_path / "db") as coll:
        sync(coll, [folder], model)
        saved = {n: (coll.root / n).read_bytes() for n in (INDEX_FILE, INDEX_META)}
        (folder / "img_000.jpg").unlink()
        make_photo(77).save(folder / "new.jpg")
        make_photo(78).save(folder / "img_003.jpg")
        sync(coll, [folder], model)
        for name, data in saved.items():
            (coll.root / name).write_bytes(data)
        check_consistent(coll)
        query = Searcher(coll, model).embed_image(folder / "img_003.jpg")
        hits = Searcher(coll, model).query(vector=query, k=10).hits
        assert [h.id for h in hits] == exact_top(coll, query, 10)
        assert hits[0].path == str(folder / "img_003.jpg") and hits[0].score > 0.999


def test_second_indexing_run_is_refused_while_one_runs(tmp_path, photo_folder, model):
    folder = photo_folder(2)
    with Collection(tmp_path / "db") as coll:
        with coll.lock():
            with pytest.raises(CollectionError, match="another indexing run"):
                sync(coll, [folder], model)
        assert sync(coll, [folder], model).added == 2
