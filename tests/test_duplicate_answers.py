"""What `duplicates` tells a user to act on, run as a user runs it (the CLI):

- a copy resized to another aspect ratio (a thumbnail box) is a copy, and the original kept;
- `--list-out` names files with tabs and newlines so that a reader gets the exact paths;
- copies that differ in one region (other text labels, a watermark, a part painted another
  colour) are said so and neither is listed for deletion;
- a retake group only suggests the best shot: nothing in it says "keep".
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from PIL import Image, ImageDraw, ImageFont

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.duplicate_tiers import retake  # noqa: E402
from test_duplicate_tiers import scene  # noqa: E402

TAB_NAME = "copy\twith a tab.jpg"
NEWLINE_NAME = "copy\nwith a newline.jpg"


def drawing(label: str, seed: int = 40) -> Image.Image:
    """A line drawing on white with a text label: a catalogue figure."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (640, 480), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for _ in range(45):
        x0, y0 = int(rng.integers(20, 620)), int(rng.integers(20, 380))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.rectangle((x0, y0, x0 + int(rng.integers(10, 80)), y0 + int(rng.integers(10, 80))), outline=(0, 0, 0), width=2)
        elif kind == 1:
            d.ellipse((x0, y0, x0 + int(rng.integers(10, 70)), y0 + int(rng.integers(10, 70))), outline=(30, 30, 30), width=2)
        else:
            d.line((x0, y0, int(rng.integers(20, 620)), int(rng.integers(20, 380))), fill=(0, 0, 0), width=2)
    d.text((40, 400), label, fill=(0, 0, 0), font=ImageFont.load_default(size=36))
    return im


def product(body: tuple[int, int, int], seed: int = 41) -> Image.Image:
    """A catalogue photo of one product, its body painted ``body`` (the blue and the yellow
    motorbike): the details on the body stay the same."""
    im = scene(seed)
    d = ImageDraw.Draw(im)
    d.polygon([(180, 140), (460, 120), (520, 260), (150, 300)], fill=body)
    d.ellipse((200, 190, 260, 250), fill=(40, 40, 40))
    d.rectangle((330, 170, 420, 200), fill=(220, 220, 220))
    return im


def watermarked(im: Image.Image, text: str) -> Image.Image:
    """A shop's copy: its name stamped on a plain band in a corner."""
    im = im.copy()
    d = ImageDraw.Draw(im)
    d.rectangle((im.width - 250, im.height - 70, im.width - 20, im.height - 20), fill=(250, 250, 250))
    d.text((im.width - 240, im.height - 65), text, fill=(200, 20, 20), font=ImageFont.load_default(size=36))
    return im


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    base = tmp_path_factory.mktemp("answers")
    photos = base / "photos"
    photos.mkdir()
    shot = scene(20)
    shot.save(photos / "original.jpg", quality=92)
    shot.resize((300, 300), Image.Resampling.LANCZOS).save(photos / "thumbnail_300x300.jpg", quality=90)
    named = scene(21)
    named.save(photos / "named_original.jpg", quality=92)
    named.resize((480, 360), Image.Resampling.LANCZOS).save(photos / TAB_NAME, quality=90)
    named.resize((400, 300), Image.Resampling.LANCZOS).save(photos / NEWLINE_NAME, quality=90)
    drawing("Fig. 1: inlet valve").save(photos / "figure_valve.png")
    drawing("Fig. 2: outlet pump").save(photos / "figure_pump.png")
    product((30, 60, 200), seed=42).save(photos / "bike_blue.jpg", quality=92)
    product((240, 210, 30), seed=42).resize((560, 420), Image.Resampling.LANCZOS).save(photos / "bike_yellow.jpg", quality=92)
    scene(41).save(photos / "studio.jpg", quality=92)
    watermarked(scene(41), "SHOP.COM").resize((560, 420), Image.Resampling.LANCZOS).save(photos / "studio_shop.jpg", quality=92)
    again = scene(22)
    again.save(photos / "scene.jpg", quality=92)
    retake(again, random.Random(5)).save(photos / "scene_again.jpg", quality=92)
    for i in range(23, 27):
        scene(i).save(photos / f"other_{i}.jpg", quality=92)
    db = base / "db"
    done = run_cli("index", photos, "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    listing = base / "extra.tsv"
    out = run_cli("duplicates", "--db", db, "--json", "--list-out", listing)
    assert out.returncode == 0, out.stderr
    human = run_cli("duplicates", "--db", db)
    assert human.returncode == 0, human.stderr
    doc = json.loads(out.stdout)
    members = {Path(m["path"]).name: (g, m) for g in doc["details"] for m in g["members"]}
    return {"photos": photos, "doc": doc, "listing": listing, "members": members, "human": human.stdout}


def _group_of(answers, name):
    found = answers["members"].get(name)
    assert found is not None, f"{name!r} is in no group: {json.dumps(answers['doc']['details'], indent=1)}"
    return found


def test_copy_resized_to_another_aspect_ratio_is_a_copy_and_the_original_kept(answers):
    group, member = _group_of(answers, "thumbnail_300x300.jpg")
    assert group["tier"] == "copy", member["reason"]
    assert Path(group["members"][0]["path"]).name == "original.jpg"
    assert not member["kept"] and "aspect ratio" in member["reason"], member["reason"]


def _fields(line: bytes) -> list[str]:
    """Decode one line of --list-out as the README says (bash's printf '%b' on each field)."""
    out = []
    for field in line.split(b"\t"):
        decoded = subprocess.run(["bash", "-c", 'printf "%b" "$1"', "_", field], capture_output=True, check=True).stdout
        out.append(decoded.decode("utf-8", "surrogateescape"))
    return out


def test_list_out_gives_the_exact_paths_of_names_with_tabs_and_newlines(answers):
    lines = [line for line in answers["listing"].read_bytes().split(b"\n") if line]
    rows = [_fields(line) for line in lines]
    assert all(len(r) == 3 for r in rows), lines  # path, kept file, why: no field split apart
    listed = {Path(r[0]).name: r for r in rows}
    assert {TAB_NAME, NEWLINE_NAME} <= set(listed), sorted(listed)
    for name in (TAB_NAME, NEWLINE_NAME):
        path, kept, why = listed[name]
        assert Path(path) == answers["photos"] / name and Path(path).exists()
        assert Path(kept).name == "named_original.jpg" and why
    # The README's Python reader gives the same paths.
    from imagespace.names import from_tsv_field

    assert {Path(from_tsv_field(line.split(b"\t")[0])).name for line in lines} == set(listed)


@pytest.mark.parametrize("pair", [("figure_valve.png", "figure_pump.png"), ("studio.jpg", "studio_shop.jpg"),
                                  ("bike_blue.jpg", "bike_yellow.jpg")])
def test_copies_that_differ_in_a_region_are_said_so_and_neither_is_listed(answers, pair):
    listed = {Path(_fields(line)[0]).name for line in answers["listing"].read_bytes().split(b"\n") if line}
    assert not set(pair) & listed, f"{pair} listed for deletion"
    reasons = []
    for name in pair:
        group, member = answers["members"].get(name, (None, None))
        if member is not None:
            reasons.append(member["reason"])
            if group["tier"] == "copy":
                assert member["kept"], member
    # Called copies of one picture (or, at least, not a different scene), with the region said.
    assert any("region" in r for r in reasons), (pair, reasons, answers["doc"]["details"])


def test_retake_group_suggests_without_saying_keep(answers):
    group, _ = _group_of(answers, "scene_again.jpg")
    assert group["tier"] == "retake"
    lines = answers["human"].splitlines()
    for n, line in enumerate(lines):
        if "pick yourself" in line:
            block = []
            for follow in lines[n + 1:]:
                if follow.startswith("group ") or not follow.startswith(" "):
                    break
                block.append(follow)
            assert block and not any("[keep]" in b for b in block), block
