"""Copies, retakes and look-alikes told apart: a data set built in code, and its figures.

    python -m benchmarks.duplicate_tiers --half train     # the half the thresholds were tuned on
    python -m benchmarks.duplicate_tiers --half test      # the held-out half: the figures to quote
    python -m benchmarks.duplicate_tiers --half test --no-exif   # the same set with EXIF stripped

Each half is built from one flowers12 folder (train or test), never both, in two kinds:

- *flowers*: flowers12 photos as they are (about 500x375), given camera EXIF
  (DateTimeOriginal, SubsecTimeOriginal, Make, Model) on three in four of them;
- *scenes*: 1600x1200 photos composed from other flowers12 photos of that half (one
  photo enlarged to fill the frame, two others framed on it, film grain), unlike flowers12
  in size, shape and content, with EXIF too.

Then, from some of the originals:

- *copies*: resized up or down, re-saved at JPEG quality 25, cropped, rotated 4-10 degrees,
  brightened, recoloured, mirrored, captioned, bordered, or several at once; saved as JPEG or
  PNG; a third keep the original's EXIF (as many editors do), the rest have none;
- *retakes*: a second shot of the same scene: a perspective change with a shift of the frame,
  parallax (a smooth field of small displacements), light from another side, sensor noise,
  and EXIF from the same camera 0.4-3 s later (no EXIF when the original had none);
- *look-alikes*: every other photo of the same species is one, untouched.

Truth: two files are copies when one was made from the other or both from one file; a
retake pair shows the same scene from two different shots. Everything else is not a
duplicate.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from imagespace.analysis.synthetic import exif_for, retake

ROOT = Path(__file__).resolve().parents[1]
FLOWERS12 = ROOT.parent / "shared" / "data" / "flowers12"
CAMERAS = [("Canon", "EOS 80D"), ("NIKON CORPORATION", "NIKON D7500"), ("Apple", "iPhone 12")]
SCENE_SIZE = (1600, 1200)


@dataclass
class Item:
    path: str
    picture: str  # the file whose pixels this one was made from (itself for originals)
    scene: str  # the scene shot (one for an original and its retakes)
    kind: str  # original | copy | retake
    edit: str = ""
    species: str = ""


# -- edits (copies) -------------------------------------------------------------------------


def _edits():
    from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

    def resize(im, r):
        return im.resize((int(im.width * 1.6), int(im.height * 1.6)), Image.Resampling.BICUBIC)

    def shrink(im, r):
        return im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.LANCZOS)

    def recompress(im, r):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=25)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def crop(im, r):
        f = r.uniform(0.08, 0.2)
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

    def caption(im, r):
        im = im.copy()
        d = ImageDraw.Draw(im)
        size = max(12, im.height // 14)
        font = ImageFont.load_default(size=size)
        d.text((im.width // 20, im.height - 2 * size), "(c) holiday 2019", fill=(255, 255, 255), font=font)
        d.rectangle((5, 5, 5 + im.width // 5, 5 + size), fill=(200, 30, 30))
        return im

    def border(im, r):
        return ImageOps.expand(im, border=max(10, im.width // r.randint(20, 40)), fill=r.choice([(255, 255, 255), (0, 0, 0)]))

    def mixed(im, r):
        return recompress(brightness(crop(mirror(im, r), r), r), r)

    return [resize, shrink, recompress, crop, rotate, brightness, colour, mirror, caption, border, mixed]


# -- scenes -------------------------------------------------------------------------------


def compose_scene(files: list[Path], r: random.Random):
    """A 1600x1200 photo: the first file fills the frame, the others are framed on it."""
    from PIL import Image, ImageOps

    w, h = SCENE_SIZE
    base = ImageOps.fit(Image.open(files[0]).convert("RGB"), (w, h), Image.Resampling.BICUBIC)
    for f in files[1:]:
        pic = Image.open(f).convert("RGB")
        side = r.randint(380, 560)
        pic = ImageOps.expand(pic.resize((side, side * pic.height // pic.width), Image.Resampling.BICUBIC), border=12, fill=(245, 240, 230))
        base.paste(pic, (r.randint(0, w - pic.width), r.randint(0, h - pic.height)))
    rng = np.random.default_rng(r.randrange(2**32))
    px = np.asarray(base).astype(np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB")


# -- the set ------------------------------------------------------------------------------


def build(out: Path, files: list[Path], *, flowers: int, scenes: int, copies: float = 0.3, retakes: float = 0.2,
          exif: bool = True, seed: int = 0) -> list[Item]:
    """Write the set under ``out`` from ``files`` (photos of one half) and return its truth.

    ``flowers`` photos are used as they are and ``scenes`` scenes are composed from three
    other photos each; ``copies`` and ``retakes`` are the shares of originals that get one
    (a few get two, and a few retakes get a copy of their own).
    """
    from PIL import Image

    r = random.Random(seed)
    files = sorted(files)
    r.shuffle(files)
    need = flowers + 3 * scenes
    if len(files) < need:
        raise ValueError(f"{need} photos needed, {len(files)} given")
    out.mkdir(parents=True, exist_ok=True)
    edits = _edits()
    items: list[Item] = []
    clock = 1_600_000_000.0

    def save(im, path: Path, camera, taken, quality=92):
        kw = {"exif": exif_for(camera, taken)} if (exif and camera) else {}
        if path.suffix == ".png":
            im.save(path, **kw)
        else:
            im.save(path, quality=quality, **kw)

    originals: list[tuple[Item, object, tuple | None, float | None]] = []
    for n, f in enumerate(files[:flowers]):
        originals.append((Item("", "", "", "original", species=f.parent.name), Image.open(f).convert("RGB"), None, None))
    for n in range(scenes):
        group = files[flowers + 3 * n : flowers + 3 * n + 3]
        originals.append((Item("", "", "", "original", edit="scene", species=group[0].parent.name), compose_scene(group, r), None, None))
    for n, (item, im, _, _) in enumerate(originals):
        clock += r.uniform(600, 86_400)
        camera = r.choice(CAMERAS) if r.random() < 0.75 else None
        kind = "scene" if item.edit == "scene" else "flower"
        item.path = str(out / f"{kind}_{n:04d}.jpg")
        item.picture = item.scene = item.path
        item.edit = ""
        save(im, Path(item.path), camera, clock)
        originals[n] = (item, im, camera, clock)
        items.append(item)

    def add_copies(item: Item, im, camera, taken, count: int):
        for k in range(count):
            edit = r.choice(edits)
            ext = ".png" if r.random() < 0.2 else ".jpg"
            path = out / f"{Path(item.path).stem}__copy{k}_{edit.__name__}{ext}"
            keep_exif = r.random() < 1 / 3
            save(edit(im, r), path, camera if keep_exif else None, taken, quality=90)
            items.append(Item(str(path), item.picture, item.scene, "copy", edit.__name__, item.species))

    for item, im, camera, taken in originals:
        if r.random() < copies:
            add_copies(item, im, camera, taken, 2 if r.random() < 0.15 else 1)
        if r.random() < retakes:
            for k in range(2 if r.random() < 0.2 else 1):
                path = out / f"{Path(item.path).stem}__retake{k}.jpg"
                shot = retake(im, r)
                when = taken + r.uniform(0.4, 3.0) * (k + 1) if taken else None
                save(shot, path, camera, when)
                again = Item(str(path), str(path), item.scene, "retake", "retake", item.species)
                items.append(again)
                if r.random() < 0.2:
                    add_copies(again, shot, camera, when, 1)
    return items


# -- scoring --------------------------------------------------------------------------------


def truth_pairs(items: list[Item]) -> tuple[set, set]:
    copies, retakes = set(), set()
    for a, b in itertools.combinations(items, 2):
        key = tuple(sorted((a.path, b.path)))
        if a.picture == b.picture:
            copies.add(key)
        elif a.scene == b.scene:
            retakes.add(key)
    return copies, retakes


def group_pairs(groups: list[list[str]]) -> set:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def sources(item: Item, half: str) -> list[Path]:
    """The flowers12 files an item was built from (the set's shuffle, replayed)."""
    files = sorted(half_files(half))
    random.Random(SETS[half]["seed"]).shuffle(files)
    n = int(Path(item.scene).stem.split("_")[1])
    flowers = SETS[half]["flowers"]
    return [files[n]] if n < flowers else files[flowers + 3 * (n - flowers) : flowers + 3 * (n - flowers) + 3]


def source_duplicates(items: list[Item], pairs: set, half: str) -> set:
    """Of ``pairs`` outside the truth, those whose flowers12 sources show one photo (flowers12
    holds photos saved twice or cropped twice; checked by SIFT and pixels, not the method)."""
    from benchmarks.quality_analysis import same_scene

    by_path = {i.path: i for i in items}
    out = set()
    for a, b in pairs:
        sa, sb = sources(by_path[a], half), sources(by_path[b], half)
        if any(same_scene(str(x), str(y)) for x in sa for y in sb if x != y):
            out.add((a, b))
    return out


def score(items: list[Item], groups: list[list[str]], retake_groups: list[list[str]], half: str | None = None,
          pair_tiers: dict | None = None) -> dict:
    """Pair precision and recall per tier; kept files; what --list-out would list wrongly.

    With ``half``, predicted pairs outside the truth whose sources are one flowers12 photo
    are left out of the counts (and counted as ``source_duplicates``).
    """
    true_copy, true_retake = truth_pairs(items)
    pred_copy, pred_retake = group_pairs(groups), group_pairs(retake_groups)
    skipped = set()
    if half:
        skipped = source_duplicates(items, (pred_copy | pred_retake) - true_copy - true_retake, half)
        pred_copy, pred_retake = pred_copy - skipped, pred_retake - skipped
    by_path = {i.path: i for i in items}

    def pr(pred, true):
        tp = len(pred & true)
        return {"precision": round(tp / len(pred), 4) if pred else 1.0, "recall": round(tp / len(true), 4) if true else 1.0,
                "predicted_pairs": len(pred), "true_pairs": len(true)}

    out = {"copy": pr(pred_copy, true_copy), "retake": pr(pred_retake, true_retake)}
    out["copy"]["retake_pairs_called_copies"] = len(pred_copy & true_retake)
    out["copy"]["lookalike_pairs_called_copies"] = len(pred_copy - true_copy - true_retake)
    out["retake"]["copy_pairs_called_retakes"] = len(pred_retake & true_copy)
    missed = [p for p in true_copy - pred_copy]
    out["copy"]["missed_by_edit"] = _count(by_path[b].edit or by_path[a].edit for a, b in missed)
    kept_ok = kept_total = listed_wrong = 0
    kept_wrong: list[str] = []
    for g in groups:
        members = [by_path[p] for p in g if p in by_path]
        # The file every other member was made from, when the group holds it.
        sources = [m for m in members if all(o.picture == m.path or o is m for o in members)]
        if sources:
            kept_total += 1
            kept_ok += g[0] == sources[0].path
            if g[0] != sources[0].path:
                kept_wrong.append(f"kept {Path(g[0]).name} over {Path(sources[0].path).name}")
        for p in g[1:]:
            listed_wrong += by_path[p].picture != by_path[g[0]].picture and tuple(sorted((p, g[0]))) not in skipped
    out["kept"] = {"groups_holding_their_original": kept_total, "original_kept": kept_ok, "wrong": kept_wrong}
    if pair_tiers is not None:
        # Pair by pair, before grouping: each verified pair's tier against the truth.
        tiers = {k: t for k, t in pair_tiers.items() if k not in skipped}
        said = {t: {k for k, v in tiers.items() if v == t} for t in ("copy", "retake")}
        out["pairs"] = {"copy": pr(said["copy"], true_copy), "retake": pr(said["retake"], true_retake)}
        out["pairs"]["copy"]["retakes_called_copies"] = len(said["copy"] & true_retake)
        out["pairs"]["retake"]["copies_called_retakes"] = len(said["retake"] & true_copy)
    out["list_out_not_a_copy_of_kept"] = listed_wrong
    out["source_duplicates"] = len(skipped)
    return out


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def half_files(half: str) -> list[Path]:
    return sorted((FLOWERS12 / half).glob("*/*.jpg"))


SETS = {"train": dict(flowers=300, scenes=40, seed=1), "test": dict(flowers=150, scenes=30, seed=2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.duplicate_tiers", description=__doc__.splitlines()[0])
    ap.add_argument("--half", choices=["train", "test"], default="test")
    ap.add_argument("--no-exif", action="store_true", help="build the set without any EXIF")
    ap.add_argument("--work", type=Path, default=None, help="keep the set and its collection here")
    ap.add_argument("--signals", default="shape,pixels,exif", help="which signals tell copies from retakes (to measure each)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from benchmarks.quality_analysis import index_folder
    from imagespace.analysis.duplicates import duplicate_report

    work = args.work or Path(tempfile.mkdtemp(prefix="dup-tiers-"))
    folder = work / f"{args.half}{'-noexif' if args.no_exif else ''}"
    truth_file = folder / "truth.json"
    if truth_file.exists():
        items = [Item(**d) for d in json.loads(truth_file.read_text())]
    else:
        items = build(folder / "photos", half_files(args.half), exif=not args.no_exif, **SETS[args.half])
        truth_file.write_text(json.dumps([asdict(i) for i in items]))
    t0 = time.perf_counter()
    coll = index_folder(folder / "photos", folder / "db")
    index_seconds = time.perf_counter() - t0
    # Verdicts of earlier runs forgotten: the CPU figure is that of a first run after indexing
    # (with the grey images indexing keeps; features kept by an earlier pass on a reused
    # --work folder count too). Fewer signals, to measure what each adds, are set on the
    # pass's module; their verdicts are not kept.
    from imagespace.analysis import duplicates
    from imagespace.analysis.pair_cache import FILE_NAME as PAIRS_FILE

    signals = tuple(x for x in args.signals.split(",") if x)
    (folder / "db" / PAIRS_FILE).unlink(missing_ok=True)
    default_signals, duplicates.SIGNALS = duplicates.SIGNALS, signals
    t0 = time.process_time()
    try:
        report = duplicate_report(coll)
    finally:
        duplicates.SIGNALS = default_signals
    cpu = time.process_time() - t0
    if signals != default_signals:
        (folder / "db" / PAIRS_FILE).unlink(missing_ok=True)
    rows = coll.rows(i for g in report.groups + report.retakes for i in g)
    groups = [[rows[i].path for i in g] for g in report.groups]
    retakes = [[rows[i].path for i in g] for g in report.retakes]
    path = {r.id: r.path for r in coll.all_rows()}
    pair_tiers = {tuple(sorted((path[a], path[b]))): p.verdict.tier for (a, b), p in report.pairs.items()}
    similarity = {tuple(sorted((path[a], path[b]))): p.similarity for (a, b), p in report.pairs.items()}
    true_copy, true_retake = truth_pairs(items)
    # Recall of the candidates: true pairs among the pairs looked at, and how many of them a
    # fixed cosine cut-off of 0.70 (the earlier rule) would have looked at.
    candidates = {"true_copies_checked": sum(k in similarity for k in true_copy) / max(1, len(true_copy)),
                  "true_retakes_checked": sum(k in similarity for k in true_retake) / max(1, len(true_retake)),
                  "true_copies_above_0.70": sum(similarity.get(k, 0) >= 0.70 for k in true_copy) / max(1, len(true_copy))}
    result = {"half": args.half, "exif": not args.no_exif, "signals": args.signals, "images": len(items),
              "index_seconds": round(index_seconds, 1), "duplicates_cpu_ms_per_image": round(1000 * cpu / len(items), 2), "candidates": candidates,
              **score(items, groups, retakes, args.half, pair_tiers), "stats": report.stats}
    for kind in ("flower", "scene"):
        sub = [i for i in items if Path(i.path).name.startswith(kind)]
        keep = {i.path for i in sub}
        result[f"{kind}s_only"] = {k: v for k, v in score(sub, [[p for p in g if p in keep] for g in groups],
                                                           [[p for p in g if p in keep] for g in retakes], args.half).items() if k in ("copy", "retake")}
    print(json.dumps(result, indent=1))
    coll.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
