"""The page on real photos, in headless Chromium (as tests/test_browser.py launches it):

- a tall photo (or any portrait one) keeps its card square: no gap in the home page's grid;
- the map's regions follow the clumps of the layout: each labelled region holds one kind of
  photo, and its label sits on its own images.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import SHARED_DATA, run_cli
from PIL import Image
from serverkit import LiveServer

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Kinds of photo that look alike within and unlike across (flowers and clothes).
KINDS = ["flowers12/train/sunflower", "flowers12/train/iris", "clothing10/train/shoes", "clothing10/train/pants",
         "clothing10/train/hat"]
PER_KIND = 14


@pytest.fixture(scope="module")
def server(tmp_path_factory, flowers12):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (the CI installs Debian's chromium)")
    if not (SHARED_DATA / "clothing10" / "train").is_dir():
        pytest.skip(f"real-data test: {SHARED_DATA / 'clothing10'} is absent (it lives beside the project, in ../shared/data)")
    base = tmp_path_factory.mktemp("page")
    photos = base / "photos"
    for kind in KINDS:
        folder = photos / kind.split("/")[-1]
        folder.mkdir(parents=True)
        for f in sorted((SHARED_DATA / kind).glob("*.jpg"))[:PER_KIND]:
            shutil.copy(f, folder / f.name)
    src = Image.open(sorted((flowers12 / "train" / "tigerlily").glob("*.jpg"))[0]).convert("RGB")
    src.crop((src.width // 3, 0, src.width // 3 + src.width // 5, src.height)).resize((240, 1200)).save(photos / "a_tall_one.jpg", quality=90)
    db = base / "db"
    done = run_cli("index", photos, "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    live = LiveServer(db)
    live.wait_ready()
    # The first map costs the server a while (umap-learn compiles its kernels).
    threading.Thread(target=lambda: httpx.get(live.url + "/api/map", timeout=900), daemon=True).start()
    yield live, photos
    live.stop()


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    live = server[0]
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(live.url + "/")
    yield pg
    context.close()


def test_a_tall_photo_leaves_no_gap_on_the_home_page(page, tmp_path):
    page.wait_for_selector("#view[data-view='home'] .results .card")
    page.wait_for_function("""() => [...document.querySelectorAll('#view .results .card img')]
        .filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete && i.naturalWidth > 0)""")
    cards = page.evaluate("""() => [...document.querySelectorAll('#view .results .card')].map(c => {
        const t = c.querySelector('.thumb').getBoundingClientRect(), r = c.getBoundingClientRect();
        return {name: c.querySelector('.thumb').title.split('/').pop(), top: Math.round(r.top), height: r.height,
                thumbW: t.width, thumbH: t.height}; })""")
    page.screenshot(path=str(tmp_path / "home.png"), full_page=True)
    assert any(c["name"] == "a_tall_one.jpg" for c in cards), [c["name"] for c in cards][:10]
    stretched = [c for c in cards if abs(c["thumbH"] - c["thumbW"]) > 1.5]
    assert not stretched, f"thumbnails taller than wide (a gap in their row): {stretched[:5]}"
    rows: dict[int, list[float]] = {}
    for c in cards:
        rows.setdefault(c["top"], []).append(c["height"])
    assert all(max(h) - min(h) <= 1.5 for h in rows.values()), rows


def test_map_regions_hold_one_kind_each_and_are_labelled_on_their_images(page, server, tmp_path):
    _, photos = server
    page.click("nav a[href='#/map']")
    page.wait_for_selector("#map-canvas[data-points]", timeout=900_000)
    aspect = page.locator("#map-canvas").get_attribute("data-aspect")
    body = page.evaluate(f"async () => await (await fetch('/api/map?aspect={aspect}')).json()")
    page.screenshot(path=str(tmp_path / "map.png"))
    kind = {}
    for p in body["points"]:
        kind[p["id"]] = None
    rows = page.evaluate("async (ids) => await (await fetch('/api/items?ids=' + ids.join(','))).json()",
                         [p["id"] for p in body["points"]])
    for r in rows:
        kind[r["id"]] = Path(r["path"]).parent.name
    cell = {(p["gx"], p["gy"]): p["id"] for p in body["points"]}
    regions = body["regions"]
    assert len(regions) >= 2, regions
    for g in regions:
        if "ids" in g:
            members = g["ids"]
        else:  # a page without region members: the images nearest its centre (k-means on the grid)
            members = [p["id"] for p in body["points"] if min(regions, key=lambda o: (o["x"] - p["gx"] - 0.5) ** 2
                                                               + (o["y"] - p["gy"] - 0.5) ** 2) is g]
        kinds = Counter(kind[i] for i in members if kind[i] != "photos")
        if sum(kinds.values()) < 5:
            continue
        top, count = kinds.most_common(1)[0]
        assert count / sum(kinds.values()) >= 0.75, f"region {g['label']!r} mixes kinds: {dict(kinds)}"
        on = cell.get((int(g["x"]), int(g["y"])))
        assert on in members, f"the label {g['label']!r} sits on an image of another region"
    # The page shows the labels.
    shown = page.evaluate("() => [...document.querySelectorAll('.map-label')].map(n => n.textContent)")
    assert sorted(shown) == sorted(g["label"] for g in regions)


def test_map_thumbnails_that_fail_at_first_are_fetched_again_without_a_reload(page, server):
    """A first visit asks the server for every thumbnail of the map at once; one that fails
    then (a busy server, a dropped connection) must not leave its cell blank until reload.
    Here each thumbnail's first request is answered 503 by the browser's network layer."""
    failed: set[str] = set()

    def first_fails(route):
        key = route.request.url.split("?")[0] + route.request.url.split("size=")[-1][:4]
        if key not in failed:
            failed.add(key)
            route.fulfill(status=503, body="busy")
        else:
            route.continue_()

    page.route("**/thumb?*", first_fails)
    page.click("nav a[href='#/map']")
    page.wait_for_selector("#map-canvas[data-points]", timeout=900_000)
    n = page.locator("#map-canvas").get_attribute("data-points")
    page.wait_for_function(f"() => document.querySelector('#map-canvas').dataset.drawn === '{n}'", timeout=60_000)
    assert failed, "no thumbnail was asked for"
