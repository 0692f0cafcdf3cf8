"""The map of a large collection: wall time of ``imagespace map`` at 100,000 images.

The collection is made quickly, not by indexing: the 960 flowers12 photos are embedded
once, and each of the N rows is a link (hard, or symbolic across file systems) to one of them with that photo's vector plus a
little noise (so the rows form the same clumps a real archive of look-alike photos would).
The command then runs in its own process, from start to written file, as a user runs it.

Baseline, measured in the same run: what a map without sampling costs, umap-learn (the
same settings, its own neighbour search) over every vector of the collection.

    python -m benchmarks.bench_map [--images 100000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import FLOWERS12, IMAGESPACE, header, need, row

NOISE = 0.15  # per-dimension noise relative to the vector's scale: near copies, not clones


def _collection(folder: Path, images: int) -> Path:
    from imagespace.collection import Collection
    from imagespace.embed import Embedded, FileInfo, embed_files
    from imagespace.models import DEFAULT_MODEL, create_model

    sources = sorted(str(p) for p in need(FLOWERS12).rglob("*.jpg"))
    model = create_model(DEFAULT_MODEL)
    t = time.perf_counter()
    embedded = {r.file.path: r for batch in embed_files(sources, model) for r in batch if isinstance(r, Embedded)}
    row(f"embedding the {len(sources)} flowers12 photos once", f"{time.perf_counter() - t:.1f} s")
    sources = [p for p in sources if p in embedded]
    links = folder / "photos"
    links.mkdir()
    db = folder / "db"
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    with Collection(db) as coll:
        coll.bind_model(model.model_id, DEFAULT_MODEL, model.dim)
        for start in range(0, images, 2000):
            items = []
            for i in range(start, min(images, start + 2000)):
                src = embedded[sources[i % len(sources)]]
                path = links / f"{i:06d}.jpg"
                _link(src.file.path, path)
                v = src.vector + NOISE * rng.standard_normal(len(src.vector)).astype(np.float32) / np.sqrt(len(src.vector))
                v /= np.linalg.norm(v)
                st = path.stat()
                items.append(Embedded(FileInfo(str(path), st.st_size, st.st_mtime_ns, f"{i:032x}"), v, src.tags,
                                      src.width, src.height, src.format))
            coll.write_embedded(items, [])
    row(f"making a collection of {images:,} rows (links to flowers12, noisy vectors)", f"{time.perf_counter() - t:.1f} s")
    return db


def _link(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a symbolic link reads the same
        os.symlink(src, dst)


def _time_map(db: Path, out: Path) -> float:
    import subprocess

    t = time.perf_counter()
    subprocess.run([*IMAGESPACE, "map", "--db", str(db), "--out", str(out)], check=True, capture_output=True, text=True)
    return time.perf_counter() - t


def _baseline(db: Path) -> float:
    """umap-learn as a user would call it on every vector (PCA to 50 first, its own
    neighbour search): the layout alone, without thumbnails or a file."""
    from sklearn.decomposition import PCA

    from imagespace.collection import Collection

    t = time.perf_counter()
    with Collection(db, create=False, readonly=True) as coll:
        _, vectors = coll.vectors()
    import umap

    reduced = PCA(50, random_state=0).fit_transform(vectors)
    umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0).fit_transform(reduced)
    return time.perf_counter() - t


def run(quick: bool = False, images: int | None = None, baseline: bool = True) -> None:
    images = images or (10_000 if quick else 100_000)
    header(f"map of a collection of {images:,} images")
    folder = Path(tempfile.mkdtemp(prefix="imagespace-bench-map-"))
    try:
        db = _collection(folder, images)
        first = _time_map(db, folder / "atlas.png")  # numba's on-disk cache may still be empty
        png = _time_map(db, folder / "atlas2.png")
        html = _time_map(db, folder / "atlas.html")
        row("imagespace map --out atlas.png (first run)", f"{first:.1f} s")
        row("imagespace map --out atlas.png", f"{png:.1f} s", "goal < 60 s")
        row("imagespace map --out atlas.html", f"{html:.1f} s",
            f"{(folder / 'atlas.html').stat().st_size / 1e6:.1f} MB page")
        if baseline:
            base = _baseline(db)
            row(f"baseline: UMAP over all {images:,} vectors (layout only)", f"{base:.1f} s",
                f"imagespace map {base / png:.1f}x faster")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--no-baseline", action="store_true", help="skip UMAP over every vector (minutes at 100,000)")
    ap.add_argument("--quick", action="store_true", help="10,000 images")
    args = ap.parse_args()
    run(quick=args.quick, images=None if args.quick else args.images, baseline=not args.no_baseline)
