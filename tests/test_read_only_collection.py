"""A collection on read-only storage (a mounted share, a read-only disk, a folder of
another user): reading commands work; writing commands say it is read-only.

The folder is made read-only for the command alone: a bind mount remounted read-only in a
mount namespace of its own (so even root gets "Read-only file system"), or, where that is
not allowed, write permission taken away from a user who is not root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import make_photo, run_cli

_MOUNT_RO = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def _read_only_prefix(folder: Path) -> tuple[str, ...]:
    """A command prefix under which ``folder`` cannot be written."""
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run([unshare, "-m", "sh", "-c", _MOUNT_RO, str(folder), "sh", "-c", f"! touch '{folder}/probe'"],
                               capture_output=True)
        if probe.returncode == 0:
            return (unshare, "-m", "sh", "-c", _MOUNT_RO, str(folder))
    if os.geteuid() != 0:
        for p in [folder, *folder.iterdir()]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return ()
    pytest.fail("cannot make a read-only folder here: root without the right to mount in a namespace of its own")


@pytest.fixture(scope="module")
def read_only_db(tmp_path_factory):
    base = tmp_path_factory.mktemp("readonly")
    photos = base / "photos"
    photos.mkdir()
    for i in range(6):
        make_photo(i, (160, 120)).save(photos / f"p{i}.jpg", quality=90)
    db = base / "db"
    done = run_cli("index", photos, "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    # The index file is a derived file: without it a search must build one in memory and
    # not try to save it.
    for f in db.glob("vectors*"):
        f.unlink()
    before = sorted(p.name for p in db.iterdir())
    yield {"db": db, "photos": photos, "prefix": _read_only_prefix(db), "before": before}
    for p in [db, *db.iterdir()]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_search_and_info_work_on_read_only_storage(read_only_db):
    db, prefix = read_only_db["db"], read_only_db["prefix"]
    info = run_cli("info", "--db", db, "--json", prefix=prefix)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["images"] == 6
    query = read_only_db["photos"] / "p2.jpg"
    found = run_cli("search", query, "--db", db, "--json", "-k", "3", prefix=prefix)
    assert found.returncode == 0, found.stderr
    assert Path(json.loads(found.stdout)["results"][0]["path"]).name == "p2.jpg"
    like = run_cli("search", "--like", query, "--db", db, "--json", "-k", "3", prefix=prefix)
    assert like.returncode == 0, like.stderr
    # Reading left nothing behind (no -wal, -shm or index file).
    assert sorted(p.name for p in db.iterdir()) == read_only_db["before"]


def test_duplicates_work_on_read_only_storage_and_leave_nothing(read_only_db):
    """The pair cache, the feature store and the pass's scratch file cannot be beside the
    collection: the pass runs without the first two and keeps its scratch file elsewhere."""
    db, prefix = read_only_db["db"], read_only_db["prefix"]
    found = run_cli("duplicates", "--db", db, "--json", prefix=prefix)
    assert found.returncode == 0, found.stderr
    stats = json.loads(found.stdout)["stats"]
    assert stats["images"] == 6 and stats["verified_pairs"] > 0 and stats["images_with_features"] > 0, stats
    assert sorted(p.name for p in db.iterdir()) == read_only_db["before"]


def test_writing_commands_say_the_collection_is_read_only(read_only_db):
    db, prefix = read_only_db["db"], read_only_db["prefix"]
    out = run_cli("index", read_only_db["photos"], "--db", db, prefix=prefix)
    assert out.returncode == 1
    assert "read-only" in out.stderr and "not a usable collection" not in out.stderr, out.stderr
    assert "search" in out.stderr.lower()  # says what still works
