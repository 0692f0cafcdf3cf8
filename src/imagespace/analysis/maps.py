"""A 2-D map of a collection: thumbnails placed where their vectors fall.

The layout is UMAP (cosine) of the vectors after PCA to 50 dimensions, fitted on at most
``max_points`` images: a large collection is sampled, since a person can see a few thousand
positions at most and UMAP on a sample of 5,000 takes seconds where 100,000 would take
minutes. The picture is then gridded: every cell of the grid shows one image, matched to
the cells so that each lands as near as it can to where its vector fell. umap-learn compiles its kernels with numba; the cache
is turned on (in imagespace's cache folder), and the neighbour graph is computed exactly
with NumPy and handed to UMAP, which skips the kernels that were compiled anew each run.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from pathlib import Path

import numpy as np

from ..collection import Collection
from ..atomic import atomic_write, write_text_atomic
from ._threads import single_threaded, worker_threads

MAX_POINTS = 5_000
GRID = 32  # cells per side: at most 1,024 thumbnails
THUMB = 64  # pixels per cell side
_PCA_DIMS = 50

log = logging.getLogger(__name__)


def layout(collection: Collection, max_points: int = MAX_POINTS, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, xy) for up to ``max_points`` images, xy scaled to [0, 1] on both axes."""
    # Pick the sample by id first and read only its vectors: 100,000 rows of 1,280 floats
    # are half a gigabyte that the layout never looks at.
    collection.require_images()
    all_ids = np.asarray(collection.ids(), dtype=np.int64)
    rng = np.random.default_rng(seed)
    if len(all_ids) > max_points:
        all_ids = np.sort(rng.choice(all_ids, max_points, replace=False))
    ids, vectors = collection.vectors(all_ids.tolist())
    with single_threaded():
        xy = _embed_2d(vectors, seed)
    lo, hi = xy.min(0), xy.max(0)
    xy = (xy - lo) / np.maximum(hi - lo, 1e-9)
    return ids, xy.astype(np.float32)


def _embed_2d(vectors: np.ndarray, seed: int) -> np.ndarray:
    n = len(vectors)
    if n == 1:
        return np.zeros((1, 2), dtype=np.float32)
    if n < 4:
        # Too few points for a neighbourhood graph: the first two principal axes say it all.
        centred = vectors - vectors.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        xy = u[:, :2] * s[:2]
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    from sklearn.decomposition import PCA

    reduced = PCA(min(_PCA_DIMS, n - 1, vectors.shape[1]), random_state=seed).fit_transform(vectors)
    try:
        return _umap(reduced, seed)
    except ImportError:
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(reduced)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    if "NUMBA_CACHE_DIR" not in os.environ:
        from ..models.cache import cache_dir

        folder = cache_dir().parent / "numba"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(folder)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's notes on n_jobs with a fixed seed
        import umap

        k = min(15, len(x) - 1)
        reducer = umap.UMAP(n_neighbors=k, min_dist=0.1, metric="cosine", random_state=seed,
                            init="random" if len(x) < 10 else "spectral", precomputed_knn=_exact_knn(x, k))
        return reducer.fit_transform(x)


def _exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """UMAP's neighbour graph, exact, by blocks of cosine products (self first, distance 0).

    Handing it to UMAP skips its approximate neighbour search, whose numba kernels are
    compiled anew in every process: measured on 5,000 points, 58-68 s with it against 20 s
    without, and exact neighbours of a sample are a matter of a few seconds of NumPy.
    """
    xn = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    n = len(xn)
    idx = np.empty((n, k), dtype=np.int32)
    dist = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, 2048):
        sims = xn[start : start + 2048] @ xn.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = np.inf  # each point is its own first neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(part, np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable"), 1)
        idx[start : start + len(sims)] = top
        d = np.maximum(1.0 - np.take_along_axis(sims, top, 1), 0.0)
        d[:, 0] = 0.0
        dist[start : start + len(sims)] = d
    return idx, dist, None


def render_map(
    collection: Collection,
    out_path: str | os.PathLike[str],
    *,
    max_points: int = MAX_POINTS,
    grid: int = GRID,
    thumb: int = THUMB,
) -> Path:
    """Write the map as a PNG picture or a self-contained HTML page (by the file's suffix)."""
    out = Path(out_path)
    kind = out.suffix.lower()
    if kind not in (".png", ".html", ".htm"):
        raise ValueError(f"the map is written as .png or .html, not {out.suffix or 'a file without suffix'!r}")
    ids, xy = layout(collection, max_points)
    grid = max(1, min(grid, int(np.ceil(np.sqrt(len(ids))))))
    cells = _grid_assign(ids, xy, grid)
    rows = collection.rows(cells.values())
    thumbs = _thumbnails({c: rows[i].path for c, i in cells.items() if i in rows}, thumb)
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".png":
        _write_png(out, thumbs, grid, thumb)
    else:
        _write_html(out, thumbs, {c: rows[i] for c, i in cells.items() if i in rows}, grid, thumb, len(collection), len(ids))
    return out


def _grid_assign(ids: np.ndarray, xy: np.ndarray, grid: int, seed: int = 0) -> dict[tuple[int, int], int]:
    """Fill the grid: one image per cell, each as close as it can be to where it fell.

    UMAP packs images of one kind into tight clumps, so "the image nearest each cell" left
    nine cells in ten empty on flowers12. Instead the images (a sample of one per cell when
    there are more) are assigned to cells by a minimum-cost matching on squared distance.
    """
    from scipy.optimize import linear_sum_assignment

    cells = grid * grid
    pick = np.arange(len(ids))
    if len(ids) > cells:
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), cells, replace=False))
    centres = np.stack(np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij"), -1).reshape(-1, 2)
    pts = xy[pick]
    # Stretch each axis by rank so the clumps spread over the square before matching.
    pts = np.stack([(np.argsort(np.argsort(pts[:, d])) + 0.5) / len(pts) for d in range(2)], 1) * 0.5 + pts * 0.5
    cost = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return {(int(c // grid), int(c % grid)): int(ids[pick[r]]) for r, c in zip(rows, cols)}


def _thumbnails(paths: dict[tuple[int, int], str], size: int):
    # Up to 1,024 files: Pillow decodes outside the GIL, so a thread per core shares them.
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from ..images import ImageError, load_pil

    def one(path: str):
        try:
            im = load_pil(path, max_side=size * 2)
        except ImageError as e:
            log.warning("map: skipping %s: %s", path, e)
            return None
        im.thumbnail((size - 2, size - 2), Image.Resampling.BILINEAR)
        return im

    cells = list(paths)
    with ThreadPoolExecutor(worker_threads()) as pool:
        images = list(pool.map(one, (paths[c] for c in cells)))
    return {c: im for c, im in zip(cells, images) if im is not None}


def _write_png(out: Path, thumbs: dict, grid: int, size: int) -> None:
    from PIL import Image

    canvas = Image.new("RGB", (grid * size, grid * size), (24, 24, 24))
    for (cx, cy), im in thumbs.items():
        x = cx * size + (size - im.width) // 2
        y = (grid - 1 - cy) * size + (size - im.height) // 2  # y up, as in a plot
        canvas.paste(im, (x, y))
    with atomic_write(out) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)


def _write_html(out: Path, thumbs: dict, rows: dict, grid: int, size: int, total: int, placed: int) -> None:
    side = grid * size
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>imagespace map</title><style>",
        "body{background:#181818;color:#ddd;font:14px sans-serif;margin:16px}",
        f"#map{{position:relative;width:{side}px;height:{side}px;background:#111}}",
        "#map img{position:absolute;border:1px solid #333}#map img:hover{transform:scale(2.5);z-index:9;border-color:#fff}",
        "</style></head><body>",
        f"<p>{len(thumbs)} thumbnails of {total} images (layout of {placed}); hover to enlarge, the title shows the file.</p>",
        "<div id='map'>",
    ]
    for (cx, cy), im in thumbs.items():
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        data = base64.b64encode(buf.getvalue()).decode()
        row = rows[(cx, cy)]
        title = html.escape(f"{row.path}\n{', '.join(t for t, _ in row.tags[:3])}", quote=True)
        x = cx * size + (size - im.width) // 2
        y = (grid - 1 - cy) * size + (size - im.height) // 2
        parts.append(f"<img style='left:{x}px;top:{y}px' width='{im.width}' height='{im.height}' title='{title}' src='data:image/jpeg;base64,{data}'>")
    parts.append("</div></body></html>")
    write_text_atomic(out, "\n".join(parts))
