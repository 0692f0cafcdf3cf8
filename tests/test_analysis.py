"""Analysis commands end to end on small collections made here: duplicates, clusters,
recommend, classify, map, eval, search by words, QE/DBA; and their bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from conftest import run_cli

from imagespace.indexing import sync
from imagespace.collection import Collection
from imagespace.models import DEFAULT_MODEL, create_model


def json_of(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def failed_cleanly(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in out.stderr, out.stderr


def textured(seed: int, size=(320, 240)) -> Image.Image:
    """A synthetic photo with many corners (rectangles, polygons, lines): local features find it."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    w, h = size
    for _ in range(40):
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        kind = rng.integers(0, 3)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            d.rectangle((x0, y0, x0 + int(rng.integers(8, 60)), y0 + int(rng.integers(8, 60))), fill=colour)
        elif kind == 1:
            d.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)], fill=colour)
        else:
            d.line((x0, y0, int(rng.integers(0, w)), int(rng.integers(0, h))), fill=colour, width=3)
    return im


def index(folder: Path, db: Path) -> Collection:
    coll = Collection(db, create=True)
    sync(coll, [str(folder)], create_model(DEFAULT_MODEL), model_spec=DEFAULT_MODEL)
    return coll


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Eight distinct photos, edited copies of two of them, and a labelled folder of two kinds."""
    base = tmp_path_factory.mktemp("analysis")
    photos = base / "photos"
    photos.mkdir()
    for i in range(8):
        textured(i).save(photos / f"photo_{i}.jpg", quality=92)
    src = textured(0)
    ImageOps.mirror(src).save(photos / "photo_0_mirrored.jpg", quality=85)
    src.crop((24, 18, 320, 240)).save(photos / "photo_0_cropped.jpg", quality=85)
    ImageEnhance.Brightness(src).enhance(1.3).save(photos / "photo_0_brighter.png")
    textured(1).resize((480, 360)).save(photos / "photo_1_larger.jpg", quality=70)
    labelled = base / "labelled"
    for cls, seeds in (("textures", range(100, 106)), ("gradients", range(200, 206))):
        (labelled / cls).mkdir(parents=True)
        for s in seeds:
            img = textured(s) if cls == "textures" else _gradient(s)
            img.save(labelled / cls / f"{cls}_{s}.jpg", quality=90)
    db = base / "db"
    index(photos, db).close()
    empty = base / "empty-db"
    Collection(empty, create=True).close()
    return {"base": base, "photos": photos, "db": db, "labelled": labelled, "empty": empty}


def _gradient(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    a, b = rng.uniform(-1, 1, (2, 3))
    img = np.stack([rng.uniform(0, 255) + a[c] * x * 0.5 + b[c] * y * 0.5 for c in range(3)], -1)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


# -- duplicates ---------------------------------------------------------------------------


def test_duplicates_groups_edited_copies_and_lists_extras(small, tmp_path):
    listing = tmp_path / "extra.txt"
    doc = json_of(run_cli("duplicates", "--db", small["db"], "--json", "--list-out", listing))
    p = small["photos"]
    groups = sorted(sorted(Path(x).name for x in g) for g in doc["groups"])
    assert groups == [
        ["photo_0.jpg", "photo_0_brighter.png", "photo_0_cropped.jpg", "photo_0_mirrored.jpg"],
        ["photo_1.jpg", "photo_1_larger.jpg"],
    ]
    # The largest image of each group comes first and is the one kept.
    by_first = {Path(g[0]).name for g in doc["groups"]}
    assert "photo_1_larger.jpg" in by_first
    # One line per copy not kept: its path, the kept file it copies, why.
    lines = [line.split("\t") for line in listing.read_text().splitlines()]
    extras = [fields[0] for fields in lines]
    assert all(len(fields) == 3 and fields[1] == g[0] for fields in lines for g in doc["groups"] if fields[0] in g)
    assert len(extras) == 4 and all(Path(e).exists() for e in extras), "a listed copy was deleted"
    assert str(p / "photo_1_larger.jpg") not in extras


def test_duplicates_library_without_verification_is_stricter(small):
    from imagespace.analysis.duplicates import duplicate_report, find_duplicates

    with Collection(small["db"], create=False) as coll:
        verified = find_duplicates(coll)
        plain = find_duplicates(coll, threshold=0.999, verify=False)
        report = duplicate_report(coll)
    assert all(len(g) >= 2 for g in verified)
    flat = [i for g in verified for i in g]
    assert len(flat) == len(set(flat)), "an image in two groups"
    assert sum(len(g) for g in plain) < sum(len(g) for g in verified)
    assert report.stats["candidate_pairs"] >= report.stats["copy_pairs"] >= 1


# -- clusters -----------------------------------------------------------------------------


def test_clusters_cover_every_image_once(small):
    doc = json_of(run_cli("clusters", "--db", small["db"], "--json", "-k", "3"))
    assert len(doc["clusters"]) <= 3
    seen = [p for c in doc["clusters"] for p in c["paths"]] + doc["outliers"]
    assert sorted(seen) == sorted(str(p) for p in small["photos"].iterdir())
    for c in doc["clusters"]:
        assert set(c) >= {"id", "label", "paths"} and c["label"] and c["paths"]
    auto = json_of(run_cli("clusters", "--db", small["db"], "--json"))
    assert auto["k_chosen_automatically"] is True and auto["k"] >= 1


def test_cluster_labels_come_from_member_tags(small):
    from imagespace.analysis.clusters import cluster_collection

    with Collection(small["db"], create=False) as coll:
        result = cluster_collection(coll, k=2)
        tags = {r.id: {t for t, _ in r.tags} for r in coll.all_rows()}
    for c in result.clusters:
        first = c.label.split(" (")[0].split(", ")[0]
        assert any(first in tags[i] for i in c.ids), (c.label, [tags[i] for i in c.ids])


# -- recommend ----------------------------------------------------------------------------


def test_recommend_excludes_inputs(small):
    p = small["photos"]
    doc = json_of(run_cli("recommend", "--db", small["db"], "--json", "--like", p / "photo_0.jpg", "--unlike", p / "photo_2.jpg", "-k", "5"))
    got = [Path(r["path"]).name for r in doc["results"]]
    assert 1 <= len(got) <= 5
    assert "photo_0.jpg" not in got and "photo_2.jpg" not in got
    # The edited copies of the liked photo are the most like it (only files saved twice, at
    # cosine >= 0.97, count as the input itself and are left out).
    assert got[0].startswith("photo_0_"), got
    assert all(set(r) >= {"path", "score"} for r in doc["results"])


def test_recommend_unknown_path_fails_cleanly(small):
    out = run_cli("recommend", "--db", small["db"], "--json", "--like", small["base"] / "not-there.jpg")
    failed_cleanly(out, "not in the collection", "not-there.jpg")
    assert out.stdout == ""


def test_commands_on_an_empty_collection_fail_cleanly(small, tmp_path):
    for args in (("clusters",), ("duplicates",), ("map", "--out", tmp_path / "m.png"), ("classify", "--train", small["labelled"])):
        failed_cleanly(run_cli(*args, "--db", small["empty"], "--json"), "empty")


# -- classify and eval -----------------------------------------------------------------------


def test_classify_labels_every_image(small):
    doc = json_of(run_cli("classify", "--db", small["db"], "--json", "--train", small["labelled"]))
    assert doc["classes"] == ["gradients", "textures"]
    assert len(doc["predictions"]) == len(list(small["photos"].iterdir()))
    assert 0.0 <= doc["cv_accuracy"] <= 1.0
    labels = {Path(p["path"]).name: p["label"] for p in doc["predictions"]}
    assert set(labels.values()) <= {"gradients", "textures", "unknown"}
    # The photos are textures: none should be called a gradient.
    assert "gradients" not in labels.values(), labels


def test_classify_says_unknown_far_from_every_example(small):
    from imagespace.analysis.classify import classify_collection, train_classifier

    with Collection(small["db"], create=False) as coll:
        clf = train_classifier(coll, small["labelled"])
        clf.min_similarity = 1.01  # nothing is that close: everything must be unknown
        assert {p.label for p in classify_collection(coll, clf)} == {"unknown"}


@pytest.mark.parametrize("layout", ["one class", "empty class", "no folder"])
def test_classify_refuses_folders_that_cannot_teach(small, tmp_path, layout):
    train = tmp_path / "train"
    (train / "cats").mkdir(parents=True)
    textured(1).save(train / "cats" / "a.jpg")
    textured(2).save(train / "cats" / "b.jpg")
    if layout == "empty class":
        (train / "dogs").mkdir()
    if layout == "no folder":
        train = tmp_path / "missing"
    out = run_cli("classify", "--db", small["db"], "--json", "--train", train)
    failed_cleanly(out, {"one class": "at least two", "empty class": "dogs", "no folder": "not a folder"}[layout])


def test_eval_reports_metrics(small):
    doc = json_of(run_cli("eval", "--db", small["db"], "--json", "--data", small["labelled"]))
    for key in ("precision_at_1", "map", "knn_accuracy", "nmi"):
        assert 0.0 <= doc[key] <= 1.0, (key, doc)
    assert doc["images"] == 12 and doc["classes"] == 2
    # Textures and smooth gradients are easy to tell apart.
    assert doc["precision_at_1"] >= 0.9


# -- map ----------------------------------------------------------------------------------


def test_map_png_and_html(small, tmp_path):
    png = json_of(run_cli("map", "--db", small["db"], "--json", "--out", tmp_path / "atlas.png"))
    with Image.open(png["out"]) as im:
        assert im.format == "PNG" and im.width >= 64
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10, "no thumbnails drawn"
    html = json_of(run_cli("map", "--db", small["db"], "--json", "--out", tmp_path / "atlas.html"))
    text = Path(html["out"]).read_text()
    assert text.count("<img") == len(list(small["photos"].iterdir())) and "photo_3.jpg" in text
    bad = run_cli("map", "--db", small["db"], "--json", "--out", tmp_path / "atlas.gif")
    failed_cleanly(bad, ".png or .html")


def test_layout_handles_tiny_and_sampled_collections(small):
    from imagespace.analysis.maps import layout

    with Collection(small["db"], create=False) as coll:
        ids, xy = layout(coll, max_points=3)
    assert len(ids) == 3 and xy.shape == (3, 2) and (xy >= 0).all() and (xy <= 1).all()


def test_exact_neighbours_handed_to_umap():
    """The neighbour graph the map gives UMAP: each point first (distance 0), then its true
    nearest by cosine, across the blocks it is computed in."""
    from imagespace.analysis.maps import _exact_knn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2100, 8)).astype(np.float32)  # two blocks of 2,048 and 52 rows
    idx, dist, _ = _exact_knn(x, 5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, np.inf)
    want = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert (idx[:, 0] == np.arange(len(x))).all() and (dist[:, 0] == 0).all()
    assert (idx == want).mean() > 0.999  # ties between equal cosines may order either way
    got = 1 - np.take_along_axis(np.where(np.isinf(sims), 1.0, sims), idx, 1)
    np.testing.assert_allclose(dist[:, 1:], got[:, 1:], atol=1e-5)
    assert (np.diff(dist, axis=1) >= -1e-6).all()


# -- QE and DBA -----------------------------------------------------------------------------


def test_dba_cache_follows_the_collection(small, tmp_path):
    import shutil

    from imagespace.search.rerank import dba_space
    from imagespace.search import Searcher

    db = tmp_path / "db"
    shutil.copytree(small["db"], db)
    with Collection(db, create=False) as coll:
        first = dba_space(coll)
        searcher = Searcher(coll)
        row = coll.row_by_path(small["photos"] / "photo_3.jpg")
        hits = searcher.query(vector=coll.vectors([row.id])[1][0], k=3, exclude={row.id}, qe=True, dba=True).hits
        assert len(hits) == 3 and row.id not in {h.id for h in hits}
        plain = searcher.query(vector=coll.vectors([row.id])[1][0], k=3, exclude={row.id}, qe=False, dba=False).hits
        assert len(plain) == 3
    extra = tmp_path / "more"
    extra.mkdir()
    textured(50).save(extra / "new.jpg")
    coll = index(extra, db)
    with coll:
        second = dba_space(coll)
    assert second.seq != first.seq and len(second.ids) == len(first.ids) + 1


def test_search_with_qe_and_dba_from_the_command_line(small):
    p = small["photos"]
    doc = json_of(run_cli("search", "--db", small["db"], "--json", "--like", p / "photo_3.jpg", "--qe", "--dba", "-k", "4"))
    got = [Path(r["path"]).name for r in doc["results"]]
    assert len(got) == 4 and "photo_3.jpg" not in got


# -- search by words --------------------------------------------------------------------------


def test_words_that_match_nothing_fail_cleanly(small):
    out = run_cli("search", "--db", small["db"], "--json", "--text", "xqzv blorp")
    failed_cleanly(out, "match none")


def test_words_are_understood_as_imagenet_concepts(small):
    from imagespace.search import Searcher

    with Collection(small["db"], create=False) as coll:
        answer = Searcher(coll).query(text="sports car", k=4)
    hits, extra = answer.hits, answer.extra
    assert extra["understood_as"][0]["concept"] == "sports car"
    assert len(hits) == 4


def test_clip_text_model_from_a_local_folder(small, tmp_path):
    transformers = pytest.importorskip("transformers")
    from imagespace.search import Searcher

    folder = tmp_path / "tiny-clip"
    _tiny_clip(transformers, folder)
    with Collection(small["db"], create=False) as coll:
        answer = Searcher(coll).query(text="a red flower", text_model=folder, k=3)
        hits, extra = answer.hits, answer.extra
        again = Searcher(coll).query(text="a red flower", text_model=folder, k=3).hits
    assert len(hits) == 3 and extra["understood_as"][0]["concept"] == "a red flower"
    assert [h.id for h in hits] == [h.id for h in again]  # cached image vectors, same answer
    assert list(small["db"].glob("clip-*.npz")), "image vectors were not cached"


def _tiny_clip(transformers, folder: Path) -> None:
    """A randomly initialised CLIP with a ten-word vocabulary, saved as a local folder."""
    folder.mkdir()
    words = ["a", "red", "flower", "photo", "of"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for w in words:
        vocab[w + "</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "projection_dim": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "projection_dim": 16},
        projection_dim=16,
    )
    transformers.CLIPModel(config).eval().save_pretrained(folder)
