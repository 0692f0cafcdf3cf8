// imagespace web page: plain JavaScript, no build step. Talks only to this server's /api.
"use strict";

const $ = (sel) => document.querySelector(sel);
const view = () => $("#view");
// nav counts navigations: a view whose answer arrives after the user went elsewhere drops it
const state = { like: new Map(), unlike: new Map(), lastUpload: null, indexTimer: null, nav: 0 };

// -- small helpers ------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function status(message, kind = "info") {
  const s = $("#status");
  s.textContent = message || "";
  s.className = message ? kind : "";
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const response = await fetch("/api" + path, { credentials: "same-origin", ...options });
  let body = null;
  if (response.status !== 204) {
    const text = await response.text();
    try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
  }
  if (response.status === 401) { showLogin(); throw new ApiError(401, (body && body.detail) || "token needed"); }
  if (!response.ok) throw new ApiError(response.status, (body && body.detail) || response.statusText);
  return body;
}

function fail(err) {
  const msg = err instanceof ApiError ? err.message : String(err);
  status(msg, err.status === 501 ? "info" : "error");
  const v = view();
  if (v.dataset.loading) {  // the loading line gives way to the reason
    v.replaceChildren(el("p", { class: "empty", text: msg }));
    delete v.dataset.loading;
  }
}

function fmtBytes(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(0) + " kB";
  return n + " B";
}

function basename(path) { return path.split(/[\\/]/).pop(); }

function plural(n, one, many) { return `${n.toLocaleString()} ${n === 1 ? one : many}`; }

// -- results grid -------------------------------------------------------------------------

// Whether a result is weak, and why, comes with each answer (`weak` on a result, the rule in
// `scores`): the same words as the command line's (README, "What a score means").
function card(item, scores) {
  const img = el("img", { src: item.thumb, alt: basename(item.path), loading: "lazy", decoding: "async", width: 256, height: 256 });
  const open = el("a", { href: `#/image/${item.id}`, class: "thumb", title: item.path }, img);
  // the hedged tag ("flower 62%") when the network is confident of a concept, else its guesses
  const tags = item.tag ? `${item.tag.name} ${(item.tag.confidence * 100).toFixed(0)}%` : (item.tags || []).slice(0, 3).join(" · ");
  const hasScore = item.score !== null && item.score !== undefined;
  const weak = hasScore && item.weak === true;
  const meaning = scores ? scores.meaning : "";
  const meta = el("div", { class: "meta" },
    hasScore ? el("span", { class: weak ? "score weak" : "score", text: item.score.toFixed(3),
      title: weak && scores ? `a weak match: ${scores.weak_rule}` : meaning }) : null,
    el("span", { class: "tags", text: tags, title: (item.tags || []).join(", ") }));
  const actions = el("div", { class: "actions" },
    el("button", { type: "button", class: "like", title: "More like this", text: "+ more", onclick: () => addTo("like", item) }),
    el("button", { type: "button", class: "unlike", title: "Less like this", text: "− less", onclick: () => addTo("unlike", item) }));
  return el("figure", { class: weak ? "card weak" : "card", "data-id": item.id }, open, meta, actions);
}

function grid(items, emptyText = "No results.", scores = null) {
  if (!items.length) return el("p", { class: "empty", text: emptyText });
  const cards = el("div", { class: "grid results" }, items.map((item) => card(item, scores)));
  const weak = items.filter((item) => item.weak === true).length;
  if (!weak || !scores) return cards;
  const both = document.createDocumentFragment();
  both.append(el("p", { class: "muted weak-note",
    text: `${weak} of ${items.length} results are weak matches (${scores.kind} scores; ${scores.weak_rule})` }), cards);
  return both;
}

function show(name, ...nodes) {
  const v = view();
  v.replaceChildren(...nodes);
  v.classList.toggle("full", false);
  v.dataset.view = name;  // which view is on screen (tests and styles use it)
  delete v.dataset.loading;
  window.scrollTo(0, 0);  // a new view starts at its top
}

function heading(text, extra) { return el("h2", {}, text, extra || null); }

// A view that takes a while: the old view goes at once, and a line says what is happening
// and for how long, until the answer replaces it.
function loading(name, message, container) {
  const started = performance.now();
  const clock = el("span", { class: "elapsed" });
  const panel = el("p", { class: "loading" }, el("span", { class: "spinner", "aria-hidden": "true" }), el("span", {}, `${message}… `, clock));
  if (container) container.replaceChildren(panel);
  show(name, container || panel);
  view().dataset.loading = "true";
  status("");
  const timer = setInterval(() => {
    if (!panel.isConnected) { clearInterval(timer); return; }
    clock.textContent = `${Math.round((performance.now() - started) / 1000)} s`;
  }, 1000);
}

// -- like / unlike tray -------------------------------------------------------------------

function addTo(which, item) {
  const other = which === "like" ? "unlike" : "like";
  state[other].delete(item.id);
  state[which].set(item.id, item);
  renderTray();
  recommend();
}

function renderTray() {
  const tray = $("#tray");
  const fill = (box, map, which) => box.replaceChildren(...[...map.values()].map((item) =>
    el("button", { type: "button", class: "tray-item", title: "Remove " + basename(item.path),
      onclick: () => { map.delete(item.id); renderTray(); if (state.like.size) recommend(); } },
      el("img", { src: item.thumb.replace("/thumb?", "/thumb?size=128&"), alt: which }))));
  fill($("#tray-like"), state.like, "like");
  fill($("#tray-unlike"), state.unlike, "unlike");
  tray.hidden = state.like.size === 0 && state.unlike.size === 0;
}

async function recommend() {
  if (!state.like.size) { status("Add at least one image with “more like this”."); return; }
  if (location.hash !== "#/recommend") { location.hash = "#/recommend"; return; }
  const nav = state.nav;
  status("Finding more like these…");
  try {
    const body = JSON.stringify({ like: [...state.like.keys()], unlike: [...state.unlike.keys()], k: 48 });
    const r = await api("/recommend", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    if (nav !== state.nav) return;
    show("recommend", heading(`More like ${state.like.size}, less like ${state.unlike.size}`,
      el("span", { class: "muted", text: "· ordered for variety, not by score alone" })), grid(r.results, undefined, r.scores));
    status("");
  } catch (e) { fail(e); }
}

// -- views --------------------------------------------------------------------------------

async function home(offset = 0) {
  const pageSize = 48;
  const nav = state.nav;
  try {
    const [info, items] = await Promise.all([api("/info"), api(`/images?limit=${pageSize}&offset=${offset}`)]);
    if (nav !== state.nav) return;
    const pager = el("div", { class: "row pager" },
      offset > 0 ? el("button", { type: "button", text: "← Previous", onclick: () => home(Math.max(0, offset - pageSize)) }) : null,
      offset + items.length < info.images ? el("button", { type: "button", text: "Next →", onclick: () => home(offset + pageSize) }) : null);
    show("home", heading("Your collection", el("span", { class: "muted", id: "collection-size", text: `${info.images.toLocaleString()} images · model ${info.model || "none yet"}` })),
      el("p", { class: "muted", text: "Search by words above, drop or paste an image anywhere on the page, click an image for its neighbours, or look at clusters, duplicates and the map. Folders: " + (info.roots.join(", ") || "none yet") }),
      grid(items, "The collection is empty: run “imagespace index FOLDER” or Re-index."), pager);
    status("");
  } catch (e) { fail(e); }
}

async function searchWords(q) {
  $("#q").value = q;
  status(`Searching for “${q}”…`);
  const started = performance.now();
  const nav = state.nav;
  try {
    const r = await api(`/search?q=${encodeURIComponent(q)}&k=48`);
    if (nav !== state.nav) return;
    const understood = r.understood_as && r.understood_as.length
      ? el("span", { class: "muted", text: " — understood as " + r.understood_as.map((c) => c.concept || c.label || JSON.stringify(c)).join(", ") }) : null;
    show("search", heading(`Results for “${q}”`, understood), grid(r.results, undefined, r.scores));
    status(`${plural(r.results.length, "result", "results")} in ${Math.round(performance.now() - started)} ms`);
  } catch (e) { fail(e); }
}

async function searchUpload(file) {
  if (!file) return;
  state.lastUpload = file;
  const nav = ++state.nav;  // a search by image is a navigation of its own
  status(`Searching by ${file.name || "the pasted image"}…`);
  const form = new FormData();
  form.append("file", file, file.name || "pasted.png");
  try {
    const r = await api("/search/image?k=48", { method: "POST", body: form });
    if (nav !== state.nav) return;
    const preview = el("img", { class: "query-preview", src: URL.createObjectURL(file), alt: "query image" });
    if (location.hash !== "#/upload") history.pushState(null, "", "#/upload");
    show("upload", heading("Images like this one ", preview), grid(r.results, undefined, r.scores));
    status(plural(r.results.length, "result", "results"));
  } catch (e) { fail(e); }
}

async function imageView(id) {
  status("Loading…");
  const nav = state.nav;
  try {
    const d = await api(`/images/${id}?k=24`);
    if (nav !== state.nav) return;
    const big = el("img", { class: "big", src: d.thumb.replace("/thumb?", "/thumb?size=1024&"), alt: basename(d.path) });
    const item = { id: d.id, path: d.path, thumb: d.thumb, tags: d.tags.map((t) => t.label) };
    const facts = el("div", { class: "facts" },
      el("h2", { text: basename(d.path) }),
      el("p", { class: "muted path", text: d.path }),
      el("p", { text: `${d.width} × ${d.height} · ${d.format} · ${fmtBytes(d.size)}` }),
      el("ul", { class: "taglist" }, d.tags.map((t) => el("li", {}, el("a", { href: `#/search?q=${encodeURIComponent(t.label)}`, text: t.label }), ` ${(t.score * 100).toFixed(0)}%`))),
      el("div", { class: "row" },
        el("button", { type: "button", class: "like", text: "+ More like this", onclick: () => addTo("like", item) }),
        el("button", { type: "button", class: "unlike", text: "− Less like this", onclick: () => addTo("unlike", item) }),
        el("a", { class: "button quiet", href: d.file, target: "_blank", rel: "noopener", text: "Original" })));
    show("image", el("section", { class: "detail" }, el("div", { class: "detail-image" }, big), facts),
      heading("Nearest neighbours"), el("div", { id: "neighbours" }, grid(d.neighbours, undefined, d.scores)));
    status("");
  } catch (e) { fail(e); }
}

async function clustersView() {
  const nav = state.nav;
  loading("clusters", "Grouping the collection into clusters (the first time can take a while; the answer is kept until the collection changes)");
  try {
    const r = await api("/clusters");
    if (nav !== state.nav) return;
    const blocks = r.clusters.map((c) => el("section", { class: "cluster" },
      el("h3", {}, el("a", { href: `#/cluster/${c.id}`, text: c.label }), el("span", { class: "muted", text: " " + plural(c.size, "image", "images") })),
      el("div", { class: "strip" }, c.sample.map((item) => el("a", { href: `#/image/${item.id}`, title: item.path },
        el("img", { src: item.thumb.replace("/thumb?", "/thumb?size=128&"), alt: basename(item.path), loading: "lazy", width: 128, height: 128 }))))));
    sessionStorage.setItem("clusters", JSON.stringify(r.clusters.map((c) => ({ id: c.id, label: c.label, ids: c.ids }))));
    show("clusters", heading(plural(r.clusters.length, "cluster", "clusters"), el("span", { class: "muted", text: ` · ${plural(r.outliers.length, "outlier", "outliers")} · click a label to see all its images` })), ...blocks);
    status("");
  } catch (e) { fail(e); }
}

async function clusterView(id) {
  const saved = JSON.parse(sessionStorage.getItem("clusters") || "[]").find((c) => String(c.id) === String(id));
  if (!saved) { location.hash = "#/clusters"; return; }
  const nav = state.nav;
  try {
    const items = await api(`/items?ids=${saved.ids.slice(0, 1000).join(",")}`);
    if (nav !== state.nav) return;
    show("cluster", heading(saved.label, el("span", { class: "muted", text: ` ${saved.ids.length} images` })), grid(items));
  } catch (e) { fail(e); }
}

async function duplicatesView() {
  const nav = state.nav;
  loading("duplicates", "Looking for copies and retakes: every image against its nearest neighbours, candidates confirmed by matching local features. "
    + "The first time takes a while on a large collection; the answer is kept until the collection changes");
  try {
    const r = await api("/duplicates");
    if (nav !== state.nav) return;
    // details: each group with its tier and each member's reason; older servers send groups only.
    const details = r.details && r.details.length ? r.details : r.groups.map((g) => ({ tier: "copy", items: g, members: g.map((it, n) => ({ id: it.id, kept: n === 0, reason: "", similarity: null })) }));
    const groups = details.map((d) => el("section", { class: `dup-group dup-${d.tier}` },
      el("h3", { class: "dup-tier", text: d.tier === "copy" ? "Copies of one picture: keep the first" : "Retakes of one scene: the best shot first, pick yourself" }),
      ...d.items.map((item, n) => {
        const m = d.members[n] || {};
        const note = m.kept ? (d.tier === "copy" ? "keep" : "best shot") : (d.tier === "copy" ? "copy" : "retake");
        const sim = m.similarity == null ? "" : ` · similarity ${m.similarity.toFixed(2)}`;
        return el("figure", { class: "dup" + (m.kept ? " kept" : "") },
          el("a", { href: `#/image/${item.id}`, title: item.path }, el("img", { src: item.thumb.replace("/thumb?", "/thumb?size=512&"), alt: basename(item.path), loading: "lazy" })),
          el("figcaption", {},
            el("div", { class: "dup-mark", text: note }),
            el("div", { class: "path", text: item.path }),
            el("div", { class: "muted", text: `${item.width} × ${item.height} · ${fmtBytes(item.size)}${sim}` }),
            m.reason ? el("div", { class: "dup-reason muted", text: m.reason }) : null));
      })));
    const copies = details.filter((d) => d.tier === "copy").length;
    show("duplicates", heading(plural(copies, "group", "groups") + " of copies, " + plural(details.length - copies, "group", "groups") + " of retakes"), groups.length ? el("div", { class: "dups" }, groups) : el("p", { class: "empty", text: "No copies or retakes found." }));
    status("");
  } catch (e) { fail(e); }
}

// -- the map: a canvas that pans (drag) and zooms (wheel, buttons) ------------------------
// Every image has a cell of its own in a grid of the window's shape (the server places each
// as near as it can to where its vector fell), so the first view ("Fit") fills the window
// and nothing overlaps; regions are labelled from their tags. Thumbnails load for the cells
// in view, at the size the zoom needs, a smaller one standing in until the larger arrives.

// px around the grid at "Fit": room on the right for the zoom buttons, below for the help line
const MAP_MARGIN = { left: 8, top: 8, right: 60, bottom: 28 };

async function mapView() {
  const nav = state.nav;
  const wrap = el("div", { class: "map-wrap" });
  loading("map", "Laying out the map (the first time can take a while)", wrap);
  view().classList.add("full");
  const box = wrap.getBoundingClientRect();
  const aspect = Math.min(5, Math.max(0.2, (box.width || innerWidth) / Math.max(1, box.height || innerHeight)));
  let r;
  try { r = await api(`/map?aspect=${aspect.toFixed(1)}`); } catch (e) { if (nav === state.nav) fail(e); return; }
  if (nav !== state.nav) return;  // the user went elsewhere meanwhile
  const points = r.points;
  const cols = r.cols || 1, rows = r.rows || 1;
  const canvas = el("canvas", { id: "map-canvas", "aria-label": "Map of the collection" });
  const labels = el("div", { class: "map-labels", "aria-hidden": "true" });
  const zoomIn = el("button", { type: "button", text: "+", title: "Zoom in" });
  const zoomOut = el("button", { type: "button", text: "−", title: "Zoom out" });
  const reset = el("button", { type: "button", text: "Fit", title: "Show everything" });
  wrap.replaceChildren(canvas, labels, el("div", { class: "map-controls" }, zoomIn, zoomOut, reset),
    el("div", { class: "map-help muted", text: `${points.length} images, similar ones side by side · drag to pan, wheel or +/− to zoom, click an image to open it` }));
  show("map", wrap);
  view().classList.add("full");
  status("");
  const ctx = canvas.getContext("2d");
  const images = new Map();  // "id/size" -> Image
  const byCell = new Map(points.map((p) => [`${p.gx},${p.gy}`, p]));
  const regionNodes = (r.regions || []).slice().sort((a, b) => b.size - a.size).map((g) => {
    const node = el("span", { class: "map-label", text: g.label, title: `${g.label}: ${plural(g.size, "image", "images")}` });
    labels.append(node);
    return { g, node };
  });
  const cam = { x: 0, y: 0, sx: 1, sy: 1, fitted: true };  // screen = cam.x + column * cam.sx (and y, rows)
  let width = 0, height = 0, pending = false;
  const dpr = () => window.devicePixelRatio || 1;

  function fit() {
    const m = width < 600 ? { ...MAP_MARGIN, right: 8 } : MAP_MARGIN;  // a phone: the buttons float over the grid
    cam.sx = Math.max(1, (width - m.left - m.right) / cols);
    cam.sy = Math.max(1, (height - m.top - m.bottom) / rows);
    cam.x = m.left; cam.y = m.top;
    cam.fitted = true;
  }
  function resize() {
    const b = wrap.getBoundingClientRect();
    const refit = width === 0;
    width = b.width; height = b.height;
    canvas.width = Math.round(width * dpr()); canvas.height = Math.round(height * dpr());
    ctx.setTransform(dpr(), 0, 0, dpr(), 0, 0);
    if (refit) fit();
  }
  function wanted(cell) { return cell * dpr() <= 128 ? 128 : cell * dpr() <= 256 ? 256 : 512; }
  const failures = new Map();  // "id/size" -> failed tries
  function thumb(p, size) {
    const key = `${p.id}/${size}`;
    let im = images.get(key);
    if (!im) {
      im = new Image();
      im.onload = schedule;
      // A thumbnail that failed (the server busy making a thousand of them on the first
      // visit, a dropped connection) is asked for again a little later, not left blank
      // until the page is reloaded.
      const tries = failures.get(key) || 0;
      im.onerror = () => {
        failures.set(key, tries + 1);
        if (tries + 1 < 6) setTimeout(() => { if (images.get(key) === im) { images.delete(key); schedule(); } }, 500 * 2 ** tries);
      };
      im.src = p.thumb.replace("/thumb?", `/thumb?size=${size}&`) + (tries ? `&try=${tries}` : "");
      images.set(key, im);
    }
    return im;
  }
  function loaded(p, size) {
    const exact = thumb(p, size);
    if (exact.complete && exact.naturalWidth) return exact;
    for (const other of [512, 256, 128]) {  // a smaller (or larger) one already here stands in
      const im = images.get(`${p.id}/${other}`);
      if (im && im.complete && im.naturalWidth) return im;
    }
    return null;
  }
  function draw() {
    pending = false;
    ctx.clearRect(0, 0, width, height);
    const cw = cam.sx, ch = cam.sy, pad = Math.min(cw, ch) > 24 ? 2 : 1;
    const size = wanted(Math.max(cw, ch));
    let drawn = 0;
    for (const p of points) {
      const x = cam.x + p.gx * cw, y = cam.y + p.gy * ch;
      if (x + cw < 0 || y + ch < 0 || x > width || y > height) continue;
      const im = Math.min(cw, ch) >= 6 ? loaded(p, size) : null;
      if (im) {
        const k = Math.min((cw - 2 * pad) / im.naturalWidth, (ch - 2 * pad) / im.naturalHeight);
        const w = im.naturalWidth * k, h = im.naturalHeight * k;
        ctx.drawImage(im, x + (cw - w) / 2, y + (ch - h) / 2, w, h);
        drawn++;
      } else {
        ctx.fillStyle = "#dfe4ec";  // the cell, until its thumbnail arrives
        ctx.fillRect(x + pad, y + pad, cw - 2 * pad, ch - 2 * pad);
      }
    }
    // Region labels, largest region first; one that would cover another label is left out.
    const placed = [];
    for (const { g, node } of regionNodes) {
      const w = node.offsetWidth, h = node.offsetHeight;
      const left = Math.min(Math.max(cam.x + g.x * cw - w / 2, 4), width - w - 4);
      const top = Math.min(Math.max(cam.y + g.y * ch - h / 2, 4), height - h - 4);
      const clash = placed.some((b) => left < b.right && b.left < left + w && top < b.bottom && b.top < top + h);
      node.style.visibility = clash ? "hidden" : "visible";
      node.style.transform = `translate(${left}px, ${top}px)`;
      if (!clash) placed.push({ left, top, right: left + w + 6, bottom: top + h + 4 });
    }
    canvas.dataset.view = JSON.stringify({ x: cam.x, y: cam.y, sx: cam.sx, sy: cam.sy, cols, rows });
    canvas.dataset.drawn = String(drawn);  // thumbnails on screen (tests wait for them)
  }
  function schedule() { if (!pending) { pending = true; requestAnimationFrame(draw); } }
  function zoomAt(factor, cx, cy) {
    const fitted = (width - MAP_MARGIN.left - MAP_MARGIN.right) / cols;
    const next = Math.min(Math.max(cam.sx * factor, fitted * 0.5), Math.max(fitted * 2, 600));
    factor = next / cam.sx;
    cam.x = cx - (cx - cam.x) * factor;
    cam.y = cy - (cy - cam.y) * factor;
    cam.sx *= factor; cam.sy *= factor;
    cam.fitted = false;
    schedule();
  }
  function pointAt(cx, cy) {
    return byCell.get(`${Math.floor((cx - cam.x) / cam.sx)},${Math.floor((cy - cam.y) / cam.sy)}`) || null;
  }
  let drag = null;
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); const b = canvas.getBoundingClientRect(); zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - b.left, e.clientY - b.top); }, { passive: false });
  canvas.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: 0 }; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    drag.moved += Math.abs(dx) + Math.abs(dy); drag.x = e.clientX; drag.y = e.clientY;
    cam.x += dx; cam.y += dy; cam.fitted = false; schedule();
  });
  canvas.addEventListener("pointerup", (e) => {
    const wasClick = drag && drag.moved < 5;
    drag = null;
    if (!wasClick) return;
    const b = canvas.getBoundingClientRect();
    const p = pointAt(e.clientX - b.left, e.clientY - b.top);
    if (p) location.hash = `#/image/${p.id}`;
  });
  zoomIn.addEventListener("click", () => zoomAt(1.5, width / 2, height / 2));
  zoomOut.addEventListener("click", () => zoomAt(1 / 1.5, width / 2, height / 2));
  reset.addEventListener("click", () => { fit(); schedule(); });
  const observer = new ResizeObserver(() => { const wasFit = cam.fitted; resize(); if (wasFit) fit(); schedule(); });
  observer.observe(wrap);
  resize(); fit(); draw();
  canvas.dataset.points = String(points.length);
  canvas.dataset.aspect = aspect.toFixed(1);  // the grid's shape asked of /api/map
}

// -- indexing -----------------------------------------------------------------------------

async function startIndexing() {
  try {
    await api("/index", { method: "POST" });
    followIndexing();
  } catch (e) { fail(e); }
}

function followIndexing() {
  clearTimeout(state.indexTimer);
  const button = $("#index-button");
  const tick = async () => {
    let job;
    try { job = await api("/index"); } catch (e) { fail(e); return; }
    if (job.state === "running") {
      button.disabled = true;
      button.textContent = job.total ? `Indexing ${job.done}/${job.total}` : "Indexing…";
      state.indexTimer = setTimeout(tick, 700);
      return;
    }
    button.disabled = false;
    button.textContent = "Re-index";
    if (job.state === "done" && job.report) {
      const r = job.report;
      status(`Indexed: ${r.added} added, ${r.updated} updated, ${r.removed} removed, ${r.unchanged} unchanged, ${r.failed.length} failed.`);
    } else if (job.state === "failed") status("Indexing failed: " + job.error, "error");
  };
  tick();
}

// -- token --------------------------------------------------------------------------------

function showLogin() {
  const dialog = $("#login");
  if (!dialog.open) dialog.showModal();
}

async function giveToken(token) {
  const r = await fetch("/api/session", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }) });
  return r.status === 204;
}

// -- routing ------------------------------------------------------------------------------

function route() {
  state.nav++;
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + path);
  let m;
  if (path === "/search" && params.get("q")) return searchWords(params.get("q"));
  if ((m = path.match(/^\/image\/(\d+)$/))) return imageView(m[1]);
  if ((m = path.match(/^\/cluster\/(\d+)$/))) return clusterView(m[1]);
  if (path === "/clusters") return clustersView();
  if (path === "/duplicates") return duplicatesView();
  if (path === "/map") return mapView();
  if (path === "/recommend") return recommend();
  if (path === "/upload") return state.lastUpload ? searchUpload(state.lastUpload) : home();
  return home();
}

async function start() {
  if (location.hash.startsWith("#token=")) {
    const token = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname + "#/");
    await giveToken(token);
  }
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("#q").value.trim();
    if (!q) return;
    const target = `#/search?q=${encodeURIComponent(q)}`;
    if (location.hash === target) searchWords(q); else location.hash = target;
  });
  $("#upload").addEventListener("change", (e) => { searchUpload(e.target.files[0]); e.target.value = ""; });
  $("#index-button").addEventListener("click", startIndexing);
  $("#tray-go").addEventListener("click", () => { location.hash = "#/recommend"; recommend(); });
  $("#tray-clear").addEventListener("click", () => { state.like.clear(); state.unlike.clear(); renderTray(); });
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (await giveToken($("#login-token").value)) { $("#login").close(); route(); }
    else $("#login-error").textContent = "That is not this server's token.";
  });
  let depth = 0;
  const hint = $("#drop-hint");
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; hint.hidden = false; });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) hint.hidden = true; });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault(); depth = 0; hint.hidden = true;
    const file = [...(e.dataTransfer.files || [])].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
    if (file) searchUpload(file);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) { e.preventDefault(); searchUpload(item.getAsFile()); }
  });
  window.addEventListener("hashchange", route);
  try {
    const session = await (await fetch("/api/session")).json();
    if (session.token_required && !session.authenticated) { showLogin(); return; }
    const job = await api("/index");
    if (job.state === "running") followIndexing();
  } catch (e) { fail(e); }
  route();
}

document.addEventListener("DOMContentLoaded", start);
