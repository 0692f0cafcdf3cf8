"""Search: the same answers as exact numpy search over the stored vectors, --like, -k,
--where filters, --min-score, and clear errors for queries that cannot be answered."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo, run_cli

from imagespace.indexing import sync
from imagespace.index import hnsw as index_mod
from imagespace.search import core as search_mod
from imagespace.collection import DB_FILE, Collection, CollectionError
from imagespace.images import decode
from imagespace.models import DEFAULT_MODEL
from imagespace.search import QueryError, Searcher, compile_where


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, model):
    """A collection of 36 images in two folders, two sizes, two formats, one exact copy."""
    base = tmp_path_factory.mktemp("search")
    a, b = base / "photos" / "a", base / "photos" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for i in range(18):
        make_photo(i, (96, 72)).save(a / f"img_{i:03d}.jpg", quality=90)
    for i in range(18, 34):
        size = (200, 150) if i % 2 else (120, 160)
        make_photo(i, size).save(b / f"img_{i:03d}.png")
    shutil.copy(a / "img_003.jpg", b / "copy_of_003.jpg")
    (base / "photos" / "it's a 'quoted' name.jpg").write_bytes((a / "img_004.jpg").read_bytes())
    queries = base / "queries"
    queries.mkdir()
    for i in range(3):
        make_photo(500 + i, (100, 80)).save(queries / f"q{i}.jpg")
    db = base / "db"
    with Collection(db) as coll:
        report = sync(coll, [str(base / "photos")], model, model_spec=DEFAULT_MODEL, batch_size=16)
        assert report.added == 36 and not report.failed
    return {"db": db, "photos": base / "photos", "a": a, "b": b, "queries": queries, "base": base}


@pytest.fixture
def coll(corpus):
    with Collection(corpus["db"]) as c:
        yield c


def query_vector(model, path) -> np.ndarray:
    """The query embedding computed independently of the Searcher."""
    d = decode(Path(path).read_bytes(), size=model.input_size)
    return model.embed(d.pixels[None]).vectors[0]


class Ranking(list):
    """(id, score) pairs, best first, and the true score of every row for the query."""

    truth: dict[int, float]


def exact(coll, q, k, allowed=None, exclude=()):
    ids, vecs = coll.vectors()
    scores = vecs @ q
    pairs = sorted(zip(ids.tolist(), scores.tolist()), key=lambda p: -p[1])
    pairs = [p for p in pairs if p[0] not in exclude and (allowed is None or p[0] in allowed)]
    out = Ranking(pairs[:k])
    out.truth = dict(zip(ids.tolist(), scores.tolist()))
    return out


def assert_same_ranking(hits, expected):
    """Same ids in the same order and the same scores; images with identical vectors (the
    corpus holds byte-for-byte copies) may come in either order among themselves."""
    assert len(hits) == len(expected)
    assert len({h.id for h in hits}) == len(hits)
    assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    for h, (i, s) in zip(hits, expected):
        assert abs(h.score - expected.truth[h.id]) < 1e-5  # its true cosine similarity
        assert h.id == i or abs(expected.truth[h.id] - s) < 1e-6, f"{h.id} where {i} belongs"


# -- correctness -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 36, 100])
def test_image_query_matches_exact_search(coll, corpus, model, k):
    searcher = Searcher(coll, model)
    for q in [*sorted(corpus["queries"].iterdir()), corpus["a"] / "img_007.jpg", corpus["b"] / "img_020.png"]:
        hits = searcher.query(q, k=k, qe=False).hits  # the index alone: exactly the nearest
        assert len(hits) == min(k, 36)
        assert_same_ranking(hits, exact(coll, query_vector(model, q), k))
        assert all(hits[i].score >= hits[i + 1].score for i in range(len(hits) - 1))


def test_an_indexed_image_finds_itself_with_score_one(coll, corpus, model):
    hits = Searcher(coll, model).query(corpus["a"] / "img_011.jpg", k=3).hits
    assert hits[0].path == str(corpus["a"] / "img_011.jpg")
    assert abs(hits[0].score - 1.0) < 1e-4


def test_hnsw_graph_agrees_with_exact(coll, corpus, model, monkeypatch):
    """Above EXACT_LIMIT the HNSW graph answers. A graph is approximate even on 36 vectors
    (its pruning can leave a node with no way in, and a threaded build differs from run to
    run), so: every hit carries its true cosine, best first, the filter holds, and the graph
    finds almost all of the true neighbours."""
    monkeypatch.setattr(index_mod, "EXACT_LIMIT", 0)
    monkeypatch.setattr(search_mod, "EXACT_LIMIT", 0)
    searcher = Searcher(coll, model)
    allowed = {r.id for r in coll.all_rows() if r.width >= 150}
    found = wanted = 0
    for q in sorted(corpus["queries"].iterdir()):
        v = query_vector(model, q)
        everything = set(exact(coll, v, 1).truth)
        for hits, expected, may in (
            (searcher.query(vector=v, k=10, qe=False).hits, exact(coll, v, 10), everything),
            (searcher.query(vector=v, k=5, where="width >= 150", qe=False).hits, exact(coll, v, 5, allowed), allowed),
        ):
            assert len(hits) == len(expected)
            assert len({h.id for h in hits}) == len(hits)
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)
            for h in hits:
                assert abs(h.score - expected.truth[h.id]) < 1e-5  # its true cosine similarity
            assert {h.id for h in hits} <= may
            # ties between byte-identical copies: count a hit as found if its score is a true top-k score
            top_scores = sorted(s for _, s in expected)
            found += sum(any(abs(h.score - s) < 1e-5 for s in top_scores) for h in hits)
            wanted += len(expected)
    assert found / wanted >= 0.9, f"graph recall {found / wanted:.3f}"


def test_like_excludes_the_query_itself(coll, corpus):
    target = corpus["a"] / "img_003.jpg"
    row = coll.row_by_path(target)
    ids, vecs = coll.vectors([row.id])
    for k in (1, 4, 35, 50):
        hits = Searcher(coll).query(like=target, k=k, qe=False).hits
        assert row.id not in {h.id for h in hits}
        assert len(hits) == min(k, 35)
        assert_same_ranking(hits, exact(coll, vecs[0], k, exclude={row.id}))
    # its byte-for-byte copy is another image and comes first
    assert Searcher(coll).query(like=target, k=1).hits[0].path == str(corpus["b"] / "copy_of_003.jpg")


def test_like_through_the_cli_with_k(coll, corpus):
    target = corpus["b"] / "img_021.png"
    out = run_cli("search", "--like", target, "-k", "4", "--db", corpus["db"], "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert len(results) == 4
    assert str(target) not in [r["path"] for r in results]
    expected = [h.path for h in Searcher(coll).query(like=target, k=4).hits]
    assert [r["path"] for r in results] == expected


def test_min_score(coll, corpus, model):
    q = sorted(corpus["queries"].iterdir())[0]
    v = query_vector(model, q)
    full = exact(coll, v, 36)
    cut = full[5][1]  # the sixth best score: exactly six results reach it
    hits = Searcher(coll, model).query(q, k=20, min_score=cut - 1e-6, qe=False).hits
    assert_same_ranking(hits, exact(coll, v, 6))
    assert all(h.score >= cut - 1e-6 for h in hits)
    # expanded (the default): the same six, as the score is the plain cosine either way
    expanded = Searcher(coll, model).query(q, k=20, min_score=cut - 1e-6).hits
    assert {h.id for h in expanded} == {h.id for h in hits}
    assert Searcher(coll, model).query(q, k=20, min_score=1.01).hits == []
    # through the command line, with --like
    out = run_cli("search", "--like", corpus["a"] / "img_000.jpg", "--min-score", "0.999", "--db", corpus["db"], "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["results"] == []


def test_the_default_expands_image_queries_and_keeps_plain_cosines(coll, corpus, model):
    """A new collection is centred, so an image query is expanded with its nearest images
    (alpha-QE): the expanded query orders the answer, and each score stays the plain cosine
    between the query and the image (what --min-score and the weak line read)."""
    from imagespace.vector_pipeline import CENTRED_QE_ALPHA, CENTRED_QE_NEIGHBOURS

    assert coll.pipeline.expands_by_default
    ids, vecs = coll.vectors()
    for q in sorted(corpus["queries"].iterdir()):
        v = query_vector(model, q)
        hits = Searcher(coll, model).query(vector=v, k=36).hits
        truth = exact(coll, v, 36).truth
        assert sorted(h.id for h in hits) == sorted(truth)
        assert all(abs(h.score - truth[h.id]) < 1e-5 for h in hits)
        plain = vecs @ v
        near = np.argsort(-plain, kind="stable")[:CENTRED_QE_NEIGHBOURS]
        expanded = v + ((np.maximum(plain[near], 0) ** CENTRED_QE_ALPHA)[:, None] * vecs[near]).sum(0)
        by_expanded = dict(zip(ids.tolist(), (vecs @ (expanded / np.linalg.norm(expanded))).tolist()))
        order = [by_expanded[h.id] for h in hits]
        assert all(a >= b - 1e-5 for a, b in zip(order, order[1:])), order
        plain_order = [h.id for h in Searcher(coll, model).query(vector=v, k=36, qe=False).hits]
        assert plain_order == [int(i) for i in ids[np.argsort(-plain, kind="stable")]] or np.allclose(
            sorted(plain, reverse=True), [truth[i] for i in plain_order], atol=1e-6)


# -- filters -----------------------------------------------------------------------------------


def rows_matching(coll, predicate) -> set[int]:
    return {r.id for r in coll.all_rows() if predicate(r)}


def tagged(r, tag):
    return any(t.lower() == tag.lower() for t, _ in r.tags)


def filter_cases(coll, corpus):
    some_tag = next(coll.all_rows()).tags[0][0]  # a tag that at least one image has
    part = some_tag.split()[0][:3]
    b = str(corpus["b"])
    return [
        (f"tag = '{some_tag}'", lambda r: tagged(r, some_tag)),
        (f"tag = \"{some_tag.upper()}\"", lambda r: tagged(r, some_tag)),
        (f"tag != '{some_tag}'", lambda r: not tagged(r, some_tag)),
        (f"tag ~ '{part}'", lambda r: any(part.lower() in t.lower() for t, _ in r.tags)),
        (f"path like '{b}/%'", lambda r: r.path.startswith(b + "/")),
        ("path like '%copy%'", lambda r: "copy" in r.path),
        (f"path glob '{b}/*.png'", lambda r: r.path.startswith(b + "/") and r.path.endswith(".png")),
        ("path ~ 'IMG_01'", lambda r: "img_01" in r.path.lower()),
        ("width >= 150", lambda r: r.width >= 150),
        ("width>=150", lambda r: r.width >= 150),
        ("width = 96 and height = 72", lambda r: r.width == 96 and r.height == 72),
        ("width < 100 or height > 155", lambda r: r.width < 100 or r.height > 155),
        ("not width < 100", lambda r: not r.width < 100),
        ("NOT (width < 100 OR height > 155)", lambda r: not (r.width < 100 or r.height > 155)),
        (
            f"(width > 150 or path like '%copy%') and not tag = '{some_tag}'",
            lambda r: (r.width > 150 or "copy" in r.path) and not tagged(r, some_tag),
        ),
        ("width > 100 and (height < 155 or format = JPEG)", lambda r: r.width > 100 and (r.height < 155 or r.format == "JPEG")),
        ("format = PNG", lambda r: r.format == "PNG"),
        ("size > 0", lambda r: r.size > 0),
        ("size < 1", lambda r: False),
        ("path = \"" + str(corpus["photos"] / "it's a 'quoted' name.jpg") + "\"", lambda r: "quoted" in r.path),
        ("path = '" + str(corpus["photos"] / "it''s a ''quoted'' name.jpg") + "'", lambda r: "quoted" in r.path),
    ]


def test_where_filters(coll, corpus, model):
    searcher = Searcher(coll, model)
    v = query_vector(model, sorted(corpus["queries"].iterdir())[1])
    for expr, predicate in filter_cases(coll, corpus):
        allowed = rows_matching(coll, predicate)
        hits = searcher.query(vector=v, k=100, where=expr, qe=False).hits
        assert {h.id for h in hits} == allowed, expr
        assert_same_ranking(hits, exact(coll, v, 100, allowed))
        top3 = searcher.query(vector=v, k=3, where=expr, qe=False).hits
        assert_same_ranking(top3, exact(coll, v, 3, allowed))
    # at least some filters really cut the collection down, and not all to nothing
    sizes = {expr: len(rows_matching(coll, p)) for expr, p in filter_cases(coll, corpus)}
    assert 0 < sizes["width >= 150"] < 36 and 0 < sizes["format = PNG"] < 36


def test_where_with_like(coll, corpus):
    target = corpus["a"] / "img_005.jpg"
    hits = Searcher(coll).query(like=target, k=50, where="path like '%/a/%'").hits
    assert len(hits) == 17 and all("/a/" in h.path for h in hits)
    assert str(target) not in {h.path for h in hits}


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "   ",
        "widht > 3",
        "width >",
        "width 3",
        "(width > 3",
        "width > 3)",
        "width >> 3",
        "width > abc",
        "width > 3 and",
        "and width > 3",
        "1 = 1",
        "tag = daisy; DROP TABLE images",
        "tag = daisy --",
        "path = 'unterminated",
        "width > 3 or 1=1",
        "id > 0",
        "embedding like '%'",
        "images.path = 'x'",
        "()",
        "(" * 5000 + "width > 3" + ")" * 5000,
        "not " * 5000 + "width > 3",
    ],
)
def test_bad_filters_give_a_clear_error(coll, corpus, expr):
    with pytest.raises(QueryError) as err:
        compile_where(expr)
    assert "filter" in str(err.value)
    if not expr:
        return  # an empty --where means no filter to the searcher
    with pytest.raises(QueryError):
        Searcher(coll).query(like=corpus["a"] / "img_001.jpg", where=expr).hits


@pytest.mark.parametrize(
    "expr",
    [
        "path = \"x' OR '1'='1\"",
        "path = 'x'' OR ''1''=''1'",
        "tag = \"x') OR 1=1 --\"",
        "path = \"'; DROP TABLE images; --\"",
        "tag ~ \"')) OR 1=1 --\"",
    ],
)
def test_no_sql_injection(coll, corpus, expr):
    sql, params = compile_where(expr)
    assert "DROP" not in sql and "1=1" not in sql and "OR '1'" not in sql  # values are bound parameters
    hits = Searcher(coll).query(like=corpus["a"] / "img_001.jpg", k=100, where=expr).hits
    assert hits == []
    with closing(sqlite3.connect(corpus["db"] / DB_FILE)) as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 36


def test_bad_filter_on_the_command_line(corpus):
    out = run_cli("search", "--like", corpus["a"] / "img_001.jpg", "--where", "widht > 3", "--db", corpus["db"], "--json")
    assert out.returncode == 2  # a usage error, as the README says
    assert out.stdout == ""
    assert "filter" in out.stderr and "widht" in out.stderr
    assert "Traceback" not in out.stderr


# -- queries that cannot be answered -------------------------------------------------------------


def test_unreadable_query_image_is_a_clear_error(coll, corpus, model, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((corpus["a"] / "img_001.jpg").read_bytes()[:300])
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for bad in (text, cut, folder, tmp_path / "missing.jpg"):
        with pytest.raises(QueryError, match="cannot read query image"):
            Searcher(coll, model).query(bad).hits
        out = run_cli("search", bad, "--db", corpus["db"], "--json")
        assert out.returncode == 1, (bad, out.stderr)
        assert out.stdout == ""
        assert "cannot read query image" in out.stderr and str(bad) in out.stderr
        assert "Traceback" not in out.stderr


def test_like_a_path_not_in_the_collection(coll, corpus):
    with pytest.raises(QueryError, match="not in the collection"):
        Searcher(coll).query(like=corpus["queries"] / "q0.jpg").hits
    out = run_cli("search", "--like", corpus["queries"] / "q0.jpg", "--db", corpus["db"])
    assert out.returncode == 1 and "not in the collection" in out.stderr and "Traceback" not in out.stderr


def test_empty_collection_is_a_clear_error(tmp_path, model, corpus):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    db = tmp_path / "db"
    out = run_cli("index", empty, "--db", db, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["added"] == 0
    with Collection(db) as coll:
        with pytest.raises(CollectionError, match="empty"):
            Searcher(coll, model)
    q = corpus["queries"] / "q0.jpg"
    out = run_cli("search", q, "--db", db, "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert "empty" in out.stderr and "Traceback" not in out.stderr
    # a collection folder that was never made at all
    out = run_cli("search", q, "--db", tmp_path / "never-made", "--json")
    assert out.returncode == 1 and "no collection" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "never-made").exists()  # a search does not create a collection


def test_collection_emptied_by_removal(tmp_path, model):
    folder = tmp_path / "p"
    folder.mkdir()
    make_photo(1).save(folder / "one.jpg")
    with Collection(tmp_path / "db") as coll:
        sync(coll, [str(folder)], model, model_spec=DEFAULT_MODEL)
        assert len(Searcher(coll, model).query(folder / "one.jpg").hits) == 1
        (folder / "one.jpg").unlink()
        assert sync(coll, [str(folder)], model, model_spec=DEFAULT_MODEL).removed == 1
        with pytest.raises(CollectionError, match="empty"):
            Searcher(coll, model)


def test_query_vector_of_the_wrong_size(coll):
    with pytest.raises(QueryError, match="dimensions"):
        Searcher(coll).query(vector=np.ones(10, np.float32)).hits
