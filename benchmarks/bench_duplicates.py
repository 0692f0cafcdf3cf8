"""CPU cost of telling copies from retakes, per image and per pair, at several photo sizes.

    python -m benchmarks.bench_duplicates            # 640x480, 1600x1200, 4000x3000 (12 MP)
    python -m benchmarks.bench_duplicates --quick
    python -m benchmarks.bench_duplicates --growth 2500 10000   # whole pass on cifar10 images

The duplicate pass costs, per image: reading the header facts and decoding at 512 px (JPEG
draft mode), ORB points of the image and its mirror, a thumbnail (once per image); per
candidate pair: the first look (strongest points only), and for pairs that pass it the full
match, a homography, the shape of the transform and the aligned pixels. Candidates are at
most NEIGHBOURS per image, so the whole grows linearly with the collection: the figure per
image here is features + NEIGHBOURS x the mean pair cost of the mix measured (unrelated
photos stop at the first look, copies and retakes go to the end).

CPU time of this process (time.process_time), one thread, so other work on a shared
machine counts less than in wall time.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWERS12 = ROOT.parent / "shared" / "data" / "flowers12"


def _photos(folder: Path, size: tuple[int, int], n: int, seed: int = 0) -> list[tuple[Path, Path, Path]]:
    """n (original, copy, retake) triples of the given size, from flowers12 (or synthetic)."""
    from PIL import Image, ImageEnhance, ImageOps

    from benchmarks.duplicate_tiers import CAMERAS, exif_for, retake

    r = random.Random(seed)
    files = sorted(FLOWERS12.glob("*/*/*.jpg"))
    r.shuffle(files)
    out = []
    for i in range(n):
        if files:
            im = ImageOps.fit(Image.open(files[i % len(files)]).convert("RGB"), size, Image.Resampling.BICUBIC)
        else:
            rng = np.random.default_rng(i)
            im = Image.fromarray(rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)).resize(size)
        a, b, c = (folder / f"{size[0]}_{i}_{k}.jpg" for k in ("orig", "copy", "retake"))
        im.save(a, quality=92, exif=exif_for(CAMERAS[0], 1e9 + i))
        ImageOps.mirror(ImageEnhance.Brightness(im).enhance(1.2)).save(b, quality=88)
        retake(im, r).save(c, quality=92, exif=exif_for(CAMERAS[0], 1e9 + i + 1.5))
        out.append((a, b, c))
    return out


def measure(size: tuple[int, int], n: int) -> dict:
    from imagespace.analysis.copies import VERIFY_SIDE, FeatureMaker, PairChecker
    from imagespace.images import capture_facts, load_pil

    with tempfile.TemporaryDirectory() as tmp:
        triples = _photos(Path(tmp), size, n)
        maker, checker = FeatureMaker(), PairChecker()
        feats, facts = {}, {}
        t0 = time.process_time()
        for triple in triples:
            for p in triple:
                facts[p] = capture_facts(p)
                im = load_pil(p, max_side=VERIFY_SIDE)
                feats[p] = maker(np.asarray(im.convert("L")), im.size)
        per_image = (time.process_time() - t0) / (3 * n)
        timings: dict[str, list[float]] = {"copy": [], "retake": [], "unrelated": []}
        tiers: dict[str, list[str]] = {k: [] for k in timings}
        for i, (a, b, c) in enumerate(triples):
            other = triples[(i + 1) % n][0]
            for kind, x, y in (("copy", a, b), ("retake", a, c), ("unrelated", a, other)):
                t0 = time.process_time()
                v = checker.compare(feats[x], feats[y], facts[x], facts[y])
                timings[kind].append(time.process_time() - t0)
                tiers[kind].append(v.tier)
    pair_ms = {k: round(1000 * float(np.mean(v)), 2) for k, v in timings.items()}
    return {
        "size": f"{size[0]}x{size[1]}",
        "photos": 3 * n,
        "features_ms_per_image": round(1000 * per_image, 2),
        "pair_ms": pair_ms,
        "tiers_right": {k: sum(t == (k if k != "unrelated" else "similar") for t in v) / len(v) for k, v in tiers.items()},
    }


def growth(counts: list[int], work: Path) -> list[dict]:
    """The whole pass (candidates, checks, grouping) on the first N cifar10 images (32x32,
    many too plain for local features), N growing: CPU ms per image should stay flat."""
    import zipfile

    from benchmarks.quality_analysis import index_folder
    from imagespace.analysis.duplicates import duplicate_report

    zip_path = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"
    names = sorted(n for n in zipfile.ZipFile(zip_path).namelist() if n.endswith(".jpg"))
    out = []
    for n in counts:
        folder = work / f"cifar{n}"
        if not folder.exists():
            with zipfile.ZipFile(zip_path) as z:
                for name in names[:n]:
                    z.extract(name, folder)
        coll = index_folder(folder, work / f"db{n}")
        t0 = time.process_time()
        report = duplicate_report(coll)
        cpu = time.process_time() - t0
        got = {"images": n, "cpu_ms_per_image": round(1000 * cpu / n, 2), "candidate_pairs": report.stats["candidate_pairs"],
               "copy_pairs": report.stats["copy_pairs"], "retake_pairs": report.stats["retake_pairs"]}
        print(got, flush=True)
        out.append(got)
        coll.close()
    return out


def run(quick: bool = False) -> list[dict]:
    sizes = [(640, 480), (1600, 1200)] if quick else [(640, 480), (1600, 1200), (4000, 3000)]
    n = 4 if quick else 12
    out = []
    for size in sizes:
        got = measure(size, n)
        print(got, flush=True)
        out.append(got)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_duplicates", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--growth", type=int, nargs="+", metavar="N", help="instead: the whole pass on the first N cifar10 images")
    ap.add_argument("--work", type=Path, default=None, help="keep the extracted images and collections here (--growth)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from imagespace.analysis.duplicates import NEIGHBOURS

    import cv2

    if args.growth:
        growth(args.growth, args.work or Path(tempfile.mkdtemp(prefix="dup-growth-")))
        return 0
    cv2.setNumThreads(1)
    for got in run(args.quick):
        # Per image: its features, plus its share of NEIGHBOURS candidate pairs (a pair is
        # shared by two images); most candidates are look-alikes that stop at the first look.
        unrelated = got["pair_ms"]["unrelated"]
        print(f"{got['size']}: features {got['features_ms_per_image']} ms/image, pairs "
              f"{got['pair_ms']} ms; whole pass about {got['features_ms_per_image'] + NEIGHBOURS / 2 * unrelated:.1f} ms/image "
              f"when candidates are look-alikes", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
