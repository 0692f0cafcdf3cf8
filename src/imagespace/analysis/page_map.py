"""The web page's map as a grid that fills the window, with regions labelled from tags.

UMAP packs images of one kind into tight clumps with empty space between them: drawn where
they fell, 240 flowers showed as about ten small overlapping stacks on a mostly empty canvas.
As in the PNG atlas (``maps.render_map``), every image here gets its own cell of a grid of
the window's shape, as near as it can to where it fell: the first view is full and nothing
overlaps. Regions are the layout's clumps (k-means on where the images fell, before they
were spread over the grid, k chosen by silhouette), each named by the tags that tell it
apart, as clusters are (``clusters.label_groups``), its label on one of its own images.
Grouping the grid's cells instead cut clumps in two and joined halves of others: labels
such as "ocean liner, pizza" over a region of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .clusters import label_groups

# Up to this many images, cells are matched to images by a minimum-cost assignment (the
# atlas's method, a 1,024 x 1,024 problem in well under a second); beyond it, by sorting
# (columns by x, then rows by y within each column), which keeps neighbours near in O(n log n).
_EXACT_UP_TO = 1024


@dataclass
class Region:
    label: str
    x: float  # where the label goes, in cells from the left: the centre of a member's cell
    y: float  # in cells from the top
    size: int
    members: list[int]  # positions in the layout's order


@dataclass
class MapGrid:
    cols: int
    rows: int
    cells: np.ndarray  # (n, 2) int: column and row of each image, in the order of the layout
    regions: list[Region]


def grid_shape(n: int, aspect: float) -> tuple[int, int]:
    """Columns and rows, at least ``n`` cells, columns / rows about ``aspect`` (width / height)."""
    aspect = min(max(aspect, 0.2), 5.0)
    cols = max(1, round(math.sqrt(n * aspect)))
    rows = max(1, math.ceil(n / cols))
    while cols * rows < n:
        cols += 1
    return cols, rows


def page_map(xy: np.ndarray, tags: list[list[tuple[str, float]]], aspect: float = 1.0, seed: int = 0) -> MapGrid:
    """Cells for the layout ``xy`` (n, 2) in [0, 1], and labelled regions; ``tags`` per image."""
    n = len(xy)
    cols, rows = grid_shape(n, aspect)
    cells = _assign(np.asarray(xy, dtype=np.float64), cols, rows)
    groups = _regions(np.asarray(xy, dtype=np.float64), n, seed)
    names = label_groups([list(g) for g in groups], {i: tags[i] for i in range(n)}) if groups else []
    regions = []
    for g, name in zip(groups, names):
        # On the member's cell nearest the region's middle: a clump's centre can fall on
        # another clump's images.
        middle = cells[g].mean(0)
        at = cells[g][np.argmin(((cells[g] - middle) ** 2).sum(1))]
        regions.append(Region(label=name, x=float(at[0] + 0.5), y=float(at[1] + 0.5), size=len(g),
                              members=[int(i) for i in g]))
    return MapGrid(cols, rows, cells, regions)


def _stretched(xy: np.ndarray) -> np.ndarray:
    """Half the position, half its rank on each axis: clumps spread over the square."""
    n = len(xy)
    ranks = np.stack([(np.argsort(np.argsort(xy[:, d], kind="stable"), kind="stable") + 0.5) / n for d in range(2)], 1)
    return ranks * 0.5 + xy * 0.5


def _assign(xy: np.ndarray, cols: int, rows: int) -> np.ndarray:
    n = len(xy)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pts = _stretched(xy)
    if n <= _EXACT_UP_TO:
        from scipy.optimize import linear_sum_assignment

        cx, cy = np.meshgrid((np.arange(cols) + 0.5) / cols, (np.arange(rows) + 0.5) / rows, indexing="ij")
        centres = np.stack([cx.reshape(-1), cy.reshape(-1)], 1)
        cost = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        picked, cell = linear_sum_assignment(cost)
        out = np.zeros((n, 2), dtype=np.int64)
        out[picked, 0] = cell // rows
        out[picked, 1] = cell % rows
        return out
    out = np.zeros((n, 2), dtype=np.int64)
    by_x = np.argsort(pts[:, 0], kind="stable")
    per_col = math.ceil(n / cols)
    for c in range(cols):
        members = by_x[c * per_col : (c + 1) * per_col]
        if not len(members):
            break
        members = members[np.argsort(pts[members, 1], kind="stable")]
        # spread the column's images over its rows, keeping their order
        slots = np.floor(np.arange(len(members)) * rows / len(members)).astype(np.int64)
        out[members, 0] = c
        out[members, 1] = slots
    return out


def _regions(points: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """The layout's clumps: k-means on the 2-D positions, k (2 to 12, at most n / 3) the one
    with the best silhouette; then any region that itself splits cleanly is split. Silhouette
    over the whole map favours coarse cuts: with flowers far from clothes, three tight clumps
    of hats, trousers and shoes scored best as one region (0.87 against 0.85 split)."""
    if n < 6:
        return [np.arange(n)] if n else []
    groups = _best_kmeans(points, np.arange(n), seed, max_k=12)
    out: list[np.ndarray] = []
    while groups:
        g = groups.pop()
        parts = _best_kmeans(points, g, seed, max_k=4, min_score=_CLEAN_SPLIT) if len(g) >= 2 * _MIN_REGION else [g]
        if len(parts) > 1 and len(out) + len(groups) + len(parts) <= 12:
            groups.extend(parts)
        else:
            out.append(g)
    return sorted(out, key=lambda g: int(g[0]))


# A region splits again when its own best k-means cut has at least this silhouette: the
# hats, trousers and shoes region of tests/test_page_answers.py split at 0.78, while a clump
# of one kind there, cut, scored at most 0.49 (60 random points of a Gaussian, a disc or a
# square: 0.36-0.43).
_CLEAN_SPLIT = 0.7
_MIN_REGION = 5


def _best_kmeans(points: np.ndarray, members: np.ndarray, seed: int, *, max_k: int,
                 min_score: float = -2.0) -> list[np.ndarray]:
    """``members`` cut by the k-means (k from 2 to ``max_k``, at most a third of them) with the
    best silhouette, if it reaches ``min_score``; else ``[members]``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = points[members]
    best, best_score = None, min_score
    for k in range(2, int(min(max_k, len(members) // 3)) + 1):
        assign = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
        if len(set(assign.tolist())) < 2:
            continue
        score = silhouette_score(x, assign, sample_size=min(len(x), 2000), random_state=seed)
        if score > best_score:
            best, best_score = assign, score
    if best is None:
        return [members]
    return [members[best == j] for j in range(int(best.max()) + 1) if (best == j).any()]
