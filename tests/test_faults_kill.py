"""SIGKILL at random moments during `imagespace index`: nothing lost, nothing duplicated.

Each round changes the folder (new files, removed files, a move, a rewrite), starts an
indexing run as a subprocess and kills it with SIGKILL after a random delay drawn below the
length of a full run. After every kill the collection must pass the integrity check; at the
end one run without a kill must complete it: every file exactly once, the index exactly the
rows, every vector its own nearest neighbour, and a further run with nothing to do.

The quick version (5 rounds) runs in `make test`; the slow one (24 rounds) in `make stress`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo

from imagespace.collection import Collection
from imagespace.embed import content_digest
from imagespace.index.hnsw import VectorIndex
from imagespace.integrity import check_collection

CLI = [sys.executable, "-m", "imagespace"]
ROUND_TIMEOUT = 120  # seconds: a run that outlives this is a hang, and fails the test


def _env() -> dict[str, str]:
    return {**os.environ, "IMAGESPACE_THREADS": "1"}


def _index_cmd(folder: Path, db: Path) -> list[str]:
    return [*CLI, "index", str(folder), "--db", str(db), "--json", "--batch-size", "4", "--workers", "1"]


def _run_to_end(folder: Path, db: Path) -> tuple[dict, float]:
    started = time.monotonic()
    done = subprocess.run(_index_cmd(folder, db), env=_env(), capture_output=True, text=True, timeout=ROUND_TIMEOUT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), time.monotonic() - started


def _run_and_kill(folder: Path, db: Path, delay: float) -> tuple[int, float]:
    """Start a run, SIGKILL it after ``delay`` seconds: (return code, -9 when killed; seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(_index_cmd(folder, db), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    try:
        proc.communicate(timeout=ROUND_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, time.monotonic() - started


def _mutate(folder: Path, rng: random.Random, next_seed: list[int]) -> None:
    """New files, removed files, one move and one rewrite: every kind of work for the run."""
    files = sorted(folder.glob("*.jpg"))
    for path in rng.sample(files, k=min(2, len(files))):
        path.unlink()
    files = sorted(folder.glob("*.jpg"))
    if files:
        src = rng.choice(files)
        src.rename(folder / f"moved_{next_seed[0]:04d}.jpg")
        next_seed[0] += 1
    files = sorted(folder.glob("*.jpg"))
    if files:
        make_photo(next_seed[0], (64, 48)).save(rng.choice(files), quality=85)
        next_seed[0] += 1
    for _ in range(10):
        make_photo(next_seed[0], (64, 48)).save(folder / f"new_{next_seed[0]:04d}.jpg", quality=85)
        next_seed[0] += 1


def _assert_complete(folder: Path, db: Path) -> None:
    """Every file of the folder exactly once, with its current bytes; the index exactly the rows."""
    files = {str(p.resolve()): content_digest(p.read_bytes()) for p in folder.glob("*.jpg")}
    with Collection(db, create=False) as coll:
        rows = coll.conn.execute("SELECT path, digest FROM images").fetchall()
        assert len(rows) == len({p for p, _ in rows}), "duplicate paths"
        assert dict(rows) == files
        report = check_collection(coll)
        assert report.ok, report.to_dict()
        assert report.index_entries == len(files)
        index = VectorIndex.open(coll)
        ids, vecs = coll.vectors()
        got, _ = index.search(vecs, 1, exact=True)
        # Every stored vector finds itself (or an identical twin) first.
        same = (got[:, 0] == ids) | np.isclose(np.einsum("ij,ij->i", vecs, index.vectors_of(got[:, 0])), 1.0, atol=1e-5)
        assert same.all()


def _kill_loop(tmp_path: Path, rounds: int, seed: int) -> dict:
    rng = random.Random(seed)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        make_photo(i, (64, 48)).save(folder / f"img_{i:03d}.jpg", quality=85)
    db = tmp_path / "db"
    next_seed = [1000]
    _, full = _run_to_end(folder, db)  # a first complete run: how long one takes here
    killed = finished = 0
    for _ in range(rounds):
        _mutate(folder, rng, next_seed)
        code, seconds = _run_and_kill(folder, db, delay=rng.uniform(0.05, 1.0) * full)
        if code == -signal.SIGKILL:
            killed += 1
        else:
            assert code == 0, f"run ended with {code}"
            finished += 1
            full = seconds  # a round's whole run: later delays are drawn below it
        with Collection(db, create=False) as coll:
            report = check_collection(coll)
        assert report.ok, report.to_dict()
    last, _ = _run_to_end(folder, db)
    assert last["failed"] == []
    _assert_complete(folder, db)
    again, _ = _run_to_end(folder, db)
    assert (again["added"], again["updated"], again["removed"], again["moved"]) == (0, 0, 0, 0)
    check = subprocess.run([*CLI, "check", "--db", str(db), "--json"], env=_env(), capture_output=True, text=True, timeout=ROUND_TIMEOUT)
    assert check.returncode == 0 and json.loads(check.stdout)["ok"], check.stdout + check.stderr
    print(f"\nSIGKILL loop: {rounds} rounds, {killed} killed mid-run, {finished} finished first; all survived")
    return {"killed": killed, "finished": finished}


def test_sigkill_during_index_quick(tmp_path: Path) -> None:
    counts = _kill_loop(tmp_path, rounds=5, seed=1)
    assert counts["killed"] >= 1  # the delays are drawn below a full run's length


@pytest.mark.slow
def test_sigkill_during_index_many(tmp_path: Path) -> None:
    counts = _kill_loop(tmp_path, rounds=24, seed=2)
    assert counts["killed"] >= 12
