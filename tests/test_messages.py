"""The library reports through `logging`; the command line shows those messages on standard error."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np

from imagespace.collection import Collection
from imagespace.embed import Embedded, FileInfo
from imagespace.index import open_index
from imagespace.index.hnsw import INDEX_FILE


def damaged_collection(root) -> Collection:
    """Ten made-up rows and a saved index whose file is then damaged (a rebuild is due)."""
    vecs = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    coll = Collection(root)
    coll.bind_model("test-model", "test-model", 8)
    coll.write_embedded(
        [Embedded(FileInfo(f"/photos/{i}.jpg", 1, 1, f"{i:032x}"), v, [("thing", 0.5)], 8, 8, "JPEG") for i, v in enumerate(vecs)], []
    )
    open_index(coll).save_if_changed()
    with open(coll.root / INDEX_FILE, "r+b") as f:
        f.seek(100)
        f.write(b"damaged")
    return coll


def test_the_library_logs_instead_of_printing(tmp_path, caplog, capsys):
    coll = damaged_collection(tmp_path / "db")
    with caplog.at_level(logging.INFO, logger="imagespace"):
        index = open_index(coll)
    assert len(index) == 10
    assert [(r.name, r.levelname) for r in caplog.records] == [("imagespace.index.hnsw", "WARNING")]
    assert "rebuilding the vector index: index file damaged" in caplog.records[0].getMessage()
    assert capsys.readouterr().err == ""  # nothing printed behind the caller's back


def test_the_command_line_shows_library_messages_on_standard_error(tmp_path):
    damaged_collection(tmp_path / "db").close()
    env = dict(os.environ, IMAGESPACE_THREADS="2")
    env.pop("IMAGESPACE_DB", None)
    out = subprocess.run(
        [sys.executable, "-m", "imagespace", "search", "--db", str(tmp_path / "db"), "--json", "--like", "/photos/3.jpg", "-k", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "imagespace: rebuilding the vector index: index file damaged" in out.stderr
    assert len(json.loads(out.stdout)["results"]) == 3  # standard output stays one JSON document
