"""The quality targets of the analysis features, on the real flowers12 photos.

The same measurements as ``python -m benchmarks.quality_analysis`` (which prints them all,
on the full duplicate set); here the duplicate set is a smaller slice to keep the run short.
Skipped, saying so, where ../shared/data/flowers12 is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import quality_analysis as qa  # noqa: E402


@pytest.fixture(scope="module")
def coll(flowers12, tmp_path_factory):
    c = qa.index_folder(flowers12, tmp_path_factory.mktemp("f12") / "db")
    assert len(c) == 960
    yield c
    c.close()


def test_classify_test_accuracy(coll, flowers12):
    got = qa.measure_classify(coll, flowers12)
    assert got["test_images"] == 240
    assert got["test_accuracy"] >= 0.95, got
    assert got["cv_accuracy"] >= 0.90, got


def test_clusters_nmi_with_automatic_k(coll):
    got = qa.measure_clusters(coll)
    assert got["nmi"] >= 0.80, got
    assert 8 <= got["k"] <= 20, got


def test_recommend_three_liked_returns_that_species(coll):
    got = qa.measure_recommend(coll, dba=False)  # the default: DBA did not win here
    assert got["mean_hits_of_10"] >= 9.0, got


def test_query_expansion_and_dba_raise_map(coll):
    got = qa.measure_rerank(coll)
    assert got["qe"]["map"] > got["plain"]["map"]
    assert got["dba"]["map"] > got["plain"]["map"]
    assert got["qe+dba"]["map"] > max(got["qe"]["map"], got["dba"]["map"])
    assert got["qe+dba"]["p@1"] >= got["plain"]["p@1"] - 0.01


def test_duplicates_precision_and_recall(tmp_path, flowers12):
    # Three species with same-photo pairs of their own, and 33 edited copies (3 of each edit).
    files = qa.flowers12_files(flowers12, species=["daisy", "dandelion", "iris"])
    got = qa.measure_duplicates(tmp_path, files, copies=33)
    best = got["default (candidates + verification)"]
    assert got["true_pairs"] >= 40
    assert best["precision"] >= 0.95 and best["recall"] >= 0.95, best
    # The point of verification: a cosine threshold alone cannot do both.
    alone = got["cosine>=0.95 only"]
    assert alone["recall"] < best["recall"]


def test_words_find_daisies(coll):
    from imagespace.search import Searcher

    answer = Searcher(coll).query(text="daisies", k=10)
    hits, extra = answer.hits, answer.extra
    assert extra["understood_as"][0]["concept"] == "daisy"
    assert sum(Path(h.path).parent.name == "daisy" for h in hits) >= 9
