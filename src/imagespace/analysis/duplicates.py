"""Near-duplicate images: the same picture resized, recompressed, cropped, rotated a little,
brightened, recoloured, mirrored, or with text or a border added.

Three stages, cheapest first:

1. identical bytes (the stored digest) are duplicates outright;
2. candidates: each image's nearest neighbours in the ANN index above a cosine threshold,
   so the work grows with the number of images, never with its square;
3. verification: the two images' local features (ORB) are matched and a homography is
   fitted with RANSAC, also against the mirrored image; enough geometric inliers means the
   same picture. Two photos of the same kind of flower look alike to the network (one global
   vector) but share no geometry, which is what tells them apart.

Measured on a flowers12 test set (960 photos plus 110 edited copies, with the photos of the
same species as distractors; see benchmarks/quality_analysis.py): one cosine threshold alone
gives recall 0.46 at precision 1.0 (at 0.95), while candidates at cosine 0.70 hold every true
pair (recall 1.0) and verification brings precision from 0.0008 to 0.981.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..collection import Collection
from ..index import open_index
from ._threads import worker_threads

# Candidates: nearest neighbours above this cosine go to verification. 0.70 kept every
# edited copy of the test set (0.80 lost 1.6% of them: crops and rotations move the vector).
CANDIDATE_SIMILARITY = 0.70
# Without verification the cosine alone decides; 0.95 kept precision above 0.9.
UNVERIFIED_SIMILARITY = 0.95
# Above this cosine two images are the same picture without looking: on flowers12 the
# same photo saved twice scores >= 0.998, two different photos at most 0.97.
CERTAIN_SIMILARITY = 0.99
NEIGHBOURS = 10
# RANSAC inliers of a homography for "same picture". On the flowers12 test set true pairs
# scored 41-950 (most above 300) and different photos of one species at most 28.
MIN_INLIERS = 30
# Verification works on images of this size: enough keypoints, bounded cost per image.
_VERIFY_SIDE = 512
_MIN_SIDE = 320
_FEATURES = 1000
_RATIO = 0.8
_RANSAC_PIXELS = 5.0
_CACHE_IMAGES = 4096
_BLOCK = 512  # candidate pairs per block: at most 1,024 images, well inside the cache


@dataclass
class DuplicateReport:
    groups: list[list[int]]
    stats: dict = field(default_factory=dict)


def find_duplicates(collection: Collection, threshold: float | None = None, verify: bool = True) -> list[list[int]]:
    """Groups of row ids that show the same picture; each group largest image first."""
    return duplicate_report(collection, threshold=threshold, verify=verify).groups


def duplicate_report(
    collection: Collection,
    threshold: float | None = None,
    verify: bool = True,
    *,
    neighbours: int = NEIGHBOURS,
    min_inliers: int = MIN_INLIERS,
    progress: bool = False,
) -> DuplicateReport:
    """:func:`find_duplicates` with what each stage found and what it cost."""
    if threshold is None:
        threshold = CANDIDATE_SIMILARITY if verify else UNVERIFIED_SIMILARITY
    stats: dict = {"images": len(collection), "threshold": threshold, "verify": verify}
    started = time.perf_counter()
    union = _UnionFind()

    exact = 0
    for ids in collection.same_digest_groups():
        for other in ids[1:]:
            union.join(ids[0], other)
            exact += 1
    stats["identical_pairs"] = exact

    # Stage costs are CPU seconds of this process: on a shared machine wall time says more
    # about the neighbours than about the work.
    t0 = time.process_time()
    candidates = _candidates(collection, threshold, neighbours)
    stats["candidate_pairs"] = len(candidates)
    stats["candidate_cpu_seconds"] = round(time.process_time() - t0, 3)

    t0 = time.process_time()
    accepted = 0
    if verify:
        verifier = _Verifier(min_inliers)
        certain, accepted = _verify(candidates, collection, union, verifier, progress)
        stats["certain_pairs"] = certain
        stats["verified_pairs"] = verifier.pairs
        stats["images_with_features"] = verifier.extracted
        stats["feature_cpu_seconds"] = round(verifier.feature_seconds, 3)
        stats["match_cpu_seconds"] = round(verifier.match_seconds, 3)
    else:
        for a, b in candidates:
            union.join(a, b)
            accepted += 1
    stats["accepted_pairs"] = accepted
    stats["verify_cpu_seconds"] = round(time.process_time() - t0, 3)

    groups = [g for g in union.groups() if len(g) > 1]
    info = collection.rows({i for g in groups for i in g})
    # The largest (most pixels, then most bytes) first: the copy worth keeping.
    for g in groups:
        g.sort(key=lambda i: (-(info[i].width * info[i].height), -info[i].size, info[i].path) if i in info else (0, 0, ""))
    groups.sort(key=lambda g: info[g[0]].path if g[0] in info else "")
    stats["groups"] = len(groups)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return DuplicateReport(groups, stats)


def _verify(candidates: dict[tuple[int, int], float], collection: Collection, union: _UnionFind,
            verifier: _Verifier, progress: bool) -> tuple[int, int]:
    """Join the candidate pairs that verification shows to be one picture: (certain, accepted).

    Pairs go in blocks, in id order so that an image's features are reused while cached;
    each block's features and matches run on a thread per core (OpenCV releases the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    todo = sorted(candidates.items())
    certain = accepted = 0
    with ThreadPoolExecutor(worker_threads()) as pool:
        for start in range(0, len(todo), _BLOCK):
            block: list[tuple[int, int]] = []
            for (a, b), sim in todo[start : start + _BLOCK]:
                if union.same(a, b):
                    continue  # already one group (e.g. through a third copy): nothing to learn
                if sim >= CERTAIN_SIMILARITY:
                    union.join(a, b)
                    certain += 1
                    continue
                block.append((a, b))
            rows = collection.rows({i for pair in block for i in pair})
            block = [(a, b) for a, b in block if a in rows and b in rows]
            verifier.prefetch([rows[i].path for i in sorted({i for pair in block for i in pair})], pool)
            found = pool.map(lambda pair: verifier.inliers(rows[pair[0]].path, rows[pair[1]].path), block)
            for (a, b), inliers in zip(block, found):
                if inliers >= verifier.min_inliers:
                    union.join(a, b)
                    accepted += 1
            if progress:
                print(f"imagespace: duplicates: verified {min(len(todo), start + _BLOCK)}/{len(todo)} candidate pairs",
                      file=sys.stderr)
    return certain, accepted


def _candidates(collection: Collection, threshold: float, neighbours: int) -> dict[tuple[int, int], float]:
    """Pairs (a < b) of nearest neighbours with cosine >= ``threshold``, from the ANN index."""
    index = open_index(collection)  # the index searches use: the graph, or the compressed one
    pairs: dict[tuple[int, int], float] = {}
    for ids, vectors in collection.iter_vectors(chunk=4096):
        found, sims = index.search(vectors, neighbours + 1)
        for r, me in enumerate(ids.tolist()):
            for j, s in zip(found[r].tolist(), sims[r].tolist()):
                if j < 0 or j == me or s < threshold:
                    continue
                key = (me, j) if me < j else (j, me)
                if s > pairs.get(key, -2.0):
                    pairs[key] = float(s)
    return pairs


class _Verifier:
    """Local features with a geometric check, features cached per image (bounded).

    Safe to call from several threads: each thread has its own OpenCV detector and matcher,
    and the cache and the counters are shared under a lock.
    """

    def __init__(self, min_inliers: int = MIN_INLIERS):
        import cv2

        cv2.setNumThreads(1)  # many tiny calls: threads inside OpenCV cost more than they give
        self.cv2 = cv2
        self.min_inliers = min_inliers
        self._local = threading.local()
        self._lock = threading.Lock()
        self.cache: OrderedDict[str, tuple | None] = OrderedDict()
        self.pairs = 0
        self.extracted = 0
        self.feature_seconds = 0.0
        self.match_seconds = 0.0

    def _tools(self):
        tools = getattr(self._local, "tools", None)
        if tools is None:
            tools = self._local.tools = (self.cv2.ORB_create(nfeatures=_FEATURES), self.cv2.BFMatcher(self.cv2.NORM_HAMMING))
        return tools

    def prefetch(self, paths: list[str], pool) -> None:
        """Features of every path not cached yet, computed on the pool's threads."""
        with self._lock:
            missing = [p for p in dict.fromkeys(paths) if p not in self.cache]
        for _ in pool.map(self._features, missing):
            pass

    def inliers(self, path_a: str, path_b: str) -> int:
        fa, fb = self._features(path_a), self._features(path_b)
        if fa is None or fb is None:
            return 0
        t0 = time.thread_time()
        # b against a, and b against mirrored a: a mirrored copy has no direct match.
        best = self._match(fa[0], fa[1], fb[0], fb[1])
        if best < self.min_inliers:
            best = max(best, self._match(fa[2], fa[3], fb[0], fb[1]))
        with self._lock:
            self.pairs += 1
            self.match_seconds += time.thread_time() - t0
        return best

    def _features(self, path: str):
        with self._lock:
            if path in self.cache:
                self.cache.move_to_end(path)
                return self.cache[path]
        from ..images import ImageError, load_pil

        t0 = time.thread_time()
        try:
            im = load_pil(path, max_side=_VERIFY_SIDE)
        except ImageError:
            feats = None  # unreadable now: it cannot be shown to be a duplicate
        else:
            if max(im.size) < _MIN_SIDE:
                # Small images give too few keypoints at their own size.
                scale = _MIN_SIDE / max(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            grey = np.asarray(im.convert("L"))
            feats = (*self._detect(grey), *self._detect(np.ascontiguousarray(grey[:, ::-1])))
        with self._lock:
            self.extracted += feats is not None
            self.feature_seconds += time.thread_time() - t0
            self.cache[path] = feats
            if len(self.cache) > _CACHE_IMAGES:
                self.cache.popitem(last=False)
        return feats

    def _detect(self, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        kp, desc = self._tools()[0].detectAndCompute(grey, None)
        pts = np.float32([k.pt for k in kp]) if kp else np.zeros((0, 2), np.float32)
        return pts, desc

    def _match(self, pa, da, pb, db) -> int:
        # Inliers are a subset of the matches that pass the ratio test: with fewer of those
        # than the bar, RANSAC (which runs its full 2,000 rounds on unrelated photos) is skipped.
        need = max(8, self.min_inliers)
        if da is None or db is None or len(da) < need or len(db) < need:
            return 0
        matcher = self._tools()[1]
        good = [m[0] for m in matcher.knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < _RATIO * m[1].distance]
        if len(good) < need:
            return 0
        src = pa[[g.queryIdx for g in good]]
        dst = pb[[g.trainIdx for g in good]]
        _, mask = self.cv2.findHomography(src, dst, self.cv2.RANSAC, _RANSAC_PIXELS)
        return 0 if mask is None else int(mask.sum())


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def same(self, a: int, b: int) -> bool:
        return self.find(a) == self.find(b)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for a in list(self.parent):
            out.setdefault(self.find(a), []).append(a)
        return list(out.values())
