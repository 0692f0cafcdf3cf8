"""One pair of images: is one made from the other (copy), the same scene shot again (retake),
or only alike (similar)? And of two copies, which is the original?

A homography fits two views of a flat scene as well as it fits a crop, so the number of
matching points cannot tell a copy from a retake. Three signals can:

- the *shape* of the fitted transform: an edit (resize, crop, small rotation, mirror,
  border) maps one picture onto the other by a similarity: one scale on both axes, no
  perspective. A second shot from a step aside adds perspective and parallax: the best
  similarity then misses the matched points by several pixels;
- the *pixels* once aligned: a copy differs from its original by one global tone change
  (brightness, contrast, colour) plus compression, so after fitting that change nearly every
  pixel agrees; a retake differs by light from another side, noise, parallax and moved things;
- *EXIF*, when both files have it: two different capture times are two shots, whatever the
  pixels say; an edited copy keeps its original's capture time or has none.

Every verdict carries the figures it was made from and a reason a person can read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..images import VERIFY_SIDE, CaptureFacts
from .enlargement import MIN_SCALE, is_enlarged

# Verification works on images of this size: enough keypoints, bounded cost per image.
# 500 rather than 512: a 4000x3000 JPEG then decodes at 1/8 of its size.
# (VERIFY_SIDE, 500, is defined in images.py: indexing keeps that grey image for the pass.)
_MIN_SIDE = 320
_FEATURES = 1000
_RATIO = 0.8
_RANSAC_PIXELS = 5.0
# RANSAC stops by itself (OpenCV's 99.5% rule) once the best model holds enough of the
# matches: within 300 rounds from 36% inliers on. A shorter run is the start of a longer one
# (the sampler is seeded the same), so only pairs with fewer inliers than that can fare
# otherwise; on look-alikes, which hold none, every round is paid (13 ms for 1,000). On both
# halves of benchmarks/duplicate_tiers.py 300 rounds gave every copy and retake verdict of
# 1,000 unchanged, as 500 had (look-alikes stayed 'similar', a few with 1-3 points more or
# fewer, all under 12).
_RANSAC_ROUNDS = 300
# The first look: the strongest points of each image only.
_FIRST_LOOK_POINTS = 250
# Tuned on the train half: true pairs had 24-250 such matches, other photos of one species
# 95% at most 15 and 99% at most 23; every copy or retake verdict of either half had at
# least 21 (44 on the test half). 20 rather than 16 sends the look-alikes at 16-19 (107 of
# 4,066 train pairs, 50 of 2,054 test) no further: their full match cost 2.4 ms a photo.
# On 1,000 phone photos of clothes it also dropped 3 of 12 retake verdicts, at 16-19: each
# two different garments laid on one floor, the floor being all they shared.
FIRST_LOOK_MATCHES = 20
# Aligned grey thumbnails for the pixel check: small enough to keep for every image.
THUMB_SIDE = 160
# Matching points (homography inliers) from which two images show one scene at all. On the
# train half (benchmarks/duplicate_tiers.py) true pairs had 31-975.
MIN_INLIERS = 20
# A copy: the best similarity misses the homography's inliers by at most MAX_RESIDUAL
# pixels (median, at VERIFY_SIDE) and at least MIN_AGREEMENT of the aligned pixels agree
# after one tone curve; or, when the geometry is plainly a similarity (STRICT_RESIDUAL),
# at least LOOSE_AGREEMENT (heavy edits: brightened, clipped, recompressed at quality 25).
# On the train half copies scored residual 0-1.42 px and agreement 0.72-1.0; retakes
# residual 1.2-6.9 px and agreement 0.34-0.83.
MAX_RESIDUAL = 1.45
MIN_AGREEMENT = 0.85
STRICT_RESIDUAL = 1.1
LOOSE_AGREEMENT = 0.70
_AGREE_LEVELS = 10.0
# Copies that differ in one region: where the aligned grey images (at REGION_SIDE, the
# smaller one's resolution, one rising tone curve fitted) differ by at least _REGION_LEVELS
# grey levels beyond the range of the other's values a pixel around, the patch those pixels
# make (joined over 2% of the side) covers at least REGION_SHARE of the overlap (_region).
# Tuned on the train half of benchmarks/duplicate_tiers.py (flowers12): 16 of 16 captioned
# copies and 3 of 125 evenly edited ones reach it (a brightened and two mixed edits: kept
# too, never deleted wrongly); of region edits made on 40 of its photos, logos 40, circles
# drawn on them 35, dark labels on the flowers 14, a hue turned in an ellipse 7.
_REGION_LEVELS = 30.0
REGION_SHARE = 0.006
REGION_SIDE = 320  # the grey images compared: a 4000x3000 JPEG decodes at 1/8, a caption still shows
# Below this pixel agreement, points that fit a homography are a coincidence of patterns
# (other photos of the train half reached 0.03), not one scene: retakes scored 0.34 and up.
MIN_SCENE_AGREEMENT = 0.25
# Two capture times closer than this are one shot (sub-second fields hold hundredths).
_SAME_SHOT_SECONDS = 0.011


# What tells a copy from a retake once two images share a scene.
SIGNALS = ("shape", "pixels", "exif")


@dataclass
class ImageFeatures:
    """What verification needs of one image, computed once and kept."""

    full_size: tuple[int, int]  # the file's own width, height
    size: tuple[int, int]  # width, height at which the points were found
    points: np.ndarray
    descriptors: np.ndarray | None
    points_mirrored: np.ndarray
    descriptors_mirrored: np.ndarray | None
    # Grey uint8, longest side THUMB_SIDE: a quarter of the float thumbnail the pixel check
    # compares (made from it on use, in microseconds), so that four times as many images'
    # features stay in memory during a pass and in the feature store between passes.
    thumb_grey: np.ndarray
    sharpness: float  # variance of the Laplacian at `size`
    clipped: float  # share of pixels at black or white
    border: bool  # a plain frame of one colour on all four sides

    @property
    def thumb_scale(self) -> float:
        return self.thumb_grey.shape[1] / self.size[0]

    @property
    def thumb(self) -> np.ndarray:
        """The thumbnail the pixel check compares: float32, lightly blurred."""
        import cv2

        return cv2.GaussianBlur(self.thumb_grey.astype(np.float32), (3, 3), 0)


@dataclass
class PairVerdict:
    tier: str  # copy | retake | similar
    score: float  # 0-1, how sure (copy: pixel agreement; retake: geometry and pixels)
    reason: str
    inliers: int = 0
    residual: float = 0.0  # median miss of the best similarity, pixels at VERIFY_SIDE
    agreement: float = 0.0
    scale: float = 1.0  # linear scale from a to b, in the files' own pixels
    covered_a: float = 0.0  # share of a's frame that b shows
    covered_b: float = 0.0
    mirrored: bool = False
    first_look: int = 0  # ratio-test matches among the strongest points
    # Copies at different sizes: the larger's power over the smaller's just below the
    # smaller's Nyquist frequency (:mod:`.enlargement`); below 1, the larger was enlarged.
    band_ratio: float | None = None
    # Resized to another aspect ratio (a thumbnail box, a shop's square): b's scale along x
    # over its scale along y (1.0 when the aspect ratio was kept).
    aspect_change: float = 1.0
    # Share of the overlap in the largest patch where the aligned pixels differ beyond what
    # their texture explains: a caption, a mark, a recoloured part (see _region).
    region: float = 0.0


class FeatureMaker:
    """ORB points (also of the mirrored image) and the small thumbnail of one grey image.

    One per thread: OpenCV's detector is not shared between threads.
    """

    def __init__(self):
        import cv2

        self.cv2 = cv2
        self.orb = cv2.ORB_create(nfeatures=_FEATURES)

    def __call__(self, grey: np.ndarray, full_size: tuple[int, int]) -> ImageFeatures:
        cv2 = self.cv2
        h, w = grey.shape
        if max(w, h) < _MIN_SIDE:  # small images give too few keypoints at their own size
            s = _MIN_SIDE / max(w, h)
            grey = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
            h, w = grey.shape
        pts, desc = self._detect(grey)
        pts_m, desc_m = self._detect(np.ascontiguousarray(grey[:, ::-1]))
        s = THUMB_SIDE / max(w, h)
        thumb = cv2.resize(grey, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
        return ImageFeatures(
            full_size=full_size, size=(w, h), points=pts, descriptors=desc, points_mirrored=pts_m,
            descriptors_mirrored=desc_m, thumb_grey=thumb, sharpness=float(cv2.Laplacian(grey, cv2.CV_32F).var()),
            clipped=float(((grey <= 2) | (grey >= 253)).mean()), border=_has_border(grey),
        )

    def _detect(self, grey):
        kp, desc = self.orb.detectAndCompute(grey, None)
        if not kp:
            return np.zeros((0, 2), np.float32), None
        # Strongest first: the first look matches only the head of the list.
        order = np.argsort(-np.float32([k.response for k in kp]), kind="stable")
        return self.cv2.KeyPoint_convert(kp)[order], desc[order]


def _ratio_matches(da: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indexes (into ``da``, into ``db``) of the descriptors of ``da`` whose nearest in ``db``
    (Hamming distance) is nearer than ``_RATIO`` times the second nearest, in ``da``'s order.

    The matches OpenCV's brute-force ``knnMatch(k=2)`` and the ratio test give, found by
    FAISS's binary search (4.5x faster on 1,000 x 1,000 ORB descriptors, which made the
    matching most of a duplicate pass): a tie for nearest never passes the test, so which of
    the tied is returned cannot change the result.
    """
    import faiss

    if len(db) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
    index.add(np.ascontiguousarray(db))
    # One thread: pairs are already compared on a thread per core (the setting is this thread's).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        dist, found = index.search(np.ascontiguousarray(da), 2)
    finally:
        faiss.omp_set_num_threads(threads)
    ok = np.nonzero(dist[:, 0] < _RATIO * dist[:, 1])[0]
    return ok, found[ok, 0].astype(np.int64)


def differs_in_region(v: PairVerdict) -> bool:
    """Two copies of which one carries something the other does not (a caption, a
    watermark, marks, a recoloured part): neither is safe to delete."""
    return v.tier == "copy" and v.region >= REGION_SHARE


def region_note(v: PairVerdict) -> str:
    return (f"but they differ in one region ({v.region:.1%} of the picture: text, a mark, a watermark or a "
            "recoloured part), so each holds something the other lacks")


def _has_border(grey: np.ndarray) -> bool:
    """A frame of one plain colour on all four sides (an added border, not a dark sky)."""
    h, w = grey.shape
    t = max(2, round(0.02 * min(w, h)))
    strips = [grey[:t], grey[-t:], grey[:, :t], grey[:, -t:]]
    means = [float(s.mean()) for s in strips]
    return all(float(s.std()) < 3.0 for s in strips) and max(means) - min(means) < 6.0


class PairChecker:
    """Compares two images' features. One per thread (it holds an OpenCV matcher)."""

    def __init__(self, min_inliers: int = MIN_INLIERS, signals: tuple[str, ...] = SIGNALS):
        import cv2

        self.cv2 = cv2
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.min_inliers = min_inliers
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}: use some of {', '.join(SIGNALS)}")
        self.signals = frozenset(signals)  # fewer only to measure what each one adds

    def first_look(self, a: ImageFeatures, b: ImageFeatures) -> tuple[int, bool]:
        """Ratio-test matches between the strongest points of each, direct and mirrored (a
        sixteenth of the cost of the full match; unrelated photos find almost none), and
        whether the mirrored image matched better."""
        counts = []
        for da in (a.descriptors, a.descriptors_mirrored):
            if da is None or b.descriptors is None or len(da) < 2 or len(b.descriptors) < 2:
                counts.append(0)
                continue
            counts.append(len(_ratio_matches(da[:_FIRST_LOOK_POINTS], b.descriptors[:_FIRST_LOOK_POINTS])[0]))
        return max(counts), counts[1] > counts[0]

    def compare(self, a: ImageFeatures, b: ImageFeatures, facts_a: CaptureFacts | None = None,
                facts_b: CaptureFacts | None = None) -> PairVerdict:
        look, mirrored_first = self.first_look(a, b)
        if look < FIRST_LOOK_MATCHES:
            v = PairVerdict("similar", 0.0, f"alike, but no shared details at a first look ({look} matches)")
            v.first_look = look
            return v
        h, src, dst, inliers, mirrored = self._fit(a, b, mirrored_first)
        if h is None or inliers < self.min_inliers:
            v = PairVerdict("similar", 0.0, f"alike, but only {inliers} matching points: not the same scene", inliers)
            v.first_look = look
            return v
        residual, sim = self._shape(src, dst)
        aspect = 1.0
        if residual > MAX_RESIDUAL:
            squashed = _squash(src, dst, a, b)
            if squashed is not None and squashed[0] < residual:
                residual, sim, aspect = squashed
        agreement, covered_a, covered_b = self._pixels(a, b, h, mirrored)
        scale = float(np.sqrt(abs(np.linalg.det(sim[:, :2])))) * (a.size[0] / a.full_size[0]) / (b.size[0] / b.full_size[0])
        v = PairVerdict("copy", agreement, "", inliers, residual, agreement, scale, covered_a, covered_b, mirrored)
        v.first_look = look
        v.aspect_change = aspect
        v.homography, v.mirror_first = h, mirrored  # for region(); not kept in the cache
        if agreement < MIN_SCENE_AGREEMENT and "pixels" in self.signals:
            v.tier, v.score = "similar", 0.0
            v.reason = f"alike, {inliers} matching points, but only {agreement:.0%} of the pixels agree once aligned: not the same scene"
            return v
        shots = _capture_difference(facts_a, facts_b) if "exif" in self.signals else None
        if aspect != 1.0:
            (wa, ha), (wb, hb) = a.full_size, b.full_size
            geometry = (f"{inliers} matching points{' (mirrored)' if mirrored else ''}, one resized to the other's "
                        f"aspect ratio ({wa}x{ha} and {wb}x{hb}, squashed or stretched), off by {residual:.1f} px")
        else:
            geometry = f"{inliers} matching points{' (mirrored)' if mirrored else ''}, similarity off by {residual:.1f} px"
        pixels = f"{agreement:.0%} of pixels agree after one tone change"
        if shots is not None and shots >= _SAME_SHOT_SECONDS:
            v.tier, v.score = "retake", min(1.0, inliers / 100)
            v.reason = f"the same scene taken {shots:.2f} s apart ({_camera(facts_a, facts_b)}); {geometry}"
        elif "shape" in self.signals and residual > (MAX_RESIDUAL if aspect == 1.0 else SQUASH_RESIDUAL):
            v.tier, v.score = "retake", min(1.0, inliers / 100)
            v.reason = f"the same scene from another viewpoint: {geometry}; {pixels}"
        elif "pixels" in self.signals and agreement < (
                LOOSE_AGREEMENT if residual <= STRICT_RESIDUAL or "shape" not in self.signals else MIN_AGREEMENT):
            v.tier, v.score = "retake", min(1.0, inliers / 100)
            v.reason = f"the same scene, but light, noise or content differ: {pixels}; {geometry}"
        else:
            same = " and the same capture time" if shots is not None else ""
            v.reason = f"one picture: {geometry}; {pixels}{same}"
        return v

    def region(self, pixels_a: np.ndarray, pixels_b: np.ndarray, a: ImageFeatures, b: ImageFeatures,
               v: PairVerdict) -> tuple[float, float]:
        """For a copy: the share of the overlap in the largest patch where the two differ in
        content (:func:`_region`), on the two images (RGB, or grey) at any size up to the one
        their points were found at (sharper than the thumbnails: a caption's strokes show)."""
        cv2 = self.cv2
        h = getattr(v, "homography", None)
        if h is None:
            return 0.0, 0.0
        # The fit maps a's points to b's at the sizes they were found; the images may be
        # smaller (REGION_SIDE): carry the fit over.
        ka, kb = pixels_a.shape[1] / a.size[0], pixels_b.shape[1] / b.size[0]
        h = np.diag([kb, kb, 1.0]) @ h @ np.diag([1 / ka, 1 / ka, 1.0])
        pa, pb = pixels_a.astype(np.float32), pixels_b.astype(np.float32)
        if v.mirror_first:
            pa = np.ascontiguousarray(pa[:, ::-1])
        # Compared at the resolution of the smaller: the detail the larger has over it is
        # not a difference of content.
        r = float(np.sqrt(abs(np.linalg.det(h[:2, :2] / h[2, 2]))))  # b's pixels per a's pixel
        if r < 1:
            pa = cv2.resize(pa, (max(8, round(pa.shape[1] * r)), max(8, round(pa.shape[0] * r))), interpolation=cv2.INTER_AREA)
            h = h @ np.diag([1 / r, 1 / r, 1.0])
        elif r > 1:
            pb = cv2.resize(pb, (max(8, round(pb.shape[1] / r)), max(8, round(pb.shape[0] / r))), interpolation=cv2.INTER_AREA)
            h = np.diag([1 / r, 1 / r, 1.0]) @ h
        ha, wa = pa.shape[:2]
        b_to_a = np.linalg.inv(h)
        warped = cv2.warpPerspective(pb, b_to_a, (wa, ha), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones(pb.shape[:2], np.uint8), b_to_a, (wa, ha), flags=cv2.INTER_NEAREST)
        # Frame edges differ by interpolation and borders: leave out a margin of 2% of the side.
        margin = max(3, round(0.02 * max(wa, ha))) | 1
        mask[[0, -1], :] = 0  # the frame's own edges count as edges (erode keeps them otherwise)
        mask[:, [0, -1]] = 0
        inside = cv2.erode(mask, np.ones((margin, margin), np.uint8)).astype(bool)
        if inside.sum() < 400:
            return 0.0, 0.0
        pa, warped = cv2.GaussianBlur(pa, (3, 3), 0), cv2.GaussianBlur(warped, (3, 3), 0)
        if pa.ndim == 3:
            grey_a, grey_b = cv2.cvtColor(pa, cv2.COLOR_RGB2GRAY), cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY)
            return _region(grey_a, grey_b, inside, (pa, warped))
        return _region(pa, warped, inside)

    # -- the three measurements -------------------------------------------------------------

    def _fit(self, a: ImageFeatures, b: ImageFeatures, mirrored_first: bool = False):
        best = (None, None, None, 0, False)
        for mirrored in ((True, False) if mirrored_first else (False, True)):
            pa, da = (a.points_mirrored, a.descriptors_mirrored) if mirrored else (a.points, a.descriptors)
            found = self._match(pa, da, b.points, b.descriptors)
            if found[0] is not None and found[3] > best[3]:
                best = (*found[:4], mirrored)
            if best[3] >= 3 * self.min_inliers:
                break  # clearly this orientation: the other cannot win
        return best

    def _match(self, pa, da, pb, db):
        cv2 = self.cv2
        # Inliers are a subset of the matches that pass the ratio test: with fewer of those
        # than the bar, RANSAC (which runs all its rounds on unrelated photos) is skipped.
        need = max(8, self.min_inliers)
        if da is None or db is None or len(da) < need or len(db) < need:
            return None, None, None, 0
        query, train = _ratio_matches(da, db)
        if len(query) < need:
            return None, None, None, 0
        src = pa[query]
        dst = pb[train]
        h, mask = cv2.findHomography(src, dst, cv2.RANSAC, _RANSAC_PIXELS, maxIters=_RANSAC_ROUNDS)
        if h is None or mask is None:
            return None, None, None, 0
        keep = mask.ravel().astype(bool)
        return h, src[keep], dst[keep], int(keep.sum())

    def _shape(self, src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
        """Median miss (pixels) of the best similarity (rotation, one scale, shift) through
        the homography's inliers, and that similarity as a 2x3 matrix."""
        sim = _similarity(src, dst)
        miss = np.linalg.norm(src @ sim[:, :2].T + sim[:, 2] - dst, axis=1)
        return float(np.median(miss)), sim

    def _pixels(self, a: ImageFeatures, b: ImageFeatures, h: np.ndarray, mirrored: bool):
        """Agreement of b's thumbnail warped onto a's after one global tone fit, how much of
        each frame the other shows, and the largest patch where they differ (:func:`_region`)."""
        cv2 = self.cv2
        ta, tb = a.thumb, b.thumb
        ta = np.ascontiguousarray(ta[:, ::-1] if mirrored else ta)
        sa, sb = np.diag([a.thumb_scale, a.thumb_scale, 1.0]), np.diag([b.thumb_scale, b.thumb_scale, 1.0])
        b_to_a = sa @ np.linalg.inv(h) @ np.linalg.inv(sb)
        ha, wa = ta.shape
        hb, wb = tb.shape
        warped = cv2.warpPerspective(tb, b_to_a, (wa, ha), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.ones((hb, wb), np.uint8), b_to_a, (wa, ha), flags=cv2.INTER_NEAREST)
        covered_a = float(mask.mean())
        back = cv2.warpPerspective(np.ones((ha, wa), np.uint8), np.linalg.inv(b_to_a), (wb, hb), flags=cv2.INTER_NEAREST)
        covered_b = float(back.mean())
        inside = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
        if inside.sum() < 100:
            return 0.0, covered_a, covered_b
        x, y = warped[inside], ta[inside]
        res = np.abs(_tone_curve(x, y) - y)
        agreement = float((res < _AGREE_LEVELS).mean())
        return agreement, covered_a, covered_b


def _region(ga: np.ndarray, gb: np.ndarray, inside: np.ndarray,
            colours: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """Where two aligned images differ beyond one global tone change and beyond a pixel of
    misalignment: (share of the overlap in the largest patch they make, share of all such
    pixels that lie in it).

    A pixel differs when its grey lies outside the range of the other image's greys around
    it, by _REGION_LEVELS, after one rising tone curve (fitted in the direction that fits
    better: a clipped copy cannot predict its original's highlights, but the original
    predicts the copy's); with ``colours`` (the two RGB images), in some colour channel too,
    after one curve per channel (brightening clips each channel on its own; a change of
    saturation keeps the grey). Compression, noise, resampling and a slight misalignment stay
    inside those ranges; a caption, a watermark, marks or a part painted another colour do
    not, and lie in one place."""
    differ = _differ(ga, gb, inside)
    found = _largest_patch(differ, inside)
    if colours is not None and found[0] >= REGION_SHARE:  # the colours can only take some away
        ca, cb = colours
        in_colour = np.zeros_like(differ)
        for c in range(ca.shape[2]):
            in_colour |= _differ(np.ascontiguousarray(ca[..., c]), np.ascontiguousarray(cb[..., c]), inside)
        found = _largest_patch(differ & in_colour, inside)
    return found


def _largest_patch(differ: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    import cv2

    total = int(differ.sum())
    if total == 0:
        return 0.0, 0.0
    # The strokes and words of one caption or mark join into one patch, whose area counts
    # (text is thin: its differing pixels alone are few); isolated pixels stay apart, small.
    side = max(3, round(0.02 * max(differ.shape))) | 1
    joined = cv2.dilate(differ.astype(np.uint8), np.ones((side, side), np.uint8))
    joined &= inside.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    if n < 2:
        return 0.0, 0.0
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return float(stats[biggest, cv2.CC_STAT_AREA]) / max(1, int(inside.sum())), float((labels[differ] == biggest).sum()) / total


def _tone_curve(x: np.ndarray, y: np.ndarray, bins: int = 24) -> np.ndarray:
    """y predicted from x by one global tone curve: the median y of each band of x values,
    interpolated. An edit's brightness, contrast, gamma or clipping is such a curve; light
    from another side or moved things are not (the same grey maps to many)."""
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    centres, medians = [], []
    for k in range(bins):
        sel = which == k
        if sel.sum() >= 5:
            centres.append(float(np.median(x[sel])))
            medians.append(float(np.median(y[sel])))
    if len(centres) < 2:
        return np.full_like(y, float(np.median(y)))
    centres_a, medians_a = np.array(centres), np.array(medians)
    order = np.argsort(centres_a, kind="stable")
    return np.interp(x, centres_a[order], medians_a[order])


def _differ(ga: np.ndarray, gb: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Pixels (inside) where one image's value lies _REGION_LEVELS beyond the range of the
    other's values a pixel around, after one rising tone curve (see :func:`_region`)."""
    import cv2

    x, y = gb[inside], ga[inside]
    fit_a, fit_b = _tone_curve_by_level(x, y), _tone_curve_by_level(y, x)
    if np.abs(fit_a - y).mean() <= np.abs(fit_b - x).mean():
        target, predicted = ga, np.zeros_like(ga)
        predicted[inside] = fit_a
    else:
        target, predicted = gb, np.zeros_like(gb)
        predicted[inside] = fit_b
    k = np.ones((3, 3), np.uint8)

    def outside(v, ref):
        return np.maximum(v - cv2.dilate(ref, k), cv2.erode(ref, k) - v)

    miss = np.maximum(outside(target, predicted), outside(predicted, target))
    return inside & (miss >= _REGION_LEVELS)


def _tone_curve_by_level(x: np.ndarray, y: np.ndarray, width: float = 8.0) -> np.ndarray:
    """Like :func:`_tone_curve`, with a band for every ``width`` grey levels that occur (a
    rare grey, one dark patch, gets its own point instead of its neighbours' median), and
    rising: brightness, contrast, gamma and clipping keep the order of greys, while a part
    painted another colour (a blue body made yellow, darker things left as they were) breaks
    it, so it cannot be passed off as a change of the whole."""
    step = max(1, len(x) // 20_000)  # a sample fits the curve as well, at a fraction of the cost
    xs, ys = x[::step], y[::step]
    which = np.clip((xs // width).astype(np.int64), 0, int(256 // width))
    by_y, by_x = np.lexsort((ys, which)), np.lexsort((xs, which))
    band = which[by_y]
    starts = np.flatnonzero(np.r_[True, band[1:] != band[:-1]])
    ends = np.r_[starts[1:], len(band)]
    keep = (ends - starts) >= 5
    middle = ((starts + ends - 1) // 2)[keep]
    centres, medians, counts = xs[by_x][middle], ys[by_y][middle], (ends - starts)[keep].astype(np.float64)
    if len(centres) < 2:
        return _tone_curve(x, y)
    rising = _rising(medians.astype(np.float64), counts)
    # Through a table of quarter grey levels: one lookup per pixel.
    levels = np.arange(0, 256.25, 0.25)
    table = np.interp(levels, centres, rising)
    return table[np.clip(np.rint(x * 4), 0, len(levels) - 1).astype(np.int64)]


def _rising(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The closest non-decreasing sequence (weighted least squares: pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(values.tolist(), weights.tolist()):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks[-1]
            blocks[-1] = [(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2]
    return np.array([v for v, _, n in blocks for _ in range(n)])


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, reflections allowed by the caller's mirroring)."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var = (s**2).sum() / len(src)
    scale = float((sv * np.diag(e)).sum() / var) if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = md - scale * r @ ms
    return m


# A resize to another aspect ratio scales the whole frame onto the whole frame: the ratio of
# the fitted x and y scales is then the ratio of the two frames' aspect ratios. Two shots of
# a scene (retakes) come in one frame shape, so this fit never applies to them.
_MIN_ASPECT_CHANGE = 0.03
_ASPECT_TOLERANCE = 0.03
# Points found on a copy enlarged to another aspect ratio are blurred and placed less
# precisely (a 640x480 picture stretched to 1000x1000: 1.7 px); the fit's agreement with
# the frames' shapes is the evidence, so the miss may be larger than MAX_RESIDUAL.
SQUASH_RESIDUAL = 2.5


def _squash(src: np.ndarray, dst: np.ndarray, a: ImageFeatures, b: ImageFeatures):
    """When b is a to another aspect ratio: (median miss, the 2x3 map, x-scale over
    y-scale) of the best axis-aligned scale and shift through the inliers; else None."""
    frames = (b.size[0] / a.size[0]) / (b.size[1] / a.size[1])
    if abs(np.log(frames)) < np.log1p(_MIN_ASPECT_CHANGE) or len(src) < 4:
        return None
    m = np.zeros((2, 3))
    for axis in (0, 1):
        design = np.stack([src[:, axis], np.ones(len(src))], 1)
        (m[axis, axis], m[axis, 2]), *_ = np.linalg.lstsq(design, dst[:, axis], rcond=None)
    sx, sy = m[0, 0], m[1, 1]
    if sx <= 0 or sy <= 0 or abs(np.log((sx / sy) / frames)) > np.log1p(_ASPECT_TOLERANCE):
        return None
    miss = np.linalg.norm(src @ m[:, :2].T + m[:, 2] - dst, axis=1)
    return float(np.median(miss)), m, float(sx / sy)


def _capture_difference(a: CaptureFacts | None, b: CaptureFacts | None) -> float | None:
    """Seconds between two capture times when both files have one, else None."""
    if a is None or b is None or a.taken is None or b.taken is None:
        return None
    return abs(a.taken - b.taken)


def _camera(a: CaptureFacts | None, b: CaptureFacts | None) -> str:
    ca, cb = (a.camera if a else None), (b.camera if b else None)
    if ca and ca == cb:
        return f"same camera, {ca}"
    return f"cameras {ca or 'unknown'} and {cb or 'unknown'}"


# -- which one to keep ----------------------------------------------------------------------


def _original_by_frame(a, b, facts_a: CaptureFacts, facts_b: CaptureFacts, verdict: PairVerdict) -> tuple[str, str] | None:
    """The first rules of :func:`original_of` (an added border, a crop, lost EXIF), or None
    when none of them decides."""
    if a.border != b.border:
        return ("b", "has a border added") if a.border else ("a", "has a border added")
    if verdict.covered_a < 0.9 and verdict.covered_b > 0.97:
        return "a", "is a crop"
    if verdict.covered_b < 0.9 and verdict.covered_a > 0.97:
        return "b", "is a crop"
    if (facts_a.taken is None) != (facts_b.taken is None):
        return ("a", "has lost the camera's EXIF") if facts_a.taken is not None else ("b", "has lost the camera's EXIF")
    return None


def needs_band_ratio(a, b, facts_a: CaptureFacts, facts_b: CaptureFacts, verdict: PairVerdict) -> bool:
    """Whether :func:`original_of` can reach ``verdict.band_ratio`` for these two copies: they
    differ in size at one aspect ratio, and no earlier rule (border, crop, lost EXIF) decides.
    The band ratio needs both files decoded at full size (a 12 MP photo: about 38 ms each,
    luma only), so it is measured only then."""
    if verdict.tier != "copy" or verdict.aspect_change != 1.0 or max(verdict.scale, 1 / verdict.scale) < MIN_SCALE:
        return False  # (a resize to another aspect ratio has no one scale at which to compare the bands)
    return _original_by_frame(a, b, facts_a, facts_b, verdict) is None


def original_of(a, b, facts_a: CaptureFacts, facts_b: CaptureFacts,
                verdict: PairVerdict, mtime_a: int, mtime_b: int, bytes_a: int, bytes_b: int) -> tuple[str, str]:
    """Of two copies, which is more likely the original: ("a" or "b", why the other is not).

    ``a`` and ``b`` are anything with a ``border`` flag (:class:`ImageFeatures`, or the
    summary the cache keeps).

    In order: no added border; more of the picture (the other is a crop); EXIF
    capture facts (an export often drops them); more pixels of the same content, unless
    they were made by enlarging the other (``verdict.band_ratio``); less
    recompressed; captured or modified earlier; the larger file.
    """
    decided = _original_by_frame(a, b, facts_a, facts_b, verdict)
    if decided is not None:
        return decided
    # More pixels win only when they hold more detail: an enlargement is the copy.
    enlarged = is_enlarged(verdict.band_ratio)
    squashed = "was resized to another aspect ratio and " if verdict.aspect_change != 1.0 else ""
    if squashed:
        # Scaled up along one side and down along the other: neither has more of the
        # picture's detail for sure, so the pixel count does not decide.
        root = float(np.sqrt(verdict.aspect_change))
        sx, sy = verdict.scale * root, verdict.scale / root
        mixed = min(sx, sy) < 1.0 < max(sx, sy)
    else:
        mixed = False
    if mixed:
        pass
    elif verdict.scale < 0.93:
        if enlarged:
            return "b", f"was enlarged {1 / verdict.scale:.2f}x: more pixels, no more detail"
        return "a", f"{squashed}has fewer pixels ({verdict.scale:.2f}x)"
    if verdict.scale > 1.07 and not mixed:
        if enlarged:
            return "a", f"was enlarged {verdict.scale:.2f}x: more pixels, no more detail"
        return "b", f"{squashed}has fewer pixels ({1 / verdict.scale:.2f}x)"
    qa, qb = facts_a.jpeg_quality, facts_b.jpeg_quality
    if qa is not None and qb is not None and abs(qa - qb) >= 5:
        return ("a", f"was saved at JPEG quality {qb} against {qa}") if qa > qb else ("b", f"was saved at JPEG quality {qa} against {qb}")
    if facts_a.taken is not None and facts_b.taken is not None and facts_a.taken != facts_b.taken:
        return ("a", "was captured later") if facts_a.taken < facts_b.taken else ("b", "was captured later")
    if mtime_a != mtime_b:
        return ("a", "was modified later") if mtime_a < mtime_b else ("b", "was modified later")
    return ("a", "is the smaller file") if bytes_a >= bytes_b else ("b", "is the smaller file")
