"""A new user's first hour (issue 19): each rough edge they met, as a test.

Small made-up photos; the command line runs as a subprocess where its exit status or its
output to a pipe is what is tested, the library in-process elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo, run_cli
from fastapi.testclient import TestClient

from imagespace.collection import Collection
from imagespace.indexing import sync
from imagespace.embed import embed_files
from imagespace.models import DEFAULT_MODEL
from imagespace.search import compile_where


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model):
    """Six photos in a folder with a long name (paths longer than a terminal line), one broken."""
    base = tmp_path_factory.mktemp("first-hour")
    photos = base / ("a-folder-with-a-rather-long-name-as-photo-archives-have" * 2) / "dalmatian"
    photos.mkdir(parents=True)
    for i in range(6):
        make_photo(i, (96, 72)).save(photos / f"image_{i:04d}.jpg", quality=90)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    db = base / "db"
    with Collection(db) as coll:
        sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL)
    return {"base": base, "photos": photos, "db": db}


# -- 1. a folder that does not exist is an error, and leaves nothing behind --------------


def test_indexing_a_missing_folder_is_an_error_and_creates_nothing(tmp_path, indexed):
    out = run_cli("index", tmp_path / "nosuchfolder", "--db", tmp_path / "dbx")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "no such file or folder" in out.stderr and "nosuchfolder" in out.stderr
    assert not (tmp_path / "dbx").exists()
    # an existing collection and every root missing: an error too, and its rows are kept
    out = run_cli("index", tmp_path / "gone", "--db", indexed["db"], "--json")
    assert out.returncode == 1 and out.stdout == ""
    with Collection(indexed["db"], create=False) as coll:
        assert len(coll) == 6


def test_indexing_an_empty_folder_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    out = run_cli("index", tmp_path / "empty", "--db", tmp_path / "db")
    assert out.returncode == 0, out.stderr
    assert "no image files found in" in out.stdout


# -- 2. export writes what the file name says ---------------------------------------------


def test_export_writes_the_format_its_name_says(indexed, tmp_path):
    with Collection(indexed["db"], create=False) as coll:
        ids, vecs = coll.vectors()
        paths = {i: r.path for i, r in coll.rows(ids.tolist()).items()}
    out = run_cli("export", "--out", tmp_path / "vectors.csv", "--db", indexed["db"], "--json")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "vectors.csv").read_text(encoding="utf-8")
    assert not text.startswith("PAR1")
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 6
    for r in rows:
        i = int(r["id"])
        assert r["path"] == paths[i]
        assert np.allclose(json.loads(r["embedding"]), vecs[list(ids).index(i)], atol=1e-6)
        assert isinstance(json.loads(r["tags"]), list)

    from imagespace.export import export_collection

    with Collection(indexed["db"], create=False) as coll:
        assert export_collection(coll, tmp_path / "v.npz") == 6
        assert export_collection(coll, tmp_path / "v.jsonl") == 6
    npz = np.load(tmp_path / "v.npz")
    assert npz["embedding"].shape == (6, 1280) and list(npz["id"]) == list(ids)
    assert [paths[int(i)] for i in npz["id"]] == list(npz["path"])
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and len(lines[0]["embedding"]) == 1280
    # a name of no known format is refused before anything is written
    for name in ("vectors.npy", "vectors.txt"):
        out = run_cli("export", "--out", tmp_path / name, "--db", indexed["db"])
        assert out.returncode == 2 and ".parquet" in out.stderr and not (tmp_path / name).exists()


# -- 3. a file that failed is not retried until it changes ---------------------------------


def test_a_failed_file_is_remembered_until_it_changes(tmp_path, model, photo_folder):
    photos = photo_folder(2)
    bad = photos / "multipage.tif"
    bad.write_bytes(b"II*\x00 not a real tiff")
    asked: list[list[str]] = []

    def counting(paths, *a, **kw):
        asked.append(list(paths))
        return embed_files(paths, *a, **kw)

    with Collection(tmp_path / "db") as coll:
        first = sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL, embedder=counting).to_dict()
        assert [f["path"] for f in first["failed"]] == [str(bad)]
        second = sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL, embedder=counting).to_dict()
        assert asked[-1] == []  # nothing embedded again
        assert second["failed"] == [{"path": str(bad), "error": first["failed"][0]["error"], "retried": False}]
        assert second["embedded"] == 0 and second["failed_before_not_retried"] == 1
        assert [f["path"] for f in coll.failures()] == [str(bad)]  # info still lists it
        bad.write_bytes(b"II*\x00 changed, still not a tiff")
        sync(coll, [str(photos)], model, model_spec=DEFAULT_MODEL, embedder=counting)
        assert asked[-1] == [str(bad)]  # changed: tried again


# -- 4. output to a pipe: plain lines, paths whole ----------------------------------------


def test_search_into_a_pipe_prints_plain_lines_with_whole_paths(indexed):
    query = indexed["photos"] / "image_0002.jpg"
    out = run_cli("search", query, "--db", indexed["db"], "-k", "3", env={"COLUMNS": "60"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "path\tscore\ttags"
    assert len(lines) == 4
    for line in lines[1:]:
        path, score, tags = line.split("\t")
        assert Path(path).is_file() and -1 <= float(score) <= 1 and tags
    assert lines[1].split("\t")[0] == str(query)
    assert not any(ch in out.stdout for ch in "│┃━─")


def test_the_demo_try_commands_are_one_line_each_and_run(indexed, tmp_path, capsys):
    from rich.console import Console

    from imagespace.demo import try_commands

    commands = try_commands(indexed["db"], indexed["photos"])
    Console(soft_wrap=True, width=80).print("\n".join(commands), markup=False, highlight=False)
    printed = capsys.readouterr().out.splitlines()
    assert printed == commands  # not broken across lines, even at 80 columns
    # the demo's own sample names are absent here: run them on this collection's photos
    first = commands[0].replace("astronaut.png", "image_0001.jpg")
    # run from the folder they were printed in: under `make demo` they start `.venv/bin/...`
    out = subprocess.run(shlex.split(first), capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert "image_0001.jpg" in out.stdout


# -- 5. recommend shows its columns and says its order is diversified ---------------------


def test_recommend_has_a_header_and_says_the_order_is_diversified(indexed):
    out = run_cli("recommend", "--like", indexed["photos"] / "image_0001.jpg", "--db", indexed["db"], "-k", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "path\tscore\ttags"
    assert "diversified" in out.stderr
    doc = json.loads(run_cli("recommend", "--like", indexed["photos"] / "image_0001.jpg", "--db", indexed["db"], "--json").stdout)
    assert doc["order"] == "diversified"


# -- 6. classify: why each unknown, and labels kept for --where ----------------------------


def test_classify_explains_unknowns_and_saves_labels_for_where(indexed, tmp_path):
    train = tmp_path / "labelled"
    for label, seeds in (("warm", (0, 1)), ("cool", (2, 3))):
        (train / label).mkdir(parents=True)
        for s in seeds:
            make_photo(s, (96, 72)).save(train / label / f"{s}.jpg", quality=90)
    out = run_cli("classify", "--train", train, "--db", indexed["db"], "--json", "--min-probability", "0.99")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    unknown = [p for p in doc["predictions"] if p["label"] == "unknown"]
    assert unknown, doc  # nothing reaches a 0.99 probability with two examples a class
    assert all("below --min-probability 0.99" in p["reason"] and p["guess"] in ("warm", "cool") for p in unknown)
    with Collection(indexed["db"], create=False) as coll:
        sql, params = compile_where("label = unknown")
        n = coll.conn.execute(f"SELECT count(*) FROM images WHERE {sql}", params).fetchone()[0]
    assert n == len(unknown)
    out = run_cli("search", "--like", indexed["photos"] / "image_0001.jpg", "--where", "label = unknown",
                  "--db", indexed["db"], "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["results"]) == len(unknown) - 1  # all unknowns but the query


def test_classifier_says_which_rule_made_an_image_unknown():
    from imagespace.analysis.classify import fit_classifier
    from imagespace.analysis.labelled import LabelledSet

    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    vecs = np.concatenate([c + 0.05 * rng.normal(size=(6, 8)) for c in centres]).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    data = LabelledSet(paths=[f"{i}" for i in range(12)], labels=["a"] * 6 + ["b"] * 6, vectors=vecs, failed=[])
    clf = fit_classifier(data, cross_validate=False)
    far = np.eye(8, dtype=np.float32)[5:6]  # unlike every example
    near = vecs[:1]
    v_far, v_near = clf.verdicts(np.concatenate([far, near]))
    assert v_far.label == "unknown" and "unlike every example" in v_far.reason
    assert v_near.label == "a" and v_near.reason is None


# -- 7. search --help lists the fields --where accepts -------------------------------------


def test_search_help_lists_where_fields_with_examples():
    out = run_cli("search", "--help", env={"COLUMNS": "200"})
    assert out.returncode == 0
    text = " ".join(out.stdout.replace("│", " ").split())
    for field in ("path", "size", "width", "height", "format", "tag", "label"):
        assert f"{field} " in text or f"{field}," in text, field
    assert "Examples:" in text and "tag = daisy and width >= 1000" in text


# -- 8. info says what a collection is; --version -----------------------------------------


def test_info_shows_folders_model_counts_size_and_last_run(indexed):
    out = run_cli("info", "--db", indexed["db"], "--json")
    doc = json.loads(out.stdout)
    assert doc["folders"] == [str(indexed["photos"])]
    assert doc["images"] == 6 and len(doc["failures"]) == 1
    assert doc["bytes_on_disk"]["total"] >= doc["bytes_on_disk"]["database"] > 0
    assert doc["last_indexed_at"] and doc["last_indexed_at"].startswith("20")
    human = run_cli("info", "--db", indexed["db"]).stdout
    for word in ("folders:", "model:", "images:", "on disk:", "last indexed:"):
        assert word in human
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("imagespace ")


# -- 9. scores explained, weak matches marked ---------------------------------------------


def test_weak_matches_are_marked(capsys, monkeypatch):
    from imagespace.cli._common import print_results

    scores = {"kind": "cosine", "meaning": "cosine similarity", "weak_rule": "weak below 0.47: no closer than ...",
              "weak_below": 0.47}
    print_results([{"path": "/a.jpg", "score": 0.91, "tags": ["x"], "weak": False},
                   {"path": "/b.jpg", "score": 0.31, "tags": ["y"], "weak": True}], scores=scores)
    captured = capsys.readouterr()
    assert "1 of 2 results are weak matches (cosine scores; weak below 0.47" in captured.err
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "What a score means" in readme


# -- 10. errors that say what is wrong; usage errors exit 2 --------------------------------


def test_filter_errors_say_what_is_missing_and_where():
    from imagespace.search import FilterError

    with pytest.raises(FilterError, match="a condition is missing after 'or' at the end"):
        compile_where("tag == daisy or")
    with pytest.raises(FilterError, match="unexpected 'width' at character 14"):
        compile_where("tag == daisy width > 3")
    with pytest.raises(FilterError, match=r"'\(' is never closed"):
        compile_where("(tag = daisy")


def test_usage_errors_exit_2_in_one_line(indexed, tmp_path):
    query = indexed["photos"] / "image_0001.jpg"
    for args in (["--where", "tag == daisy or"], ["--min-score", "2"], ["-k", "0"]):
        out = run_cli("search", query, *args, "--db", indexed["db"])
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("imagespace: usage error:"), out.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    out = run_cli("info", "--db", notes)
    assert out.returncode == 1 and "is a file, not a collection folder" in out.stderr
    assert "imagespace index" not in out.stderr


# -- 11. one limit on k, in the CLI and the API --------------------------------------------


def test_one_limit_on_results_in_cli_and_api(indexed):
    from imagespace.search import MAX_K
    from imagespace.server import create_app

    with Collection(indexed["db"], create=False) as coll:
        some_id = next(coll.all_rows()).id
    with TestClient(create_app(indexed["db"]), base_url="http://127.0.0.1") as client:
        assert client.get(f"/api/images/{some_id}/similar", params={"k": MAX_K}).status_code == 200
        assert client.get(f"/api/images/{some_id}/similar", params={"k": MAX_K + 1}).status_code == 422
    query = indexed["photos"] / "image_0001.jpg"
    assert run_cli("search", query, "-k", MAX_K + 1, "--db", indexed["db"]).returncode == 2
    assert run_cli("search", query, "-k", MAX_K, "--db", indexed["db"], "--json").returncode == 0
