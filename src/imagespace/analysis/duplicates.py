"""Duplicates a user can act on: copies (safe to delete one), retakes (pick the best), and
look-alikes (never grouped).

Four stages, cheapest first:

1. identical bytes (the stored digest, then the bytes themselves) are copies outright;
2. candidates: each image's nearest neighbours, a fixed number of them above a low cosine
   floor, so that heavily edited copies (a border, a caption, a crop, a rotation move the
   global vector far) are still looked at, while the pairs grow with the number of images,
   never with its square (exact up to ``EXACT_CANDIDATES`` rows, from the ANN index beyond);
3. each candidate pair is placed in one tier by :mod:`.copies` (the shape of the fitted
   transform, the agreement of the aligned pixels, EXIF capture times) with a reason. Each
   image's features are computed once: from the grey image indexing kept, else by decoding
   the file; then kept in memory up to a byte budget and beyond it in the pass's scratch
   file, so no image is decoded twice in a pass; the newest go to the feature store beside
   the collection (:mod:`imagespace.feature_store`) for later passes;
4. groups are made only of verified pairs of one tier, as stars around one member: every
   member of a copy group was checked to be a copy of the kept one, so nothing joins a
   group by chaining through pairs that were never compared.

Which copy to keep is decided pair by pair (:func:`.copies.original_of`): the member that
wins most comparisons in its group is kept; each other member is listed with the one it
copies and why it is not the one kept.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..collection import Collection, Row
from ..feature_store import FeatureStore, ScratchFile, unpack_grey
from ..images import CaptureFacts, ImageError, capture_facts, load_pil, read_bytes, verify_grey
from ..index import open_index
from ._threads import worker_threads
from .copies import (REGION_SIDE, SIGNALS, VERIFY_SIDE, FeatureMaker, ImageFeatures, PairChecker, PairVerdict,
                     differs_in_region, needs_band_ratio, original_of, region_note)
from .enlargement import enlargement_ratio
from .pair_cache import ImageSummary, PairCache

# Candidates: up to NEIGHBOURS nearest neighbours of each image with cosine at least
# CANDIDATE_SIMILARITY. TODO tuned
CANDIDATE_SIMILARITY = 0.50
NEIGHBOURS = 10
# Images too plain or too small for local features (fewer than _PLAIN_POINTS points, e.g.
# a 100x75 thumbnail of a smooth picture) are copies above this cosine when their capture
# times do not differ: on flowers12 the same photo saved twice scores >= 0.998, two
# different photos at most 0.97.
CERTAIN_SIMILARITY = 0.99
_PLAIN_POINTS = 60
# Without verification the cosine alone decides; 0.95 kept precision above 0.9.
UNVERIFIED_SIMILARITY = 0.95
# Up to this many rows candidates come from an exact all-against-all product (about 1 ms of
# CPU an image at the limit); beyond, from the ANN index.
EXACT_CANDIDATES = 20_000
# Features held in memory (about 100 KB a camera photo, 28 KB a small image); beyond it
# they are read back from the pass's scratch file rather than computed again.
_CACHE_BYTES = 512 * 1024 * 1024
# The feature store's name for what pack_features writes: a new layout takes a new name.
_FEATURES = "features2"
_BLOCK = 512  # candidate pairs per block: at most 1,024 images, well inside the cache
TIERS = ("copy", "retake", "all")

log = logging.getLogger(__name__)


@dataclass
class Pair:
    a: int
    b: int
    similarity: float  # cosine of the two global vectors (1.0 for identical bytes)
    verdict: PairVerdict

    def to_dict(self, paths: dict[int, str]) -> dict:
        v = self.verdict
        return {"a": paths.get(self.a, str(self.a)), "b": paths.get(self.b, str(self.b)), "tier": v.tier,
                "score": round(float(v.score), 4), "similarity": round(float(self.similarity), 4), "reason": v.reason}


@dataclass
class DuplicateReport:
    groups: list[list[int]]  # copy groups, the one to keep first
    retakes: list[list[int]] = field(default_factory=list)  # retake groups, the best shot first
    pairs: dict[tuple[int, int], Pair] = field(default_factory=dict)  # every verified pair, a < b
    why: dict[int, tuple[int, str]] = field(default_factory=dict)  # listed copy -> (the kept one, reason)
    stats: dict = field(default_factory=dict)
    # Copies that differ from the kept one in a region (a caption, marks, a recoloured part):
    # in the group, but kept too, never listed -> (the kept one, reason).
    keep_too: dict[int, tuple[int, str]] = field(default_factory=dict)

    def pair(self, a: int, b: int) -> Pair | None:
        return self.pairs.get((a, b) if a < b else (b, a))


def find_duplicates(collection: Collection, threshold: float | None = None, verify: bool = True) -> list[list[int]]:
    """Groups of row ids that are copies of one picture; each group the one to keep first."""
    return duplicate_report(collection, threshold=threshold, verify=verify).groups


def duplicate_report(
    collection: Collection,
    threshold: float | None = None,
    verify: bool = True,
    *,
    neighbours: int = NEIGHBOURS,
    progress: bool = False,
) -> DuplicateReport:
    """Copies and retakes, every pair with its tier, score and reason, and what was done.

    Verdicts and image facts are kept in a cache file beside the collection
    (:mod:`.pair_cache`), and each image's features in another (:mod:`imagespace.feature_store`),
    which indexing seeds with the grey images it decoded anyway."""
    if threshold is None:
        threshold = CANDIDATE_SIMILARITY if verify else UNVERIFIED_SIMILARITY
    stats: dict = {"images": len(collection), "threshold": threshold, "verify": verify}
    started = time.perf_counter()

    identical = _identical_pairs(collection)
    stats["identical_pairs"] = len(identical)

    candidates = candidate_pairs(collection, threshold, neighbours)
    for key in identical:
        candidates.pop(key, None)
    stats["candidate_pairs"] = len(candidates)

    pairs: dict[tuple[int, int], Pair] = {
        key: Pair(*key, 1.0, PairVerdict("copy", 1.0, "identical files (the same bytes)", agreement=1.0, covered_a=1.0, covered_b=1.0))
        for key in identical
    }
    rows = collection.rows({i for key in list(candidates) + list(identical) for i in key})
    cache = PairCache(collection.root if verify else None)
    store = FeatureStore(collection.root if verify else None)
    scratch = ScratchFile(collection.root) if verify else None
    verifier = _Verifier(SIGNALS, cache, store, scratch)
    try:
        if verify:
            _verify(candidates, rows, pairs, verifier, progress)
            stats["cached_pairs"] = verifier.cached
            stats["images_with_features"] = verifier.extracted
            stats["images_features_stored"] = verifier.stored
            stats["images_grey_from_indexing"] = verifier.from_indexing
            stats["enlargement_checks"] = verifier.enlargement_checks
        else:
            for (a, b), sim in candidates.items():
                pairs[(a, b)] = Pair(a, b, sim, PairVerdict("copy", sim, f"global vectors at cosine {sim:.3f} (not verified)"))
        groups, why, keep_too = _copy_groups(pairs, rows, verifier, verify)
        retakes = _retake_groups(pairs, rows, verifier, groups)
        verifier.flush()
        verifier.keep_features()
    finally:
        cache.close()
        store.close()
        if scratch is not None:
            scratch.close()
    tiers = [p.verdict.tier for p in pairs.values()]
    stats.update({f"{t}_pairs": tiers.count(t) for t in ("copy", "retake", "similar")})
    stats["verified_pairs"] = verifier.pairs
    stats["groups"] = len(groups)
    stats["retake_groups"] = len(retakes)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    stats["copies_differing_in_a_region"] = len(keep_too)
    return DuplicateReport(groups, retakes, pairs, why, stats, keep_too)


# -- candidates -------------------------------------------------------------------------


def _identical_pairs(collection: Collection) -> dict[tuple[int, int], float]:
    """Pairs of rows whose files hold the same bytes. The digest finds them; the bytes are
    compared too, because the digest (XXH3) is not made to resist files crafted to collide,
    and identical files are offered for deletion without any other check."""
    out: dict[tuple[int, int], float] = {}
    for group in collection.same_digest_groups():
        ids = sorted(group)
        rows = collection.rows(ids)
        try:
            first = read_bytes(rows[ids[0]].path)
        except ImageError:
            continue  # unreadable now: the candidates and the checks decide
        for other in ids[1:]:
            try:
                same = read_bytes(rows[other].path) == first
            except ImageError:
                same = False
            if same:
                out[(ids[0], other)] = 1.0
    return out



def candidate_pairs(collection: Collection, threshold: float, neighbours: int) -> dict[tuple[int, int], float]:
    """Pairs (a < b) of nearest neighbours with cosine >= ``threshold``.

    Every image asks for its neighbours, so this is an all-against-all search. Up to
    ``EXACT_CANDIDATES`` rows it is exact, as one matrix product in blocks (the index's
    exact mode compares query by query: 23 s at 10,000 rows, quadratic); beyond, the ANN
    index searches use (graph or compressed), whose cost per image grows with the log of
    the size."""
    if collection.count(collection.model_id) <= EXACT_CANDIDATES:
        ids, vectors = collection.vectors()  # the stored vectors, as the index searches them
        found, sims = _exact_neighbours(vectors, neighbours)
        found = ids[found]
        if not collection.pipeline.identity:
            sims = _raw_cosines(collection, ids, found)  # scores on the network's own vectors, as below
        return _pairs_of(ids.tolist(), found, sims, threshold)
    index = open_index(collection)  # the index searches use: the graph, or the compressed one
    pairs: dict[tuple[int, int], float] = {}
    post_processed = not collection.pipeline.identity
    for ids, vectors in collection.iter_vectors(chunk=4096):
        found, sims = index.search(vectors, neighbours + 1)
        if post_processed:
            # The cut-offs here (and CERTAIN/UNVERIFIED_SIMILARITY) were measured on the
            # network's own cosines: centring lowers an edited copy's cosine far more than
            # a resaved photo's (clothing10/flowers12 copies: 5th percentile 0.88/0.79 raw,
            # 0.74/0.62 centred). The neighbours come from the index; their scores are raw.
            sims = _raw_cosines(collection, ids, found)
        pairs.update((k, v) for k, v in _pairs_of(ids.tolist(), found, sims, threshold).items() if v > pairs.get(k, -2.0))
    return pairs


def _exact_neighbours(vectors: np.ndarray, k: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cosines of each row's ``k`` nearest other rows, best first."""
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n = len(vectors)
    k = min(k, n - 1)
    found = np.zeros((n, max(k, 0)), dtype=np.int64)
    sims = np.zeros((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return found, sims
    for start in range(0, n, block):
        s = vectors[start : start + block] @ vectors.T
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf  # not its own neighbour
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        found[start : start + block] = np.take_along_axis(top, order, axis=1)
        sims[start : start + block] = np.take_along_axis(s, found[start : start + block], axis=1)
    return found, sims


def _pairs_of(ids: list[int], found: np.ndarray, sims: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    pairs: dict[tuple[int, int], float] = {}
    for r, me in enumerate(ids):
        for j, s in zip(found[r].tolist(), sims[r].tolist()):
            if j < 0 or j == me or s < threshold:
                continue
            key = (me, j) if me < j else (j, me)
            if s > pairs.get(key, -2.0):
                pairs[key] = float(s)
    return pairs


def _raw_cosines(collection: Collection, ids: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Cosines of the network's own vectors of each row ``ids[r]`` and its ``found[r]``."""
    wanted = sorted(set(ids.tolist()) | {int(j) for j in found.reshape(-1).tolist() if j >= 0})
    got_ids, raw = collection.raw_vectors(wanted)
    pos = {int(i): p for p, i in enumerate(got_ids.tolist())}
    out = np.full(found.shape, -2.0, dtype=np.float32)
    for r, me in enumerate(ids.tolist()):
        if me not in pos:
            continue
        cols = [c for c, j in enumerate(found[r].tolist()) if j >= 0 and int(j) in pos]
        if cols:
            out[r, cols] = raw[[pos[int(found[r, c])] for c in cols]] @ raw[pos[me]]
    return out


# -- verification -----------------------------------------------------------------------


def _verify(candidates: dict[tuple[int, int], float], rows: dict[int, Row], pairs: dict, verifier: _Verifier,
            progress: bool) -> None:
    """Every candidate pair gets a verdict. Pairs go in blocks, in id order, so an image's
    features are reused while cached; each block runs on a thread per core (OpenCV releases
    the GIL)."""
    todo = sorted((key, sim) for key, sim in candidates.items() if key[0] in rows and key[1] in rows)
    with ThreadPoolExecutor(worker_threads()) as pool:
        for start in range(0, len(todo), _BLOCK):
            block = []
            for (a, b), sim in todo[start : start + _BLOCK]:
                known = verifier.known(rows[a], rows[b])
                if known is not None:
                    pairs[(a, b)] = Pair(a, b, sim, known)
                else:
                    block.append(((a, b), sim))
            verifier.prefetch([rows[i] for i in sorted({i for (key, _) in block for i in key})], pool)
            found = pool.map(lambda item: verifier.compare(rows[item[0][0]], rows[item[0][1]]), block)
            for ((a, b), sim), verdict in zip(block, found):
                if verdict.tier == "similar" and sim >= CERTAIN_SIMILARITY and verifier.too_plain(rows[a], rows[b]):
                    verdict = PairVerdict("copy", sim, f"too few details to compare, but the global vectors are at cosine {sim:.3f}",
                                          agreement=sim, covered_a=1.0, covered_b=1.0)
                pairs[(a, b)] = Pair(a, b, sim, verdict)
            verifier.flush()
            if progress:
                log.info("duplicates: verified %d/%d candidate pairs", min(len(todo), start + _BLOCK), len(todo))


class _Verifier:
    """Features and capture facts per image (in memory up to a byte budget, then in the
    pass's scratch file), and pair verdicts.

    Safe to call from several threads: each thread has its own OpenCV tools, and the cache
    and the counters are shared under a lock.
    """

    def __init__(self, signals: tuple[str, ...] = SIGNALS, cache: PairCache | None = None,
                 features: FeatureStore | None = None, scratch: ScratchFile | None = None):
        import cv2

        self.signals = signals
        self.store = cache or PairCache(None)
        self.feature_store = features or FeatureStore(None)
        self.scratch = scratch  # None: features stay in memory only
        self.summaries: dict[int, ImageSummary | None] = {}
        self._new_pairs: list[tuple[str, str, PairVerdict]] = []
        self._new_images: list[tuple[str, ImageSummary]] = []
        self.cached = 0
        cv2.setNumThreads(1)  # many tiny calls: threads inside OpenCV cost more than they give
        self._local = threading.local()
        self._lock = threading.Lock()
        self.cache: OrderedDict[int, tuple[ImageFeatures | None, CaptureFacts]] = OrderedDict()
        self._cache_bytes = 0
        self.pairs = self.extracted = self.stored = self.from_indexing = 0
        self.enlargement_checks = 0

    def _tools(self) -> tuple[FeatureMaker, PairChecker]:
        tools = getattr(self._local, "tools", None)
        if tools is None:
            tools = self._local.tools = (FeatureMaker(), PairChecker(signals=self.signals))
        return tools

    def prefetch(self, rows: list[Row], pool) -> None:
        with self._lock:
            missing = [r for r in rows if r.id not in self.cache]
        for _ in pool.map(self.features, missing):
            pass

    def features(self, row: Row) -> tuple[ImageFeatures | None, CaptureFacts]:
        with self._lock:
            if row.id in self.cache:
                self.cache.move_to_end(row.id)
                return self.cache[row.id]
        kept = self.scratch.get(row.digest) if self.scratch is not None else None
        kept = kept or self.feature_store.get(_FEATURES, row.digest)
        if kept is not None:
            feats, facts = unpack_features(kept)
            with self._lock:
                self.stored += 1
        else:
            feats, facts = self._compute(row)
        with self._lock:
            if row.id not in self.cache:
                self.cache[row.id] = (feats, facts)
                self._cache_bytes += _nbytes(feats)
            if feats is not None and row.id not in self.summaries:
                self.summaries[row.id] = summary = ImageSummary(feats.border, feats.sharpness, feats.clipped, facts)
                self._new_images.append((row.digest, summary))
            while self._cache_bytes > _CACHE_BYTES and len(self.cache) > 1:
                _, (old, _) = self.cache.popitem(last=False)
                self._cache_bytes -= _nbytes(old)
        return feats, facts

    def _compute(self, row: Row) -> tuple[ImageFeatures | None, CaptureFacts]:
        facts = capture_facts(row.path)
        seeded = self.feature_store.get("grey", row.digest)
        try:
            grey = unpack_grey(seeded) if seeded is not None else verify_grey(row.path, VERIFY_SIDE)
        except ImageError:
            return None, facts  # unreadable now: it cannot be shown to be a duplicate
        feats = self._tools()[0](grey, (row.width or grey.shape[1], row.height or grey.shape[0]))
        if self.scratch is not None:  # at once: memory may let it go before the block ends
            self.scratch.put([(row.digest, pack_features(feats, facts))])
        with self._lock:
            self.extracted += 1
            self.from_indexing += seeded is not None
        return feats, facts

    def compare(self, a: Row, b: Row) -> PairVerdict:
        (fa, xa), (fb, xb) = self.features(a), self.features(b)
        if fa is None or fb is None:
            return PairVerdict("similar", 0.0, "one of the two files could not be read")
        verdict = self._tools()[1].compare(fa, fb, xa, xb)
        if needs_band_ratio(fa, fb, xa, xb, verdict):
            # Which has more pixels is decided later; whether they hold more detail needs
            # both files at full size, so it is measured now, once, and kept with the verdict
            # (only when the choice of the one to keep can come to it).
            large, small = (b, a) if verdict.scale > 1 else (a, b)
            verdict.band_ratio = enlargement_ratio(large.path, small.path, max(verdict.scale, 1 / verdict.scale))
            with self._lock:
                self.enlargement_checks += 1
        if verdict.tier == "copy" and getattr(verdict, "homography", None) is not None:
            # Where the two differ: evenly (an edit of the whole) or in one region (a caption,
            # marks, a recoloured part: information one of them lacks). Sharper than the thumbnails.
            try:
                pixels_a = np.asarray(load_pil(a.path, max_side=REGION_SIDE).convert("RGB"))
                pixels_b = np.asarray(load_pil(b.path, max_side=REGION_SIDE).convert("RGB"))
            except ImageError:
                pass
            else:
                verdict.region = round(self._tools()[1].region(pixels_a, pixels_b, fa, fb, verdict)[0], 4)
                if differs_in_region(verdict):
                    verdict.reason = f"{verdict.reason}; {region_note(verdict)}"
        with self._lock:
            self.pairs += 1
            self._new_pairs.append((a.digest, b.digest, verdict))
        return verdict

    def too_plain(self, a: Row, b: Row) -> bool:
        """Either image has too few local features to verify, and no capture times differ."""
        (fa, xa), (fb, xb) = self.features(a), self.features(b)
        if fa is None or fb is None:
            return False
        if xa.taken is not None and xb.taken is not None and xa.taken != xb.taken:
            return False
        return min(len(fa.points), len(fb.points)) < _PLAIN_POINTS

    def known(self, a: Row, b: Row) -> PairVerdict | None:
        """The verdict of an earlier run on these two files' contents, if kept."""
        v = self.store.pair(a.digest, b.digest)
        if v is not None:
            self.cached += 1
        return v

    def summary(self, row: Row) -> ImageSummary | None:
        """Border, sharpness and capture facts: from this run, the cache, or the file."""
        with self._lock:
            if row.id in self.summaries:
                return self.summaries[row.id]
        found = self.store.image(row.digest)
        if found is None:
            self.features(row)  # records the summary
            with self._lock:
                return self.summaries.get(row.id)
        with self._lock:
            self.summaries[row.id] = found
        return found

    def flush(self) -> None:
        with self._lock:
            pairs, images = self._new_pairs, self._new_images
            self._new_pairs, self._new_images = [], []
        self.store.put_pairs(pairs)
        self.store.put_images(images)

    def keep_features(self) -> None:
        """Into the feature store, for later passes: the features this pass computed last,
        as many as its limit holds (each in place of the image's grey, now of no more use)."""
        if self.scratch is None:
            return
        newest = self.scratch.newest(self.feature_store.limit)
        for start in range(0, len(newest), 1024):
            self.feature_store.put(_FEATURES, newest[start : start + 1024], replaces="grey")


# -- features kept between runs -----------------------------------------------------------

_ARRAYS = ("points", "descriptors", "points_mirrored", "descriptors_mirrored", "thumb_grey")


def pack_features(feats: ImageFeatures, facts: CaptureFacts) -> bytes:
    """An image's features and capture facts as bytes: a JSON head, then the raw arrays."""
    arrays = {k: getattr(feats, k) for k in _ARRAYS}
    head = {
        "full_size": list(feats.full_size), "size": list(feats.size), "sharpness": feats.sharpness,
        "clipped": feats.clipped, "border": bool(feats.border), "facts": asdict(facts),
        "arrays": {k: None if a is None else [a.dtype.str, list(a.shape)] for k, a in arrays.items()},
    }
    raw = json.dumps(head).encode()
    return b"".join([struct.pack("<I", len(raw)), raw, *(np.ascontiguousarray(a).tobytes() for a in arrays.values() if a is not None)])


def unpack_features(blob: bytes) -> tuple[ImageFeatures, CaptureFacts]:
    (n,) = struct.unpack_from("<I", blob)
    head = json.loads(blob[4 : 4 + n])
    at = 4 + n
    arrays = {}
    for k in _ARRAYS:
        spec = head["arrays"][k]
        if spec is None:
            arrays[k] = None
            continue
        dtype, shape = np.dtype(spec[0]), tuple(spec[1])
        count = int(np.prod(shape))
        arrays[k] = np.frombuffer(blob, dtype=dtype, count=count, offset=at).reshape(shape)
        at += count * dtype.itemsize
    feats = ImageFeatures(full_size=tuple(head["full_size"]), size=tuple(head["size"]), sharpness=head["sharpness"],
                          clipped=head["clipped"], border=head["border"], **arrays)
    return feats, CaptureFacts(**head["facts"])


def _nbytes(feats: ImageFeatures | None) -> int:
    if feats is None:
        return 64
    return 512 + sum(getattr(feats, k).nbytes for k in _ARRAYS if getattr(feats, k) is not None)


# -- groups -----------------------------------------------------------------------------


def _components(edges: list[tuple[int, int]]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    out: dict[int, list[int]] = {}
    for x in list(parent):
        out.setdefault(find(x), []).append(x)
    return [sorted(g) for g in out.values()]


def _copy_groups(pairs: dict[tuple[int, int], Pair], rows: dict[int, Row], verifier: _Verifier,
                 verified: bool) -> tuple[list[list[int]], dict[int, tuple[int, str]], dict[int, tuple[int, str]]]:
    """Copy groups as stars: the kept one first, then every member verified as its copy;
    why each listed member is not kept, and which members are kept too (they differ from the
    kept one in a region) and why."""
    groups: list[list[int]] = []
    why: dict[int, tuple[int, str]] = {}
    keep_too: dict[int, tuple[int, str]] = {}
    copy_edges = [k for k, p in pairs.items() if p.verdict.tier == "copy"]
    touching: dict[int, list[tuple[int, int]]] = {}  # each image's copy pairs: work per group, not per collection
    for key in copy_edges:
        touching.setdefault(key[0], []).append(key)
        touching.setdefault(key[1], []).append(key)
    for component in _components(copy_edges):
        left = list(component)
        while len(left) > 1:
            own = {k: pairs[k] for i in left for k in touching.get(i, ())}
            kept, wins = _most_original(left, own, rows, verifier, verified)
            members = []
            for m in left:
                if m == kept:
                    continue
                p = pairs.get((min(kept, m), max(kept, m)))
                if p is None and verified and m in rows and kept in rows:
                    # In one component through other copies but never compared with the kept
                    # one: compare now rather than trust the chain.
                    p = Pair(min(kept, m), max(kept, m), float("nan"), verifier.compare(rows[min(kept, m)], rows[max(kept, m)]))
                    pairs[(p.a, p.b)] = p
                if p is not None and p.verdict.tier == "copy":
                    members.append(m)
                    if differs_in_region(p.verdict):
                        keep_too[m] = (kept, f"{p.verdict.reason}: keep both")
                    else:
                        why[m] = (kept, _listed_reason(p, m, wins.get(m)))
            if not members:
                left.remove(kept)  # a copy of others but of none of the kept: try the rest
                continue
            groups.append([kept, *sorted(members, key=lambda i: rows[i].path if i in rows else "")])
            left = [m for m in left if m != kept and m not in members]
    groups.sort(key=lambda g: rows[g[0]].path if g[0] in rows else "")
    return groups, why, keep_too


def _most_original(ids: list[int], pairs: dict, rows: dict[int, Row], verifier: _Verifier,
                   verified: bool) -> tuple[int, dict[int, str]]:
    """The member that wins most pairwise "which is the original" comparisons among its
    verified copy pairs (``pairs`` holds at least those of ``ids``); and for each member it
    beat directly, why."""
    score = {i: 0 for i in ids}
    lost: dict[int, dict[int, str]] = {i: {} for i in ids}
    members = set(ids)
    for (a, b), p in pairs.items():
        if a not in members or b not in members or p.verdict.tier != "copy":
            continue
        sa = sb = None
        if verified and a in rows and b in rows:
            sa, sb = verifier.summary(rows[a]), verifier.summary(rows[b])
        if sa is not None and sb is not None:
            winner, reason = original_of(sa, sb, sa.facts, sb.facts, p.verdict, rows[a].mtime_ns, rows[b].mtime_ns, rows[a].size, rows[b].size)
        else:
            big_a = (rows[a].width * rows[a].height, rows[a].size) >= (rows[b].width * rows[b].height, rows[b].size)
            winner, reason = ("a", "is smaller") if big_a else ("b", "is smaller")
        w, l = (a, b) if winner == "a" else (b, a)
        score[w] += 1
        score[l] -= 1
        lost[w][l] = reason

    def size(i: int) -> tuple:
        r = rows.get(i)
        return (r.width * r.height, r.size, r.path) if r else (0, 0, "")

    kept = max(ids, key=lambda i: (score[i], size(i)))
    return kept, lost[kept]


def _listed_reason(p: Pair, member: int, lost_because: str | None) -> str:
    why_not = f"not kept: it {lost_because}" if lost_because else "not kept: the other is the more original of the group"
    return f"{p.verdict.reason}; {why_not}"


def _retake_groups(pairs: dict[tuple[int, int], Pair], rows: dict[int, Row], verifier: _Verifier,
                   copy_groups: list[list[int]]) -> list[list[int]]:
    """Retake groups as stars around the best shot (sharpest, least clipped): every member
    was verified as a retake of it. A listed copy stands for itself only through its kept one."""
    listed = {m for g in copy_groups for m in g[1:]}
    edges = [k for k, p in pairs.items() if p.verdict.tier == "retake" and not (set(k) & listed)]
    out: list[list[int]] = []
    for component in _components(edges):
        left = list(component)
        while len(left) > 1:
            best = max(left, key=lambda i: _shot_quality(rows.get(i), verifier))
            members = [m for m in left if m != best and (p := pairs.get((min(best, m), max(best, m)))) is not None
                       and p.verdict.tier == "retake"]
            if not members:
                left.remove(best)
                continue
            out.append([best, *sorted(members, key=lambda i: -_shot_quality(rows.get(i), verifier))])
            left = [m for m in left if m != best and m not in members]
    out.sort(key=lambda g: rows[g[0]].path if g[0] in rows else "")
    return out


def _shot_quality(row: Row | None, verifier: _Verifier) -> float:
    if row is None:
        return -1.0
    summary = verifier.summary(row)
    if summary is None:
        return -1.0
    # Sharper is better; blown-out or crushed pixels count against it.
    return float(np.log1p(summary.sharpness) - 10.0 * summary.clipped)


def explained_groups(report: DuplicateReport, tier: str = "all") -> list[dict]:
    """Each group of ``tier`` as {"tier", "ids", "members"}: the kept (or best) one first,
    every member with why it is in the group, the pair's score and its cosine similarity."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
    out = []
    chosen = ([("copy", g) for g in report.groups] if tier in ("copy", "all") else []) + (
        [("retake", g) for g in report.retakes] if tier in ("retake", "all") else [])
    for kind, g in chosen:
        head = g[0]
        members = [{"id": head, "kept": True, "reason": "kept: the original of the group" if kind == "copy" else "the best shot: sharpest, least clipped",
                    "score": None, "similarity": None}]
        for m in g[1:]:
            p = report.pair(head, m)
            if kind == "copy" and m in report.why:
                reason = report.why[m][1]
            elif kind == "copy" and m in report.keep_too:
                reason = report.keep_too[m][1]
            else:
                reason = p.verdict.reason if p else ""
            sim = None if p is None or p.similarity != p.similarity else round(float(p.similarity), 4)  # nan: compared at grouping
            members.append({"id": m, "kept": kind == "copy" and m in report.keep_too, "reason": reason, "score": round(float(p.verdict.score), 4) if p else None,
                            "similarity": sim})
        out.append({"tier": kind, "ids": list(g), "members": members})
    return out


@dataclass
class DuplicateGroups:
    """The groups of one tier as people read them: every member by path, with why it is there.

    Made by :meth:`imagespace.ImageSpace.duplicate_groups`; ``to_dict()`` is the
    ``duplicates --json`` document, :meth:`write_list` the ``--list-out`` file.
    """

    groups: list[dict]  # explained_groups(): {"tier", "ids", "members": [{"id", "kept", "reason", "score", "similarity"}]}
    paths: dict[int, str]  # id -> path of every member
    stats: dict = field(default_factory=dict)

    def _paths(self, tier: str) -> list[list[str]]:
        return [[self.paths.get(m["id"], "") for m in g["members"]] for g in self.groups if g["tier"] == tier]

    def copies(self) -> list[list[str]]:
        """Copy groups by path, the one to keep first."""
        return self._paths("copy")

    def retakes(self) -> list[list[str]]:
        """Retake groups by path, the best shot first."""
        return self._paths("retake")

    def extra_copies(self) -> list[tuple[str, str, str]]:
        """(copy, the kept file it copies, why on one line) for every copy that is not kept."""
        out = []
        for g in self.groups:
            if g["tier"] == "copy":
                kept = self.paths.get(g["members"][0]["id"], "")
                out += [(self.paths.get(m["id"], ""), kept, " ".join(m["reason"].split())) for m in g["members"][1:]
                        if not m["kept"]]  # a copy that differs in a region is kept too
        return out

    def write_list(self, out: str | os.PathLike[str]) -> int:
        """Write the copies that are not kept to ``out``, one a line: path, tab, kept file, tab, why.

        Only copies: never a kept file, a retake, a look-alike or a copy that differs in a
        region. Names are written escaped (:func:`imagespace.names.tsv_field`: tab, newline,
        backslash...), so each line holds exactly three fields and a reader gets the exact
        path back (README, "Copies, retakes and the delete list"). Returns how many were written.
        """
        from ..names import tsv_field

        listed = self.extra_copies()
        Path(out).write_bytes(b"".join(b"\t".join(tsv_field(f) for f in row) + b"\n" for row in listed))
        return len(listed)

    def to_dict(self) -> dict:
        """``{"groups", "retakes", "details", "stats"}``: copy and retake groups by path, then
        each group with every member's path, reason, score and similarity."""
        details = [
            {"tier": g["tier"], "members": [{**{k: v for k, v in m.items() if k != "id"}, "path": self.paths.get(m["id"], "")}
                                            for m in g["members"]]}
            for g in self.groups
        ]
        return {"groups": self.copies(), "retakes": self.retakes(), "details": details, "stats": self.stats}

