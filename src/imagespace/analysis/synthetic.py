"""Edited copies and retakes of one's own photos, with the truth of which files are duplicates.

A duplicate finder is checked on a collection whose answer is known: ``build_duplicate_set``
copies a folder of photos and adds edited copies of some of them (resized, recompressed,
cropped 8-15%, rotated 4-10 degrees, brighter or darker, recoloured, mirrored, with text,
with a border, and a mix), returning the true groups; files of the folder that already hold
one photo twice are found by their pixels (``same_photo_groups``), independently of the
method checked, and ``same_scene`` looks at a pair a finder reports beyond that truth.
``retake`` makes a second shot of a scene (another viewpoint, parallax, light and noise) and
``exif_for`` the camera and capture time that tell a retake from a copy.
Deterministic: the same photos and seed give the same files.
"""

from __future__ import annotations

import io
import random
import shutil
import time
from pathlib import Path

import numpy as np

from .evaluate import merge_groups

# Two files whose 64x64 grey pixels differ by less than this (RMS, 0-255) are one photo.
_SAME_PIXELS_RMS = 6.0


def exif_for(camera: tuple[str, str] | None, taken: float | None):
    """EXIF that says ``camera`` (make, model) took the photo at ``taken`` (seconds since the
    epoch, UTC, to 1/100 s); empty EXIF when either is None."""
    from PIL import Image

    exif = Image.Exif()
    if camera is None or taken is None:
        return exif
    exif[0x010F], exif[0x0110] = camera
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = time.strftime("%Y:%m:%d %H:%M:%S", time.gmtime(int(taken)))
    ifd[0x9291] = f"{int(round((taken % 1) * 100)) % 100:02d}"
    return exif


def copy_edits():
    """The edits that make a copy: each ``edit(image, random.Random) -> image``, named by its
    ``__name__`` (resize, shrink, recompress, crop, rotate, brightness, colour, mirror, text,
    border, mixed)."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageOps

    def resize(im, r):
        return im.resize((int(im.width * 1.6), int(im.height * 1.6)), Image.Resampling.BICUBIC)

    def shrink(im, r):
        return im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.BILINEAR)

    def recompress(im, r):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=25)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def crop(im, r):
        f = r.uniform(0.08, 0.15)
        w, h = im.size
        dx, dy = int(w * f), int(h * f)
        x0, y0 = r.randint(0, dx), r.randint(0, dy)
        return im.crop((x0, y0, x0 + w - dx, y0 + h - dy))

    def rotate(im, r):
        return im.rotate(r.choice([-1, 1]) * r.uniform(4, 10), resample=Image.Resampling.BICUBIC)

    def brightness(im, r):
        return ImageEnhance.Brightness(im).enhance(r.choice([0.7, 1.35]))

    def colour(im, r):
        return ImageEnhance.Color(ImageEnhance.Contrast(im).enhance(1.2)).enhance(r.choice([0.3, 1.7]))

    def mirror(im, r):
        return ImageOps.mirror(im)

    def text(im, r):
        im = im.copy()
        d = ImageDraw.Draw(im)
        d.text((10, im.height - 30), "(c) holiday 2019", fill=(255, 255, 255))
        d.rectangle((5, 5, 90, 25), fill=(200, 30, 30))
        return im

    def border(im, r):
        return ImageOps.expand(im, border=r.randint(10, 24), fill=r.choice([(255, 255, 255), (0, 0, 0)]))

    def mixed(im, r):
        return recompress(brightness(crop(mirror(im, r), r), r), r)

    return [resize, shrink, recompress, crop, rotate, brightness, colour, mirror, text, border, mixed]


def same_photo_groups(files: list[Path]) -> list[set[str]]:
    """Groups of files that hold the same photo, by their pixels (compared within each folder)."""
    from PIL import Image

    groups: list[set[str]] = []
    by_species: dict[str, list[Path]] = {}
    for f in files:
        by_species.setdefault(f.parent.name, []).append(f)
    for members in by_species.values():
        px = np.stack([np.asarray(Image.open(f).convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32).ravel() for f in members])
        sq = (px**2).sum(1)
        rms = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * px @ px.T, 0) / px.shape[1])
        for a, b in zip(*np.where(np.triu(rms < _SAME_PIXELS_RMS, 1))):
            groups.append({str(members[a]), str(members[b])})
    return merge_groups(groups)


def build_duplicate_set(out: Path, files: list[Path], copies: int, seed: int = 0) -> list[set[str]]:
    """Copy ``files`` to ``out/originals`` and write ``copies`` edited copies to ``out/copies``.

    Returns the true groups of duplicates (paths under ``out``).
    """
    from PIL import Image

    rng = random.Random(seed)
    (out / "originals").mkdir(parents=True, exist_ok=True)
    (out / "copies").mkdir(parents=True, exist_ok=True)
    name = {f: f"{f.parts[-3]}_{f.parts[-2]}_{f.name}" for f in files}
    for f in files:
        shutil.copy(f, out / "originals" / name[f])
    groups = [{str(out / "originals" / name[Path(p)]) for p in g} for g in same_photo_groups(files)]
    edits = copy_edits()
    for n, f in enumerate(rng.sample(files, copies)):
        edit = edits[n % len(edits)]
        copy = out / "copies" / f"{Path(name[f]).stem}__{edit.__name__}.jpg"
        edit(Image.open(f).convert("RGB"), rng).save(copy, quality=90)
        groups.append({str(out / "originals" / name[f]), str(copy)})
    return merge_groups(groups)


def same_scene(path_a: str, path_b: str) -> bool:
    """Do two files show one photo, however cropped or shifted? Pixels, not the method checked:
    SIFT matches give a homography, and the grey pixels of the overlap must then agree.

    flowers12 holds, besides files saved twice, the same photo cropped at different offsets
    (the Oxford set was cut from larger originals); the pixel comparison of whole files in
    ``same_photo_groups`` cannot see those, this check can, and a person looking at them agrees.
    """
    import cv2
    from PIL import Image

    a = np.asarray(Image.open(path_a).convert("L"))
    b = np.asarray(Image.open(path_b).convert("L"))
    sift = cv2.SIFT_create()
    for flip in (False, True):
        src = np.ascontiguousarray(a[:, ::-1]) if flip else a
        ka, da = sift.detectAndCompute(src, None)
        kb, db = sift.detectAndCompute(b, None)
        if da is None or db is None or len(da) < 8 or len(db) < 8:
            continue
        good = [m[0] for m in cv2.BFMatcher().knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < 0.75 * m[1].distance]
        if len(good) < 8:
            continue
        h, _ = cv2.findHomography(np.float32([ka[g.queryIdx].pt for g in good]), np.float32([kb[g.trainIdx].pt for g in good]), cv2.RANSAC, 4.0)
        if h is None:
            continue
        warped = cv2.warpPerspective(src, h, (b.shape[1], b.shape[0]))
        mask = cv2.warpPerspective(np.ones_like(src), h, (b.shape[1], b.shape[0])) > 0
        if mask.mean() < 0.4:
            continue
        diff = warped[mask].astype(np.float32) - b[mask].astype(np.float32)
        # Brightness/colour edits shift the grey levels: compare after removing the mean.
        if float(np.sqrt(((diff - diff.mean()) ** 2).mean())) < 20.0:
            return True
    return False


def retake(im, r: random.Random):
    """A second shot of the scene in ``im``: another viewpoint, parallax, light and noise."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(r.randrange(2**32))
    a = np.asarray(im.convert("RGB")).astype(np.float32)
    h, w = a.shape[:2]
    # Another viewpoint: the new frame sees a quadrilateral of the old one (each corner moved
    # inwards 1-10% independently): a shift, a zoom and a perspective change at once.
    inset = rng.uniform(0.01, 0.10, (4, 2)) * [w, h]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]]) + np.float32(inset * [[1, 1], [-1, 1], [-1, -1], [1, -1]])
    dst = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(src, dst)
    # Parallax: near and far things move by different amounts, a smooth field up to ~1%.
    amp = 0.01 * max(w, h)
    field = rng.uniform(-amp, amp, (2, 3, 4)).astype(np.float32)
    dx = cv2.resize(field[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(field[1], (w, h), interpolation=cv2.INTER_CUBIC)
    inv = np.linalg.inv(m)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs2, ys2 = xs + dx, ys + dy
    den = inv[2, 0] * xs2 + inv[2, 1] * ys2 + inv[2, 2]
    mapx = ((inv[0, 0] * xs2 + inv[0, 1] * ys2 + inv[0, 2]) / den).astype(np.float32)
    mapy = ((inv[1, 0] * xs2 + inv[1, 1] * ys2 + inv[1, 2]) / den).astype(np.float32)
    out = cv2.remap(a, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Light from another side, and a different exposure.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xs / w - 0.5) + np.sin(angle) * (ys / h - 0.5))
    gain = rng.uniform(0.85, 1.15) * (1.0 + rng.uniform(0.25, 0.45) * ramp)
    out = out * gain[..., None] + rng.normal(0, rng.uniform(3, 7), out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")
