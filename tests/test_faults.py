"""Faults of real disks and real archives: full disks, files that change under the indexer,
symlink loops, odd and long names, unreadable files, damaged index files.

Each test makes its own files; the disk-full and unreadable-file tests need root (for a
tmpfs mount, and to drop the capability that lets root read anything) and say so when skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.embed import content_digest, embed_files
from imagespace.index.hnsw import INDEX_FILE, INDEX_META, VectorIndex
from imagespace.integrity import check_collection
from imagespace.models import DEFAULT_MODEL
from imagespace.search import Searcher

CLI = [sys.executable, "-m", "imagespace"]
TIMEOUT = 300


def _env() -> dict[str, str]:
    return {**os.environ, "IMAGESPACE_THREADS": "1"}


def _cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *CLI, *args], env=_env(), capture_output=True, timeout=TIMEOUT)


def _photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        path = folder / f"img_{i:03d}.jpg"
        make_photo(i, (64, 48)).save(path, quality=85)
        out.append(path)
    return out


def _sync(db: Path, paths: list, model, **kw):
    with Collection(db) as coll:
        return sync(coll, [os.fspath(p) for p in paths], model, model_spec=DEFAULT_MODEL, workers=1, batch_size=4, **kw)


def _assert_consistent(db: Path, expect: dict[str, str] | None = None) -> None:
    """check passes; with ``expect`` ({path: digest}) the rows are exactly those files."""
    with Collection(db, create=False) as coll:
        report = check_collection(coll)
        assert report.ok, report.to_dict()
        if expect is not None:
            assert dict(coll.conn.execute("SELECT path, digest FROM images").fetchall()) == expect


def _digests(*folders: Path) -> dict[str, str]:
    return {str(p): content_digest(p.read_bytes()) for f in folders for p in sorted(f.rglob("*.jpg")) if p.is_file()}


# -- the disk fills up -----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A tmpfs folder whose size the test sets: ``resize(kilobytes)``."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("disk-full test: mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"disk-full test: this machine does not permit mounting a tmpfs ({done.stderr.strip()})")

    def resize(kilobytes: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kilobytes}k", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("kilobytes", [360, pytest.param(700, marks=pytest.mark.slow)])
def test_disk_full_is_a_clear_error_and_the_next_run_completes(tmp_path: Path, small_disk, kilobytes: int) -> None:
    """360k fills up while rows are written; 700k holds the rows but not the index file."""
    disk, resize = small_disk
    folder = tmp_path / "photos"
    _photos(folder, 80)
    db = disk / "db"
    resize(kilobytes)
    full = _cli("index", str(folder), "--db", str(db), "--json", "--batch-size", "8", "--workers", "1")
    stderr = full.stderr.decode()
    assert full.returncode == 1, (full.returncode, stderr)
    assert "Traceback" not in stderr
    assert "space" in stderr, stderr
    # The collection is still readable, and consistent with what was committed.
    info = _cli("info", "--db", str(db), "--json")
    assert info.returncode == 0, info.stderr
    saved = json.loads(info.stdout)["images"]
    assert saved < 80
    _assert_consistent(db)
    assert not list(db.glob("*.tmp")), "half-written temporary files left on the full disk"
    resize(8192)
    done = _cli("index", str(folder), "--db", str(db), "--json", "--batch-size", "8", "--workers", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 80 - saved and report["unchanged"] == saved and report["failed"] == []
    _assert_consistent(db, _digests(folder))


# -- files that change, vanish or get truncated while being indexed ------------------------


def test_files_changing_between_scan_and_read(tmp_path: Path, model) -> None:
    """The scan has listed the files; before they are read, some vanish, shrink or change."""
    folder = tmp_path / "photos"
    files = _photos(folder, 12)
    db = tmp_path / "db"
    _sync(db, [folder], model)
    for i, path in enumerate(files[:3]):  # changed since the last run: due to be embedded again
        make_photo(700 + i, (64, 48)).save(path, quality=85)
    vanished, truncated, rewritten, new = files[0], files[1], files[2], folder / "new_1.jpg"
    make_photo(500, (64, 48)).save(new, quality=85)

    def meddling_embedder(paths, model, **kw):
        vanished.unlink()
        truncated.write_bytes(truncated.read_bytes()[:300])
        make_photo(999, (64, 48)).save(rewritten, quality=85)
        new.write_bytes(b"")
        yield from embed_files(paths, model, **kw)

    report = _sync(db, [folder], model, embedder=meddling_embedder)
    errors = {r["path"]: r["error"] for r in report.failed}
    assert set(errors) == {str(vanished), str(truncated), str(new)}, errors
    assert "vanished" in errors[str(vanished)] or "No such file" in errors[str(vanished)]
    assert "truncated" in errors[str(truncated)] or "corrupt" in errors[str(truncated)]
    _assert_consistent(db)
    with Collection(db) as coll:  # the rewritten file's row holds its new bytes
        assert coll.conn.execute("SELECT digest FROM images WHERE path=?", (str(rewritten),)).fetchone()[0] == content_digest(
            rewritten.read_bytes()
        )
    # Once the files settle, the next run brings the collection exactly to the folder.
    make_photo(501, (64, 48)).save(new, quality=85)
    make_photo(502, (64, 48)).save(truncated, quality=85)
    again = _sync(db, [folder], model)
    assert again.failed == []
    assert again.removed == 1
    _assert_consistent(db, _digests(folder))


def test_file_growing_while_the_indexer_reads_it(tmp_path: Path, model) -> None:
    """A file still being written (half its bytes) fails with a reason, then indexes when whole."""
    folder = tmp_path / "photos"
    files = _photos(folder, 4)
    whole = files[3].read_bytes()
    files[3].write_bytes(whole[: len(whole) // 2])
    db = tmp_path / "db"
    report = _sync(db, [folder], model)
    assert [f["path"] for f in report.failed] == [str(files[3])]
    files[3].write_bytes(whole)
    again = _sync(db, [folder], model)
    assert (again.added, again.failed) == (1, [])
    _assert_consistent(db, _digests(folder))


# -- symlink loops, odd names, long paths, unreadable files --------------------------------


def test_symlink_loops(tmp_path: Path, model) -> None:
    folder = tmp_path / "photos"
    _photos(folder, 3)
    (folder / "sub").mkdir()
    _photos(folder / "sub", 2, start=10)
    os.symlink("..", folder / "sub" / "up")  # a folder loop
    os.symlink(folder, folder / "sub" / "again")
    os.symlink("self.jpg", folder / "self.jpg")  # a file that links to itself
    os.symlink("b.jpg", folder / "a.jpg")
    os.symlink("a.jpg", folder / "b.jpg")
    loop_root = tmp_path / "loop"
    os.symlink(loop_root, loop_root)  # a root that is its own link
    db = tmp_path / "db"
    report = _sync(db, [folder, loop_root], model)
    assert report.added == 5
    errors = {f["path"]: f["error"] for f in report.failed}
    assert set(errors) == {str(folder / "self.jpg"), str(folder / "a.jpg"), str(folder / "b.jpg"), str(loop_root)}, errors
    _assert_consistent(db, _digests(folder))


ODD_NAMES = [
    b"bad\xff\xfe.jpg",  # not UTF-8
    b"latin1 caf\xe9.jpg",  # Latin-1, not UTF-8
    "ünïcode 名前 🙂.jpg".encode(),
    b"new\nline\ttab.jpg",
    b"quote'double\"back\\slash.jpg",
    b"percent%_under_score.jpg",  # LIKE wildcards
    b"-dash leading.jpg",
    b" spaces .jpg",
    b"x" * 251 + b".jpg",  # the longest name a file system allows (255 bytes)
]


def test_odd_names_survive_sqlite_json_and_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(ODD_NAMES):
        make_photo(100 + i, (64, 48)).save(os.path.join(os.fsencode(folder), name), "JPEG", quality=85)
    db = tmp_path / "db"
    done = _cli("index", str(folder), "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.decode("utf-8"))  # valid UTF-8 JSON, however odd the names
    assert (report["added"], report["failed"]) == (len(ODD_NAMES), [])
    expected = {os.path.join(os.fsencode(folder), n) for n in ODD_NAMES}
    with Collection(db) as coll:
        assert {os.fsencode(r.path) for r in coll.all_rows()} == expected  # exact bytes back
    for name in ODD_NAMES[:2] + ODD_NAMES[3:5]:  # each CLI run loads the model: a few suffice
        path = os.path.join(os.fsencode(folder), name)
        found = _cli("search", "--like", os.fsdecode(path), "--db", str(db), "--json", "-k", "3")
        assert found.returncode == 0, (name, found.stderr)
        results = json.loads(found.stdout.decode("utf-8"))["results"]
        assert len(results) == 3 and all(os.fsencode(r["path"]) in expected - {path} for r in results)
    with Collection(db) as coll:  # and every name through the library
        searcher = Searcher(coll)
        for name in ODD_NAMES:
            path = os.fsdecode(os.path.join(os.fsencode(folder), name))
            hits = searcher.query(like=path, k=len(ODD_NAMES)).hits
            assert {os.fsencode(h.path) for h in hits} == expected - {os.fsencode(path)}
    human = _cli("index", str(folder), "--db", str(db))  # the human output prints them too
    assert human.returncode == 0, human.stderr
    # Moves and removals of odd names are found like any other.
    os.rename(os.path.join(os.fsencode(folder), ODD_NAMES[0]), os.path.join(os.fsencode(folder), b"moved\xff.jpg"))
    os.unlink(os.path.join(os.fsencode(folder), ODD_NAMES[1]))
    again = json.loads(_cli("index", str(folder), "--db", str(db), "--json").stdout.decode("utf-8"))
    assert (again["moved"], again["removed"], again["added"]) == (1, 1, 0)
    export = _cli("export", "--out", str(tmp_path / "out.parquet"), "--db", str(db), "--json")
    assert export.returncode == 0, export.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert set(table.column("path_bytes").to_pylist()) == {os.fsencode(r) for r in _odd_paths_now(folder)}
    with Collection(db) as coll:
        assert check_collection(coll).ok


def _odd_paths_now(folder: Path) -> list[str]:
    return [os.fsdecode(os.path.join(os.fsencode(folder), n)) for n in os.listdir(os.fsencode(folder))]


def test_very_long_paths(tmp_path: Path, model) -> None:
    """Folders nested past PATH_MAX (4,096 bytes): what can be reached is indexed, the rest reported."""
    folder = tmp_path / "deep"
    folder.mkdir()
    make_photo(1, (64, 48)).save(folder / "top.jpg", quality=85)
    # Build 20 levels of 250-byte folder names with relative paths (no single path is too long).
    fd = os.open(folder, os.O_RDONLY)
    reachable = []
    try:
        for level in range(20):
            name = f"{level:02d}" + "d" * 248
            os.mkdir(name, dir_fd=fd)
            new_fd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new_fd
            leaf = os.open("photo.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            with os.fdopen(leaf, "wb") as f:
                make_photo(50 + level, (64, 48)).save(f, "JPEG", quality=85)
            full = os.path.join(str(folder), *[f"{i:02d}" + "d" * 248 for i in range(level + 1)], "photo.jpg")
            if len(os.fsencode(full)) < 4096:
                reachable.append(full)
    finally:
        os.close(fd)
    db = tmp_path / "db"
    report = _sync(db, [folder], model)
    assert report.added == 1 + len(reachable)
    assert report.failed and all("too long" in f["error"].lower() for f in report.failed), report.failed
    with Collection(db) as coll:
        assert {r.path for r in coll.all_rows()} == {str(folder / "top.jpg"), *reachable}
        assert check_collection(coll).ok
    again = _sync(db, [folder], model)  # nothing lost: what could not be listed is not "removed"
    assert (again.added, again.removed, again.unchanged) == (0, 0, 1 + len(reachable))


def _without_read_override() -> tuple[str, ...]:
    """A command prefix that runs as root without CAP_DAC_OVERRIDE/READ_SEARCH: modes count."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("unreadable-file test: tests run as root and setpriv(1) is absent, so chmod 000 cannot stop reads")
    probe = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unreadable-file test: cannot drop root's read override here ({probe.stderr.decode().strip()})")
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search")


def test_unreadable_file_and_folder(tmp_path: Path) -> None:
    """chmod 000 on a file and a folder: reasons given, nothing else disturbed, rows kept."""
    prefix = _without_read_override()
    folder = tmp_path / "photos"
    files = _photos(folder, 3)
    sub_files = _photos(folder / "sub", 2, start=10)
    db = tmp_path / "db"
    first = _cli("index", str(folder), "--db", str(db), "--json")
    assert first.returncode == 0 and json.loads(first.stdout)["added"] == 5
    locked = folder / "locked.jpg"
    make_photo(77, (64, 48)).save(locked, quality=85)
    os.chmod(locked, 0)
    os.chmod(folder / "sub", 0)
    try:
        run = _cli("index", str(folder), "--db", str(db), "--json", prefix=prefix)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        errors = {f["path"]: f["error"] for f in report["failed"]}
        assert errors == {str(locked): "permission denied", str(folder / "sub"): "cannot list folder: Permission denied"}
        assert (report["added"], report["removed"], report["unchanged"]) == (0, 0, 3)  # the folder's rows stay
    finally:
        os.chmod(folder / "sub", 0o755)
        os.chmod(locked, 0o644)
    done = json.loads(_cli("index", str(folder), "--db", str(db), "--json").stdout)
    assert (done["added"], done["failed"]) == (1, [])
    _assert_consistent(db, _digests(folder))
    assert len(files) + len(sub_files) + 1 == len(_digests(folder))


# -- a damaged or deleted index file ---------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "vectors-overwritten":  # the header stays valid: only a checksum can tell
        rng = np.random.default_rng(0)
        data[200:4000] = rng.integers(0, 256, 3800, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    elif how == "tail-overwritten":  # the graph at the end of the file
        data[-2000:] = bytes(2000)
        path.write_bytes(bytes(data))
    elif how == "meta-garbage":
        (path.parent / INDEX_META).write_text("{not json")
    elif how == "from-another-collection":
        pass  # done by the test: another collection's index file copied over this one


@pytest.mark.parametrize(
    "how", ["deleted", "truncated", "empty", "vectors-overwritten", "tail-overwritten", "meta-garbage", "from-another-collection"]
)
def test_damaged_index_is_detected_and_rebuilt(tmp_path: Path, model, how: str) -> None:
    folder = tmp_path / "photos"
    _photos(folder, 16)
    db = tmp_path / "db"
    _sync(db, [folder], model)
    with Collection(db) as coll:
        truth_ids, truth_vecs = coll.vectors()
        truth = VectorIndex.build(coll).search(truth_vecs, 5, exact=True)[0]
    index_path = db / INDEX_FILE
    if how == "from-another-collection":
        other = tmp_path / "other"
        _photos(other, 16, start=300)
        _sync(tmp_path / "db2", [other], model)
        shutil.copy(tmp_path / "db2" / INDEX_FILE, index_path)
        shutil.copy(tmp_path / "db2" / INDEX_META, db / INDEX_META)
    else:
        _damage(index_path, how)
    with Collection(db) as coll:
        report = check_collection(coll)
        if how == "deleted":
            assert report.ok and "index-absent" in {n.kind for n in report.notices}
        else:  # an index that exists but cannot be trusted is an error until repaired
            assert not report.ok, how
        index = VectorIndex.open(coll)  # what every search does: never the damaged answers
        got = index.search(truth_vecs, 5, exact=True)[0]
        assert np.array_equal(got, truth)
        repaired = check_collection(coll, repair=True)
        assert repaired.ok and repaired.repaired, repaired.to_dict()
        assert np.array_equal(VectorIndex.open(coll).search(truth_vecs, 5, exact=True)[0], truth)


def test_check_finds_damaged_rows_and_orphans(tmp_path: Path, model) -> None:
    """The check itself can fail: a wrong-size vector, a NaN, an index key with no row."""
    folder = tmp_path / "photos"
    _photos(folder, 6)
    db = tmp_path / "db"
    _sync(db, [folder], model)
    with Collection(db) as coll:
        ids = [r[0] for r in coll.conn.execute("SELECT id FROM images ORDER BY id")]
        coll.conn.execute("UPDATE images SET embedding=? WHERE id=?", (b"\0" * 12, ids[0]))
        nan = np.full(coll.dim, np.nan, dtype=np.float32).tobytes()
        coll.conn.execute("UPDATE images SET embedding=? WHERE id=?", (nan, ids[1]))
        index = VectorIndex.open(coll)
        index.index.add(99_999, np.ones(coll.dim, dtype=np.float32))  # an orphan key
        index.dirty = True
        index.save_if_changed()
        report = check_collection(coll)
        kinds = {f.kind: f for f in report.errors}
        assert set(kinds) == {"bad-vector", "index-orphans"}, report.to_dict()
        assert kinds["bad-vector"].count == 2 and kinds["index-orphans"].examples == [99_999]
    cli = _cli("check", "--db", str(db), "--json")
    assert cli.returncode == 1 and json.loads(cli.stdout)["ok"] is False
