"""End to end in headless Chromium (Debian's, driven by playwright): the page a person uses."""

from __future__ import annotations

import importlib.util
import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from serverkit import LiveServer, build_collection, jpeg_bytes

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = 60_000  # ms; the first query loads the model in the server


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (the CI installs Debian's chromium)")
    db, photos = build_collection(tmp_path_factory.mktemp("browser"), n=16)
    live = LiveServer(db)
    live.wait_ready()
    # The first map costs the server a while (umap-learn compiles its kernels): ask for it
    # now, so that it is laid out while the other tests run; the server keeps it.
    threading.Thread(target=lambda: httpx.get(live.url + "/api/map", timeout=600), daemon=True).start()
    yield live, db, photos
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
    pg.set_default_timeout(TIMEOUT)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    # Traffic only to the test server: anything else is a bug in the page.
    pg.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live.url) else (
        problems.append(f"request off the server: {route.request.url}"), route.abort()))
    pg.goto(live.url + "/")
    yield pg
    context.close()
    assert not problems, problems


# every image in view has loaded (lazy images below the fold are left alone)
ALL_IMAGES_LOADED = """() => [...document.querySelectorAll('#view img')]
    .filter(i => i.getBoundingClientRect().top < innerHeight)
    .every(i => i.complete && i.naturalWidth > 0)"""


def test_page_loads_and_searches_by_an_uploaded_image(page, server, tmp_path):
    _, db, photos = server
    page.wait_for_selector("#view[data-view='home'] .results .card")
    assert page.locator("#collection-size").inner_text().startswith("18 images")
    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg_bytes(4))
    page.set_input_files("#upload", str(query))
    page.wait_for_selector("#view[data-view='upload'] .results .card")
    assert page.locator("#view h2").inner_text().startswith("Images like this one")
    first = page.locator("#view .results .card").first
    assert "img_004.jpg" in first.locator("a.thumb").get_attribute("title")
    assert float(first.locator(".score").inner_text()) > 0.99
    assert first.locator(".tags").inner_text().strip()  # tags shown under each thumbnail
    # thumbnails really loaded (not broken images)
    page.wait_for_function("() => [...document.querySelectorAll('#view .card img')].slice(0, 4).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)
    assert (tmp_path / "upload.png").stat().st_size > 10_000
    # weak results marked by the collection's measured line, explained in the command line's words
    weak_cards = page.locator("#view .results .card.weak").count()
    assert weak_cards > 0  # 16 unlike synthetic photos: most are no closer than chance
    note = page.locator("#view .weak-note").inner_text()
    assert note.startswith(f"{weak_cards} of ") and "weak matches (cosine scores; weak below " in note


def test_drop_an_image_on_the_page(page, tmp_path):
    page.wait_for_selector("#view[data-view='home'] .results .card")
    data = list(jpeg_bytes(9))
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], 'dropped.jpg', {type: 'image/jpeg'});
            const dt = new DataTransfer(); dt.items.add(file);
            document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector("#view[data-view='upload'] .results .card")
    assert "img_009.jpg" in page.locator("#view .results .card a.thumb").first.get_attribute("title")


def test_click_an_image_to_see_its_neighbours_then_more_like_this(page, tmp_path):
    page.wait_for_selector("#view[data-view='home'] .results .card")
    page.goto(page.url.split("#")[0] + "#/image/3")
    page.wait_for_selector("#neighbours .card")
    assert page.url.endswith("#/image/3")
    n = page.locator("#neighbours .card").count()
    assert n >= 10 and "3" not in [page.locator("#neighbours .card").nth(i).get_attribute("data-id") for i in range(n)]
    # click a neighbour: its own page, with its own neighbours
    target = page.locator("#neighbours .card").first
    target_id = target.get_attribute("data-id")
    target.locator("a.thumb").click()
    page.wait_for_url(f"**#/image/{target_id}")
    page.wait_for_selector("#neighbours .card")
    page.wait_for_function("() => { const i = document.querySelector('.detail-image img');"
                           " return i.naturalWidth > 0 && i.getBoundingClientRect().height > 100; }")
    page.wait_for_timeout(300)  # let the decoded image be painted before the screenshot
    assert page.locator(".facts .taglist li").count() == 5
    page.screenshot(path=str(tmp_path / "neighbours.png"), full_page=True)
    # "more like this" puts the image in the tray
    page.locator(".facts button.like").click()
    assert page.locator("#tray").is_visible()
    assert page.locator("#tray-like .tray-item").count() == 1
    if has("imagespace.analysis.recommend"):
        page.wait_for_selector("#view[data-view='recommend'] .results .card")
        assert page.url.endswith("#/recommend")


def test_word_search(page, tmp_path):
    if not has("imagespace.search.text"):
        pytest.skip("search by words: imagespace.search.text is not in this build yet")
    page.wait_for_selector("#view[data-view='home'] .results .card")
    page.fill("#q", "a red ball")
    page.press("#q", "Enter")
    page.wait_for_selector("#view[data-view='search'] .results .card")
    assert "a red ball" in page.locator("#view h2").inner_text()
    assert page.locator("#view .results .card").count() >= 10
    assert "results in" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "words.png"), full_page=True)


def test_clusters_and_duplicates_views(page, tmp_path):
    if not (has("imagespace.analysis.clusters") and has("imagespace.analysis.duplicates")):
        pytest.skip("clusters/duplicates: imagespace.analysis is not in this build yet")
    page.wait_for_selector("#view[data-view='home'] .results .card")
    page.click("nav a[href='#/duplicates']")
    page.wait_for_selector(".dup-group .dup", timeout=180_000)
    first = page.locator(".dup-group").first
    names = first.locator(".path").all_inner_texts()
    assert len(names) >= 2 and any("img_000.jpg" in n for n in names)
    page.wait_for_function(ALL_IMAGES_LOADED)
    page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
    page.click("nav a[href='#/clusters']")
    page.wait_for_selector(".cluster h3 a", timeout=180_000)
    assert page.locator(".cluster").count() >= 2
    page.wait_for_function(ALL_IMAGES_LOADED)
    page.screenshot(path=str(tmp_path / "clusters.png"), full_page=True)
    # a cluster's label opens all of its images
    label = page.locator(".cluster h3 a").first
    size = int(page.locator(".cluster h3 .muted").first.inner_text().split()[0])
    label.click()
    page.wait_for_selector("#view[data-view='cluster'] .results .card")
    assert page.locator("#view .results .card").count() == size


def test_map_zooms_and_pans_and_opens_images(page, tmp_path):
    if not has("imagespace.analysis.maps"):
        pytest.skip("the map: imagespace.analysis.maps is not in this build yet")
    page.wait_for_selector("#view[data-view='home'] .results .card")
    page.click("nav a[href='#/map']")
    page.wait_for_selector("#map-canvas[data-points='18']", timeout=180_000)
    canvas = page.locator("#map-canvas")
    box = canvas.bounding_box()
    before = canvas.screenshot()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -600)  # zoom in: thumbnails appear
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 80, box["y"] + box["height"] / 2 + 40, steps=5)
    page.mouse.up()
    page.wait_for_timeout(500)  # thumbnails load and the canvas redraws
    after = canvas.screenshot()
    assert after != before
    page.screenshot(path=str(tmp_path / "map-zoomed.png"))
    page.click(".map-controls button[title='Show everything']")
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "map.png"))
    # "Fit": every image in a cell of its own; click one, and its image opens
    fitted = json.loads(canvas.get_attribute("data-view"))
    aspect = canvas.get_attribute("data-aspect")
    points = page.evaluate(f"async () => (await (await fetch('/api/map?aspect={aspect}')).json()).points")
    p = points[len(points) // 2]
    x = box["x"] + fitted["x"] + (p["gx"] + 0.5) * fitted["sx"]
    y = box["y"] + fitted["y"] + (p["gy"] + 0.5) * fitted["sy"]
    page.mouse.click(x, y)
    page.wait_for_url(f"**#/image/{p['id']}")
    page.wait_for_selector("#neighbours .card")


def test_reindex_button_runs_and_reports(page, server):
    page.wait_for_selector("#view[data-view='home'] .results .card")
    photos = server[2]
    (photos / "later.jpg").write_bytes(jpeg_bytes(123))
    page.click("#index-button")
    page.wait_for_selector("#status:has-text('Indexed: 1 added')", timeout=120_000)
    assert page.locator("#index-button").inner_text() == "Re-index"
    page.click("nav a[href='#/']")
    page.reload()
    page.wait_for_selector("#collection-size:has-text('19 images')")


# -- a new user's first hour (issue 19): the page's rough edges ----------------------------


def test_map_first_view_fills_the_window_with_labelled_regions(page, tmp_path):
    if not has("imagespace.analysis.maps"):
        pytest.skip("the map: imagespace.analysis.maps is not in this build yet")
    page.click("nav a[href='#/map']")
    page.wait_for_selector("#map-canvas[data-points='19'], #map-canvas[data-points='18']", timeout=180_000)
    canvas = page.locator("#map-canvas")
    n = int(canvas.get_attribute("data-points"))
    page.wait_for_function(f"() => document.querySelector('#map-canvas').dataset.drawn === '{n}'")  # every thumbnail drawn
    view = json.loads(canvas.get_attribute("data-view"))
    box = canvas.bounding_box()
    # the grid fills the window: most of its width and height
    assert view["cols"] * view["sx"] > 0.85 * box["width"] and view["rows"] * view["sy"] > 0.85 * box["height"]
    aspect = canvas.get_attribute("data-aspect")
    body = page.evaluate(f"async () => await (await fetch('/api/map?aspect={aspect}')).json()")
    cells = {(p["gx"], p["gy"]) for p in body["points"]}
    assert len(cells) == len(body["points"])  # nothing overlaps
    # and it reads at a glance: pictures cover most of the canvas, not a white field with dots
    from PIL import Image

    shot = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
    pixels = shot.tobytes()
    background = sum(1 for v in pixels if v >= 245)
    assert background / len(pixels) < 0.5, f"{background / len(pixels):.0%} of the map is empty"
    labels = page.locator(".map-label")
    assert labels.count() >= 1 and labels.first.inner_text().strip()
    page.screenshot(path=str(tmp_path / "map-fit.png"))


def test_a_slow_view_clears_the_old_one_and_shows_progress(page):
    page.wait_for_selector("#view[data-view='home'] .results .card")
    held = []
    page.route("**/api/duplicates*", lambda route: held.append(route))
    page.click("nav a[href='#/duplicates']")
    page.wait_for_selector("#view[data-view='duplicates'] .loading")
    assert page.locator("#view .card").count() == 0  # the old view's results are gone at once
    assert "copies and retakes" in page.locator("#view .loading").inner_text()
    page.wait_for_function("() => /\\d+ s/.test(document.querySelector('#view .loading .elapsed').textContent)")
    # the user goes elsewhere before the answer comes: the late answer does not replace that view
    page.click("nav a[href='#/']")
    page.wait_for_selector("#view[data-view='home'] .results .card")
    while not held:
        page.wait_for_timeout(50)
    held[0].continue_()
    page.wait_for_timeout(1500)
    assert page.locator("#view").get_attribute("data-view") == "home"
    page.unroute("**/api/duplicates*")


@pytest.mark.parametrize("size", [(1400, 1000), (390, 844)], ids=["desktop", "phone"])
def test_cards_hold_the_grid(browser, server, size, tmp_path):
    live = server[0]
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    try:
        pg.goto(live.url + "/")
        pg.wait_for_selector("#view[data-view='home'] .results .card")
        pg.wait_for_function(ALL_IMAGES_LOADED)
        shape = pg.evaluate("""() => [...document.querySelectorAll('#view .results .card')].map(c => {
            const tags = c.querySelector('.tags'), buttons = [...c.querySelectorAll('.actions button')];
            return {height: c.getBoundingClientRect().height,
                    tagsHeight: tags.clientHeight, lineHeight: parseFloat(getComputedStyle(tags).lineHeight) || 1.2 * parseFloat(getComputedStyle(tags).fontSize),
                    buttonRows: new Set(buttons.map(b => Math.round(b.getBoundingClientRect().top))).size,
                    buttonLines: buttons.map(b => { const r = document.createRange(); r.selectNodeContents(b); return r.getClientRects().length; })};
        })""")
        heights = [c["height"] for c in shape]
        assert max(heights) - min(heights) <= 1, heights  # no ragged rows
        for c in shape:
            assert c["tagsHeight"] >= 2 * c["lineHeight"] - 1, c  # two lines of tags, not one cut short
            assert c["buttonRows"] == 1, c  # the buttons stay on one row...
            assert all(lines <= 1 for lines in c["buttonLines"]), c  # ...each on one line
        assert pg.evaluate("() => document.scrollingElement.scrollWidth <= innerWidth")  # nothing wider than the screen
        header = pg.locator("header").bounding_box()
        assert header["height"] <= 0.2 * size[1], header
        pg.screenshot(path=str(tmp_path / f"home-{size[0]}.png"))
    finally:
        context.close()
