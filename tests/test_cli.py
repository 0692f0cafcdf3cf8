"""The command line contract of DESIGN.md: --json prints one JSON document and nothing else,
with the agreed keys; export writes Parquet; usage errors exit 2, failures 1, success 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo, run_cli

from imagespace.collection import Collection
from imagespace.models import DEFAULT_MODEL

INDEX_KEYS = {"added", "updated", "removed", "unchanged", "failed", "seconds", "images_per_second"}


def one_json_document(stdout: str):
    """stdout holds exactly one JSON document (and a final newline), nothing else."""
    assert stdout.strip(), "nothing on standard output"
    doc, end = json.JSONDecoder().raw_decode(stdout)
    assert stdout[end:].strip() == "", f"more than one JSON document on stdout: {stdout[end:][:200]!r}"
    assert stdout.lstrip() == stdout, "text before the JSON document"
    return doc


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A collection made by `imagespace index --json`, with one bad file among the photos."""
    base = tmp_path_factory.mktemp("cli")
    photos = base / "photos"
    photos.mkdir()
    for i in range(7):
        make_photo(i, (96 + 8 * i, 72)).save(photos / f"img_{i}.jpg", quality=90)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    db = base / "db"
    out = run_cli("index", photos, "--db", db, "--json")
    return {"base": base, "photos": photos, "db": db, "out": out}


def test_index_json(indexed):
    out = indexed["out"]
    assert out.returncode == 0, out.stderr
    doc = one_json_document(out.stdout)
    assert INDEX_KEYS <= set(doc)
    assert (doc["added"], doc["updated"], doc["removed"], doc["unchanged"]) == (7, 0, 0, 0)
    assert doc["failed"] == [{"path": str(indexed["photos"] / "broken.jpg"), "error": doc["failed"][0]["error"]}]
    assert isinstance(doc["failed"][0]["error"], str) and doc["failed"][0]["error"]
    assert isinstance(doc["seconds"], (int, float)) and doc["seconds"] > 0
    assert isinstance(doc["images_per_second"], (int, float)) and doc["images_per_second"] > 0
    assert "Traceback" not in out.stderr


def test_index_json_second_run_and_progress_never_on_stdout(indexed):
    out = run_cli("index", indexed["photos"], "--db", indexed["db"], "--json")
    assert out.returncode == 0, out.stderr
    doc = one_json_document(out.stdout)
    assert (doc["added"], doc["unchanged"]) == (0, 7) and len(doc["failed"]) == 1


def test_index_without_json_is_for_people(indexed, tmp_path):
    out = run_cli("index", indexed["photos"], "--db", indexed["db"])
    assert out.returncode == 0
    assert "unchanged 7" in out.stdout and "broken.jpg" in out.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.stdout)


def test_default_db_is_dot_imagespace_in_the_current_folder(indexed, tmp_path):
    out = run_cli("index", indexed["photos"] / "img_0.jpg", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert one_json_document(out.stdout)["added"] == 1
    assert (tmp_path / ".imagespace" / "collection.sqlite").is_file()
    out = run_cli("info", "--json", cwd=tmp_path)
    assert one_json_document(out.stdout)["images"] == 1


def test_search_json(indexed):
    query = indexed["photos"] / "img_2.jpg"
    for args in (["search", query], ["search", "--like", query], ["search", query, "--where", "width > 100"]):
        out = run_cli(*args, "--db", indexed["db"], "--json", "-k", "3")
        assert out.returncode == 0, out.stderr
        doc = one_json_document(out.stdout)
        assert set(doc) >= {"results"}
        results = doc["results"]
        assert 1 <= len(results) <= 3
        for r in results:
            assert {"path", "score", "tags"} <= set(r)
            assert isinstance(r["path"], str) and Path(r["path"]).is_file()
            assert isinstance(r["score"], float) and -1.0 <= r["score"] <= 1.0 + 1e-6
            assert isinstance(r["tags"], list) and r["tags"] and all(isinstance(t, str) for t in r["tags"])
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    first = one_json_document(run_cli("search", query, "--db", indexed["db"], "--json", "-k", "1").stdout)
    assert first["results"][0]["path"] == str(query) and first["results"][0]["score"] > 0.999


def test_search_without_json_prints_a_table(indexed):
    out = run_cli("search", indexed["photos"] / "img_2.jpg", "--db", indexed["db"], "-k", "2")
    assert out.returncode == 0
    assert "img_2.jpg" in out.stdout and "score" in out.stdout


def test_export_json_and_parquet(indexed, tmp_path):
    import pyarrow.parquet as pq

    target = tmp_path / "out" / "vectors.parquet"
    target.parent.mkdir()
    out = run_cli("export", "--out", target, "--db", indexed["db"], "--json")
    assert out.returncode == 0, out.stderr
    doc = one_json_document(out.stdout)
    assert doc["rows"] == 7 and Path(doc["out"]) == target
    assert [p.name for p in target.parent.iterdir()] == ["vectors.parquet"]  # no temporary left
    table = pq.read_table(target)
    assert {"path", "embedding", "tags", "width", "height"} <= set(table.column_names)
    assert table.num_rows == 7
    data = table.to_pydict()
    with Collection(indexed["db"]) as coll:
        ids, vecs = coll.vectors()
        by_path = {coll.rows(ids.tolist())[int(i)].path: v for i, v in zip(ids, vecs)}
        rows = {r.path: r for r in coll.all_rows()}
    assert set(data["path"]) == set(rows)
    for path, emb, tags, w, h in zip(data["path"], data["embedding"], data["tags"], data["width"], data["height"]):
        assert np.allclose(np.asarray(emb, np.float32), by_path[path], atol=0)
        assert len(emb) == 1280
        assert tags == [t for t, _ in rows[path].tags] and all(isinstance(t, str) for t in tags)
        assert (w, h) == (rows[path].width, rows[path].height)
    # pandas / numpy users can take the vectors as one array
    matrix = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert matrix.shape == (7, 1280)


def test_info_json(indexed):
    out = run_cli("info", "--db", indexed["db"], "--json")
    assert out.returncode == 0, out.stderr
    doc = one_json_document(out.stdout)
    assert doc["images"] == 7
    assert doc["dim"] == 1280
    assert doc["model"] == DEFAULT_MODEL and doc["model_id"].startswith(DEFAULT_MODEL + "/")
    assert Path(doc["db"]) == indexed["db"]
    assert [f["path"] for f in doc["failures"]] == [str(indexed["photos"] / "broken.jpg")]


def test_db_from_the_environment(indexed, tmp_path):
    env_out = subprocess.run(
        [sys.executable, "-m", "imagespace", "info", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, IMAGESPACE_DB=str(indexed["db"])), timeout=120,
    )
    assert env_out.returncode == 0 and one_json_document(env_out.stdout)["images"] == 7


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["no-such-command"],
        ["index"],
        ["index", "{photos}", "--batch-size", "0"],
        ["index", "{photos}", "--workers", "0"],
        ["index", "{photos}", "--no-such-option"],
        ["search"],
        ["search", "{photos}/img_1.jpg", "--like", "{photos}/img_2.jpg"],
        ["search", "{photos}/img_1.jpg", "-k", "0"],
        ["search", "{photos}/img_1.jpg", "-k", "many"],
        ["search", "{photos}/img_1.jpg", "--min-score", "high"],
        ["export"],
        ["export", "--out"],
        ["info", "--bogus"],
    ],
)
def test_usage_errors_exit_2(indexed, args):
    args = [a.format(photos=indexed["photos"]) for a in args]
    out = run_cli(*args, "--db", indexed["db"], "--json") if args else run_cli()
    assert out.returncode == 2, (args, out.returncode, out.stderr)
    assert out.stdout == "" or not out.stdout.lstrip().startswith("{")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["search {photos}/img_1.jpg", "info", "export --out {base}/x.parquet"])
def test_commands_on_a_missing_collection_exit_1(indexed, tmp_path, command):
    args = command.format(photos=indexed["photos"], base=tmp_path).split()
    out = run_cli(*args, "--db", tmp_path / "nothing-here", "--json")
    assert out.returncode == 1
    assert out.stdout == ""
    assert "no collection" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_unusable_collection_exits_1(indexed, tmp_path):
    # --db naming a file, and a folder whose database is not SQLite
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    not_sqlite = tmp_path / "garbled"
    not_sqlite.mkdir()
    (not_sqlite / "collection.sqlite").write_bytes(b"this is not a database" * 100)
    for db in (a_file, not_sqlite):
        for args in (["index", indexed["photos"]], ["info"], ["search", indexed["photos"] / "img_1.jpg"]):
            out = run_cli(*args, "--db", db, "--json")
            assert out.returncode == 1, (db, args, out.stderr)
            assert out.stdout == ""
            assert "Traceback" not in out.stderr and "imagespace: error:" in out.stderr


def test_index_with_an_unknown_model_exits_1(indexed, tmp_path):
    out = run_cli("index", indexed["photos"], "--db", tmp_path / "db", "--model", "no-such-net", "--json")
    assert out.returncode == 1 and "unknown model" in out.stderr and "Traceback" not in out.stderr
