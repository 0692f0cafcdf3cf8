"""Copies, retakes and look-alikes told apart (images made here; one test on flowers12).

The figures on a whole data set come from ``python -m benchmarks.duplicate_tiers``; these
tests pin the behaviour a user relies on: a retake or a look-alike is never called a copy,
the original is the one kept, and ``--list-out`` lists only copies that are not kept.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from imagespace.analysis.copies import FeatureMaker, PairChecker
from imagespace.analysis.synthetic import exif_for, retake
from imagespace.images import CaptureFacts, capture_facts, load_pil

CAMERA = ("Canon", "EOS 80D")
T0 = 1_700_000_000.25
T0_NS = 1_700_000_000 * 10**9


def scene(seed: int, size=(640, 480)) -> Image.Image:
    """A synthetic photo with many corners and some texture: local features find it."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-0.1, 0.1) * x + rng.uniform(-0.1, 0.1) * y for _ in range(3)], -1)
    im = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(70):
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.rectangle((x0, y0, x0 + int(rng.integers(10, 90)), y0 + int(rng.integers(10, 90))), fill=colour)
        elif kind == 1:
            d.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)], fill=colour)
        else:
            d.line((x0, y0, int(rng.integers(0, w)), int(rng.integers(0, h))), fill=colour, width=4)
    return im


def features(im: Image.Image):
    return FeatureMaker()(np.asarray(im.convert("L")), im.size)


def verdict(a: Image.Image, b: Image.Image, facts_a=None, facts_b=None):
    return PairChecker().compare(features(a), features(b), facts_a, facts_b)


# -- capture facts --------------------------------------------------------------------------


def test_capture_facts_read_exif_time_camera_and_jpeg_quality(tmp_path):
    im = scene(0, (96, 72))
    im.save(tmp_path / "a.jpg", quality=95, exif=exif_for(CAMERA, T0))
    im.save(tmp_path / "b.jpg", quality=40)
    im.save(tmp_path / "c.png")
    a, b, c = (capture_facts(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.png"))
    assert a.taken == pytest.approx(T0, abs=0.005) and a.camera == "Canon EOS 80D" and a.jpeg_quality == 95
    assert b.taken is None and b.camera is None and b.jpeg_quality == 40
    assert c == CaptureFacts()
    assert capture_facts(tmp_path / "missing.jpg") == CaptureFacts()


# -- the pair classifier --------------------------------------------------------------------


@pytest.mark.parametrize("edit", ["crop_brighter", "mirror", "rotate", "border", "shrink_recompress"])
def test_edited_copies_are_copies(edit):
    src = scene(1)
    edited = {
        "crop_brighter": lambda im: ImageEnhance.Brightness(im.crop((60, 40, 600, 460))).enhance(1.3),
        "mirror": ImageOps.mirror,
        "rotate": lambda im: im.rotate(6, resample=Image.Resampling.BICUBIC),
        "border": lambda im: ImageOps.expand(im, border=30, fill=(255, 255, 255)),
        "shrink_recompress": lambda im: im.resize((320, 240), Image.Resampling.LANCZOS),
    }[edit](src)
    v = verdict(src, edited)
    assert v.tier == "copy", v
    assert v.reason.startswith("one picture") and v.inliers >= 20


def test_retake_is_not_a_copy_even_without_exif():
    src = scene(2)
    again = retake(src, random.Random(3))
    v = verdict(src, again)
    assert v.tier == "retake", v
    assert v.residual > 1.45 or v.agreement < 0.85


def test_exif_capture_times_make_a_retake():
    src = scene(4)
    same = src.resize((600, 450))
    a, b = CaptureFacts(T0, "Canon EOS 80D"), CaptureFacts(T0 + 1.0, "Canon EOS 80D")
    assert verdict(src, same, a, a).tier == "copy"
    v = verdict(src, same, a, b)
    assert v.tier == "retake" and "1.00 s apart" in v.reason, v


def test_a_different_photo_is_only_similar():
    v = verdict(scene(5), scene(6))
    assert v.tier == "similar" and v.inliers < 20, v


def test_flowers12_copies_and_retakes(flowers12):
    """Real photos: edits of a flower photo are copies, a second view is a retake, other
    photos of the same species are neither."""
    files = sorted((flowers12 / "train" / "daisy").glob("*.jpg"))[:3]
    photos = [load_pil(f) for f in files]
    r = random.Random(0)
    src = photos[0]
    assert verdict(src, ImageOps.mirror(ImageEnhance.Color(src).enhance(1.6))).tier == "copy"
    assert verdict(src, src.crop((30, 20, src.width - 30, src.height - 20))).tier == "copy"
    assert verdict(src, retake(src, r)).tier == "retake"
    assert all(verdict(src, other).tier == "similar" for other in photos[1:])


# -- the command: what a user acts on --------------------------------------------------------


def run_cli(*args) -> dict:
    env = dict(os.environ, IMAGESPACE_THREADS="2")
    env.pop("IMAGESPACE_DB", None)
    out = subprocess.run([sys.executable, "-m", "imagespace", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """One camera original with three edited copies, a retake of it, a look-alike, and others."""
    base = tmp_path_factory.mktemp("tiers")
    photos = base / "photos"
    photos.mkdir()
    src = scene(10)
    src.save(photos / "original.jpg", quality=92, exif=exif_for(CAMERA, T0))
    # The case: brightened and mirrored, saved as PNG (the bigger file), no EXIF.
    ImageOps.mirror(ImageEnhance.Brightness(src).enhance(1.25)).save(photos / "edit_mirrored.png")
    ImageOps.expand(src, border=24, fill=(0, 0, 0)).save(photos / "edit_border.jpg", quality=90)
    src.crop((50, 40, 590, 440)).save(photos / "edit_crop.jpg", quality=90)
    retake(src, random.Random(11)).save(photos / "retake.jpg", quality=92, exif=exif_for(CAMERA, T0 + 1.2))
    scene(12).save(photos / "lookalike.jpg", quality=92, exif=exif_for(CAMERA, T0 + 60))
    for i in range(13, 17):
        scene(i).save(photos / f"other_{i}.jpg", quality=92)
    db = base / "db"
    run_cli("index", photos, "--db", db, "--json")
    return {"photos": photos, "db": db, "base": base}


def test_copies_grouped_original_kept_retake_apart(collection):
    listing = collection["base"] / "listed.tsv"
    doc = run_cli("duplicates", "--db", collection["db"], "--json", "--list-out", listing)
    names = lambda g: [Path(p).name for p in g]  # noqa: E731
    assert [names(g)[0] for g in doc["groups"]] == ["original.jpg"], doc["groups"]
    assert sorted(names(doc["groups"][0])[1:]) == ["edit_border.jpg", "edit_crop.jpg", "edit_mirrored.png"]
    assert any({"original.jpg", "retake.jpg"} <= set(names(g)) for g in doc["retakes"]), doc["retakes"]
    # Every listed file is a copy not kept, with the file it copies and why.
    listed = [line.split("\t") for line in listing.read_text().splitlines()]
    assert sorted(Path(p).name for p, _, _ in listed) == ["edit_border.jpg", "edit_crop.jpg", "edit_mirrored.png"]
    assert all(Path(kept).name == "original.jpg" and why for _, kept, why in listed)
    assert all(Path(p).exists() for p, _, _ in listed), "nothing is deleted"
    details = {Path(m["path"]).name: m for g in doc["details"] for m in g["members"]}
    assert "border" in details["edit_border.jpg"]["reason"] and "crop" in details["edit_crop.jpg"]["reason"]
    assert details["edit_crop.jpg"]["similarity"] is not None and details["edit_crop.jpg"]["score"] > 0.8
    # A second run reuses the verdicts kept beside the collection, with the same answer.
    again = run_cli("duplicates", "--db", collection["db"], "--json")
    assert again["stats"]["cached_pairs"] == doc["stats"]["verified_pairs"] > 0
    assert again["stats"]["verified_pairs"] == 0 and again["groups"] == doc["groups"] and again["retakes"] == doc["retakes"]


def test_tier_option_filters(collection):
    retakes = run_cli("duplicates", "--db", collection["db"], "--json", "--tier", "retake")
    assert retakes["groups"] == [] and retakes["retakes"]
    assert {g["tier"] for g in retakes["details"]} == {"retake"}
    copies = run_cli("duplicates", "--db", collection["db"], "--json", "--tier", "copy")
    assert copies["retakes"] == [] and len(copies["groups"]) == 1


def test_features_come_from_indexing_and_are_kept_with_the_same_verdicts(tmp_path):
    """Large JPEGs: indexing keeps the grey image it decoded anyway, the duplicate pass uses it
    instead of decoding again and keeps the features it computed; every way gives the same
    verdicts as decoding the files afresh."""
    from imagespace.analysis.duplicates import duplicate_report
    from imagespace.collection import Collection
    from imagespace.feature_store import FILE_NAME
    from imagespace.analysis.pair_cache import FILE_NAME as PAIRS_FILE

    photos = tmp_path / "photos"
    photos.mkdir()
    big = (1000, 750)  # decodes at 1/2 (500x375) for the model and for verification alike
    src = scene(21, big)
    src.save(photos / "original.jpg", quality=90)
    ImageEnhance.Brightness(src).enhance(1.2).save(photos / "brighter.jpg", quality=85)
    retake(src, random.Random(3)).save(photos / "retake.jpg", quality=90)
    for i in range(22, 24):
        scene(i, big).save(photos / f"other_{i}.jpg", quality=90)
    db = tmp_path / "db"
    run_cli("index", photos, "--db", db, "--json")
    assert (db / FILE_NAME).is_file()

    def verdicts():
        with Collection(db, create=False) as coll:
            report = duplicate_report(coll)
            path = {r.id: Path(r.path).name for r in coll.all_rows()}
        found = {tuple(sorted((path[a], path[b]))): (p.verdict.tier, round(p.verdict.score, 6), p.verdict.inliers)
                 for (a, b), p in report.pairs.items()}
        return found, report.stats

    seeded, stats = verdicts()
    assert stats["images_grey_from_indexing"] == stats["images_with_features"] > 0, stats
    assert seeded[("brighter.jpg", "original.jpg")][0] == "copy" and seeded[("original.jpg", "retake.jpg")][0] == "retake"
    (db / PAIRS_FILE).unlink()  # verdicts forgotten: compared again from the kept features
    kept, stats = verdicts()
    assert kept == seeded and stats["images_with_features"] == 0 and stats["images_features_stored"] > 0, stats
    (db / PAIRS_FILE).unlink()
    (db / FILE_NAME).unlink()  # nothing kept: every file decoded again
    fresh, stats = verdicts()
    assert fresh == seeded and stats["images_grey_from_indexing"] == 0 and stats["images_with_features"] > 0, stats


def test_a_pass_beyond_its_memory_computes_no_image_twice_and_keeps_the_store_bounded(tmp_path, monkeypatch):
    """Memory for one image's features only, a store of 150 KB: what leaves memory comes back
    from the pass's scratch file (never computed twice), the verdicts are those of a pass with
    room for all, the store ends within its limit with the newest features, and the scratch
    file leaves nothing behind."""
    from functools import partial

    from imagespace.analysis import duplicates
    from imagespace.analysis.duplicates import duplicate_report
    from imagespace.analysis.pair_cache import FILE_NAME as PAIRS_FILE
    from imagespace.collection import Collection
    from imagespace.feature_store import FILE_NAME, FeatureStore

    photos = tmp_path / "photos"
    photos.mkdir()
    src = scene(31, (480, 360))
    src.save(photos / "original.jpg", quality=90)
    ImageEnhance.Brightness(src).enhance(1.2).save(photos / "brighter.jpg", quality=85)
    retake(src, random.Random(5)).save(photos / "retake.jpg", quality=90)
    for i in range(32, 35):
        scene(i, (480, 360)).save(photos / f"other_{i}.jpg", quality=90)
    db = tmp_path / "db"
    run_cli("index", photos, "--db", db, "--json")
    own = {p.name for p in db.iterdir()} | {PAIRS_FILE, FILE_NAME} | {f"{n}-{s}" for n in (PAIRS_FILE, FILE_NAME) for s in ("wal", "shm")}

    def run():
        (db / PAIRS_FILE).unlink(missing_ok=True)
        (db / FILE_NAME).unlink(missing_ok=True)
        with Collection(db, create=False) as coll:
            report = duplicate_report(coll)
        return {k: (p.verdict.tier, p.verdict.inliers) for k, p in report.pairs.items()}, report.stats

    roomy, _ = run()
    monkeypatch.setattr(duplicates, "_CACHE_BYTES", 1)
    monkeypatch.setattr(duplicates, "FeatureStore", partial(FeatureStore, limit_bytes=150_000))
    tight, stats = run()
    assert tight == roomy and any(t == "copy" for t, _ in tight.values()), tight
    assert stats["images_with_features"] == 6 and stats["images_features_stored"] > 0, stats
    store = FeatureStore(db, limit_bytes=150_000)
    assert 0 < store.total <= 150_000, store.total
    store.close()
    assert {p.name for p in db.iterdir()} <= own  # the scratch file left nothing beside them


def test_plain_small_copy_falls_back_to_the_global_vectors(tmp_path):
    """A small smooth picture saved again has too few local features to verify: at cosine
    >= 0.99 it is still a copy (the earlier behaviour), with a reason that says so."""
    from imagespace.analysis.duplicates import duplicate_report

    folder = tmp_path / "photos"
    folder.mkdir()
    from conftest import make_photo

    # 64x48: ORB finds no points at all in it, even enlarged to 320 px. The same pixels in
    # two lossless formats: different bytes, the same picture.
    make_photo(0, (64, 48)).save(folder / "smooth.bmp")
    make_photo(0, (64, 48)).save(folder / "smooth_small.png")
    for i in range(1, 5):
        make_photo(i, (64, 48)).save(folder / f"other_{i}.jpg", quality=90)
    run_cli("index", folder, "--db", tmp_path / "db", "--json")
    from imagespace.collection import Collection

    with Collection(tmp_path / "db", create=False) as coll:
        report = duplicate_report(coll)
        rows = coll.rows(i for g in report.groups for i in g)
        groups = [sorted(Path(rows[i].path).name for i in g) for g in report.groups]
        reasons = [p.verdict.reason for p in report.pairs.values() if p.verdict.tier == "copy"]
    assert ["smooth.bmp", "smooth_small.png"] in groups, groups
    assert any("too few details" in r for r in reasons)


@pytest.mark.parametrize("case", ["enlarged_copy", "shrunk_copy"])
def test_kept_copy_has_the_most_detail_not_the_most_pixels(tmp_path, case):
    """An original and its 1.6x bicubic enlargement: the original is kept although the copy
    has more pixels. A genuinely larger original and its copy shrunk to 2/3: the larger one
    is kept. Same format, quality, no EXIF, so only the detail can decide."""
    from imagespace.analysis.duplicates import Pair, _most_original, _Verifier
    from imagespace.collection import Row

    if case == "enlarged_copy":
        original = scene(7, (480, 360))
        copy = original.resize((768, 576), Image.Resampling.BICUBIC)
    else:
        original = scene(7, (720, 540))
        copy = original.resize((480, 360), Image.Resampling.LANCZOS)
    rows = {}
    for i, (name, im) in enumerate((("original.jpg", original), ("copy.jpg", copy))):
        path = tmp_path / name
        im.save(path, quality=92)
        st = path.stat()
        # The same modification time: the choice must not fall through to the later rules.
        os.utime(path, ns=(T0_NS, T0_NS))
        rows[i] = Row(i, str(path), st.st_size, T0_NS, f"digest{i}", im.width, im.height, "JPEG", [], "test")
    verifier = _Verifier()
    v = verifier.compare(rows[0], rows[1])
    assert v.tier == "copy", v
    kept, why = _most_original([0, 1], {(0, 1): Pair(0, 1, 0.95, v)}, rows, verifier, True)
    assert kept == 0, (v, why)
    if case == "enlarged_copy":
        assert "enlarged 1.6" in why[1], why
    else:
        assert "fewer pixels" in why[1], why


def test_enlargement_check_only_where_the_choice_comes_to_it(tmp_path):
    """The band ratio needs both files decoded whole, so it is measured only when no earlier
    rule (an added border, a crop, lost EXIF) decides which copy to keep, and those rules
    decide alike with any ratio; taken on the centred windows alone, it is the ratio of the
    whole grey images."""
    from types import SimpleNamespace

    from imagespace.analysis.copies import PairVerdict, needs_band_ratio, original_of
    from imagespace.analysis.enlargement import band_ratio, enlargement_ratio

    big = scene(3, (733, 555))
    turned = Image.Exif()
    turned[0x0112] = 6  # stored sideways: read upright
    files = {"big.jpg": (big, None), "small.png": (big.resize((97, 61)), None),
             "mid.jpg": (big.resize((401, 303)), None), "turned.jpg": (big.rotate(90, expand=True), turned)}
    for name, (im, exif) in files.items():
        im.save(tmp_path / name, **({"exif": exif} if exif is not None else {}))
    for larger, smaller, scale in (("big.jpg", "small.png", 7.5), ("big.jpg", "mid.jpg", 1.83),
                                   ("turned.jpg", "mid.jpg", 1.83), ("mid.jpg", "small.png", 4.1)):
        whole = [np.asarray(load_pil(tmp_path / f, grey=True)) for f in (larger, smaller)]
        ratio = enlargement_ratio(str(tmp_path / larger), str(tmp_path / smaller), scale)
        assert ratio == round(band_ratio(*whole, scale), 4)
        # A JPEG's own luma, decoded without its colour, against its RGB image made grey.
        from_rgb = [np.asarray(load_pil(tmp_path / f).convert("L")) for f in (larger, smaller)]
        assert abs(ratio / band_ratio(*from_rgb, scale) - 1) < 0.02

    shot, lost = CaptureFacts(taken=T0), CaptureFacts()
    plain, framed = SimpleNamespace(border=False), SimpleNamespace(border=True)
    cases = [  # (a, b, facts a, facts b, covered a, covered b, scale, aspect change, measured?)
        (plain, plain, lost, lost, 1.0, 1.0, 0.6, 1.0, True),
        (plain, plain, shot, shot, 1.0, 1.0, 1.6, 1.0, True),
        (plain, framed, lost, lost, 1.0, 1.0, 0.6, 1.0, False),
        (plain, plain, lost, lost, 0.8, 1.0, 0.6, 1.0, False),
        (plain, plain, shot, lost, 1.0, 1.0, 1.6, 1.0, False),
        (plain, plain, lost, lost, 1.0, 1.0, 1.03, 1.0, False),
    ]
    squashed = PairVerdict("copy", 0.95, "", 100, 0.5, 0.95, 0.6, 1.0, 1.0)
    squashed.aspect_change = 1.2  # no one scale at which to compare the bands: never measured
    assert not needs_band_ratio(plain, plain, lost, lost, squashed)
    for a, b, fa, fb, ca, cb, scale, aspect, measured in cases:
        v = PairVerdict("copy", 0.95, "", 100, 0.5, 0.95, scale, ca, cb)
        v.aspect_change = aspect
        assert needs_band_ratio(a, b, fa, fb, v) == measured, (a, b, fa, fb, ca, cb, scale, aspect)
        answers = set()
        for ratio in (None, 0.5, 1.2):
            v.band_ratio = ratio
            answers.add(original_of(a, b, fa, fb, v, T0_NS, T0_NS, 1000, 1000))
        assert (len(answers) > 1) == measured, answers
