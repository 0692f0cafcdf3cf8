"""CPU cost of telling copies from retakes, per image and per pair, at several photo sizes.

    python -m benchmarks.bench_duplicates            # 640x480, 1600x1200, 4000x3000 (12 MP)
    python -m benchmarks.bench_duplicates --quick
    python -m benchmarks.bench_duplicates --growth 1000 10000 60000 100000 --work DIR
        # whole pass on the first N cifar10 images; past its 60,000, generated copies and retakes

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
import os
import random
import shutil
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
    from imagespace.analysis import duplicates
    from imagespace.analysis.duplicates import duplicate_report
    from imagespace.analysis.pair_cache import FILE_NAME as PAIRS_FILE
    from imagespace.feature_store import FILE_NAME as FEATURES_FILE

    zip_path = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"
    names = sorted(n for n in zipfile.ZipFile(zip_path).namelist() if n.endswith(".jpg"))
    out = []
    for n in counts:
        folder = work / f"cifar{min(n, len(names))}"
        if not folder.exists():
            with zipfile.ZipFile(zip_path) as z:
                for name in names[:n]:
                    z.extract(name, folder)
        folders = [folder]
        if n > len(names):  # beyond cifar10's 60,000: generated copies and retakes of its images
            folders.append(_copies_and_retakes(folder, work / f"extra{n - len(names)}", n - len(names)))
            if not (work / f"db{n}").exists() and (work / f"db{len(names)}").exists():
                shutil.copytree(work / f"db{len(names)}", work / f"db{n}")  # index only the new ones
        coll = index_folder(folders, work / f"db{n}")
        for name in (PAIRS_FILE, FEATURES_FILE):  # a first pass (a reused --work folder keeps them)
            (work / f"db{n}" / name).unlink(missing_ok=True)
        # The candidate stage timed on its own by wrapping it here: the pass carries no timers.
        spent = {"candidates": 0.0}
        real = duplicates.candidate_pairs

        def timed(*a, **k):
            t = time.process_time()
            try:
                return real(*a, **k)
            finally:
                spent["candidates"] += time.process_time() - t

        duplicates.candidate_pairs = timed
        t0 = time.process_time()
        try:
            report = duplicate_report(coll)
        finally:
            duplicates.candidate_pairs = real
        cpu = time.process_time() - t0
        got = {"images": n, "cpu_ms_per_image": round(1000 * cpu / n, 2),
               "candidates_cpu_ms_per_image": round(1000 * spent["candidates"] / n, 2),
               "candidate_pairs": report.stats["candidate_pairs"], "images_with_features": report.stats["images_with_features"],
               "features_read_back": report.stats["images_features_stored"],
               "copy_pairs": report.stats["copy_pairs"], "retake_pairs": report.stats["retake_pairs"]}
        print(got, flush=True)
        out.append(got)
        coll.close()
    first = out[0]
    for got in out:  # flat means a ratio near 1 against the smallest collection of this run
        print(f"  {got['images']:>7,} images: {got['cpu_ms_per_image']:.2f} ms CPU an image, "
              f"{got['cpu_ms_per_image'] / first['cpu_ms_per_image']:.2f}x the cost at {first['images']:,}", flush=True)
    return out


def _copies_and_retakes(originals: Path, out: Path, n: int) -> Path:
    """``n`` files in ``out``: for each of the first n/2 images under ``originals``, an edited
    copy (brighter, recompressed, a third of them mirrored) and a retake (another viewpoint,
    light and noise, made at 4x and brought back to the original's size)."""
    from PIL import Image, ImageEnhance, ImageOps

    from imagespace.analysis.synthetic import retake

    if out.exists() and sum(1 for _ in out.glob("*.jpg")) >= n:
        return out
    out.mkdir(parents=True, exist_ok=True)
    r = random.Random(0)
    files = sorted(originals.glob("*/*/*.jpg"))
    made = 0
    for i, f in enumerate(files):
        if made >= n:
            break
        im = Image.open(f).convert("RGB")
        copy = ImageEnhance.Brightness(im).enhance(1.15)
        (ImageOps.mirror(copy) if i % 3 == 0 else copy).save(out / f"{i:05d}_copy.jpg", quality=80)
        made += 1
        if made < n:
            big = im.resize((im.width * 4, im.height * 4), Image.Resampling.BICUBIC)
            retake(big, r).resize(im.size, Image.Resampling.LANCZOS).save(out / f"{i:05d}_retake.jpg", quality=90)
            made += 1
    return out


def _cpu_of(cmd: list[str]) -> tuple[float, float, str]:
    """(CPU seconds, user+sys, of the process and its children; wall seconds; stdout) of one command."""
    import os
    import subprocess

    before = os.times()
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system), wall, out


def margin(photos: list[str], sizes: tuple[int, ...], work: Path) -> dict:
    """``imagespace duplicates`` on collections of the first N photos, as a user runs it (a
    process, start-up included), right after ``imagespace index``: CPU per photo at the
    margin is (pass on the largest - pass on the smallest) / the difference in photos.

    Side by side, on the same collections: the pass as it runs (grey images kept by indexing),
    and the pass with nothing kept (the feature store deleted, so every file is decoded again,
    as before indexing kept them)."""
    import json
    import os
    import shutil

    from benchmarks._common import IMAGESPACE
    from imagespace.analysis.pair_cache import FILE_NAME as PAIRS_FILE
    from imagespace.feature_store import FILE_NAME as FEATURES_FILE

    out: dict = {}
    for n in sizes:
        folder, db = work / f"photos{n}", work / f"db{n}"
        shutil.rmtree(db, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        for p in photos[:n]:
            if not (folder / os.path.basename(p)).exists():
                os.symlink(p, folder / os.path.basename(p))
        _cpu_of([*IMAGESPACE, "index", str(folder), "--db", str(db), "--json"])
        shutil.copy(db / FEATURES_FILE, work / f"kept{n}.sqlite")
        got = {}
        for mode in ("as it runs", "nothing kept", "as it runs", "nothing kept"):  # interleaved
            (db / PAIRS_FILE).unlink(missing_ok=True)
            (db / FEATURES_FILE).unlink(missing_ok=True)
            if mode == "as it runs":
                shutil.copy(work / f"kept{n}.sqlite", db / FEATURES_FILE)
            cpu, wall, doc = _cpu_of([*IMAGESPACE, "duplicates", "--db", str(db), "--json"])
            got.setdefault(mode, []).append((cpu, wall, json.loads(doc)["stats"]))
        out[n] = got
        for mode, runs in got.items():
            print(f"  {n} photos, {mode}: CPU {min(r[0] for r in runs):.2f} s, wall {min(r[1] for r in runs):.2f} s, "
                  f"candidate pairs {runs[0][2].get('candidate_pairs')}, copies {runs[0][2].get('copy_pairs')}, "
                  f"retakes {runs[0][2].get('retake_pairs')}", flush=True)
    lo, hi = min(sizes), max(sizes)
    for mode in ("as it runs", "nothing kept"):
        cpu = [min(r[0] for r in out[n][mode]) for n in (lo, hi)]
        wall = [min(r[1] for r in out[n][mode]) for n in (lo, hi)]
        print(f"  at the margin ({hi} - {lo} photos), {mode}: {1000 * (cpu[1] - cpu[0]) / (hi - lo):.1f} ms CPU per photo, "
              f"{1000 * (wall[1] - wall[0]) / (hi - lo):.1f} ms wall; whole pass on {hi}: {1000 * cpu[1] / hi:.1f} ms CPU per photo",
              flush=True)
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
    ap.add_argument("--work", type=Path, default=None, help="keep the extracted images and collections here (--growth, --margin)")
    ap.add_argument("--margin", type=int, nargs="+", metavar="N",
                    help="instead: `imagespace duplicates` on 12 MP photos, N photos each (e.g. 60 180), CPU per photo at the margin")
    ap.add_argument("--photos", type=Path, default=None, help="with --margin: a folder of photos to use (default: made from flowers12)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from imagespace.analysis.duplicates import NEIGHBOURS

    import cv2

    if args.margin:
        from benchmarks._common import cpu_name, make_camera_photos

        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores", flush=True)
        if args.photos:
            photos = sorted(str(p) for p in args.photos.glob("*.jpg"))
        else:
            photos = make_camera_photos(Path(tempfile.gettempdir()) / "imagespace-bench-12mp", max(args.margin))
        margin(photos, tuple(args.margin), args.work or Path(tempfile.mkdtemp(prefix="dup-margin-")))
        return 0
    if args.growth:
        from benchmarks._common import cpu_name

        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores", flush=True)
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
