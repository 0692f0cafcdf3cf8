"""End-to-end indexing: ``imagespace index`` against the usual one-image-at-a-time pipeline.

The baseline is what img2vec-style tools do: Pillow decodes the whole file, resizes it,
and PyTorch eager runs the same network on one image at a time, in one process. It is
timed in this process with the network already loaded (its best case); ``imagespace
index`` is timed as a whole process, start-up included (its worst case), on a new
collection each time, over 192 photos (a process start costs about half a second,
which a real archive of thousands of photos spreads much thinner). Both run back to back,
repeated, so the ratio is taken on the same machine state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ._common import (
    CIFAR10_ZIP, FLOWERS12, IMAGESPACE, flowers12_split, header, make_camera_photos, need, row, run_cli, spread,
)

PHOTO_DIR = Path(tempfile.gettempdir()) / "imagespace-bench-12mp"


def baseline_rate(paths: list[str], arch: str = "efficientnet-lite0") -> float:
    """images/s of Pillow full decode + resize + PyTorch eager, batch of 1, one process,
    with the network ``arch`` at its own input size."""
    import torch
    from PIL import Image

    from imagespace.models.networks import network

    net = _torch_net(arch)
    size = network(arch).input_size
    with torch.no_grad():
        net(torch.zeros((1, size, size, 3), dtype=torch.uint8))  # warm-up, not timed
        t = time.perf_counter()
        for p in paths:
            im = Image.open(p).convert("RGB")  # full-size decode
            im = im.resize((size, size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(im).copy()).unsqueeze(0)
            feats, _ = net(x)
            _ = (feats / feats.norm(dim=1, keepdim=True)).numpy()[0]
        return len(paths) / (time.perf_counter() - t)


_NETS: dict = {}


def _torch_net(arch: str):
    if arch not in _NETS:
        from imagespace.models.torch_nets import build_embedding_net
        from imagespace.models.networks import network

        _NETS[arch] = build_embedding_net(network(arch).weights_path(), arch=arch)
    return _NETS[arch]


def imagespace_rate(folder: str, n: int, model: str | None = None) -> tuple[float, float]:
    """(images/s over the whole process, images/s the run reports) of ``imagespace index``."""
    db = tempfile.mkdtemp(prefix="imagespace-bench-db-")
    try:
        wall, out = run_cli(["index", folder, "--db", db, "--json", *(["--model", model] if model else [])])
        report = json.loads(out)
        assert report["added"] == n and not report["failed"], report
        return n / wall, float(report["images_per_second"])
    finally:
        shutil.rmtree(db, ignore_errors=True)


def compare(title: str, folder: str, paths: list[str], baseline_n: int, repeats: int) -> None:
    header(title)
    base, whole, inrun = [], [], []
    for _ in range(repeats):  # interleaved: baseline, candidate, baseline, candidate...
        base.append(baseline_rate(paths[:baseline_n]))
        w, r = imagespace_rate(folder, len(paths))
        whole.append(w)
        inrun.append(r)
    ratios = [w / b for w, b in zip(whole, base)]
    row(f"baseline, {baseline_n} images (img/s)", spread(base, "{:.2f}"))
    row(f"imagespace index, {len(paths)} images, whole process (img/s)", spread(whole, "{:.2f}"))
    row("imagespace index, as the run reports it (img/s)", spread(inrun, "{:.2f}"))
    row("ratio whole-process / baseline", spread(ratios, "{:.1f}x"))
    row("ratio in-run / baseline", spread([r / b for r, b in zip(inrun, base)], "{:.1f}x"))


def breakdown(title: str, paths: list[str]) -> None:
    """CPU time per image of each stage, one stage at a time, single thread where possible."""
    from imagespace.collection import Collection
    from imagespace.embed import Embedded, FileInfo, content_digest
    from imagespace.images import decode, read_bytes
    from imagespace.index.hnsw import VectorIndex
    from imagespace.models import create_model

    header(title)
    model = create_model()
    n = len(paths)
    t = time.perf_counter()
    datas = [read_bytes(p) for p in paths]
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    digests = [content_digest(d) for d in datas]
    t_digest = time.perf_counter() - t
    t = time.perf_counter()
    decoded = [decode(d, size=model.input_size) for d in datas]
    t_decode = time.perf_counter() - t
    pixels = np.stack([d.pixels for d in decoded])
    model.embed(pixels[:8])
    t = time.perf_counter()
    outs = [model.embed(pixels[i : i + 32]) for i in range(0, n, 32)]
    t_model = time.perf_counter() - t
    vectors = np.concatenate([o.vectors for o in outs])
    tags = [t for o in outs for t in o.tags]
    items = [
        Embedded(FileInfo(p, len(d), 0, g), vectors[i], tags[i], dec.width, dec.height, dec.format)
        for i, (p, d, g, dec) in enumerate(zip(paths, datas, digests, decoded))
    ]
    with tempfile.TemporaryDirectory() as db:
        coll = Collection(db)
        coll.bind_model(model.model_id, "efficientnet-lite0", model.dim)
        t = time.perf_counter()
        for i in range(0, n, 32):
            coll.write_embedded(items[i : i + 32], [])
        t_db = time.perf_counter() - t
        t = time.perf_counter()
        VectorIndex.open(coll).save_if_changed()
        t_index = time.perf_counter() - t
        coll.close()
    total = t_read + t_digest + t_decode + t_model + t_db + t_index
    for name, secs in [("read file", t_read), ("digest (blake2b)", t_digest), ("decode + resize (1 thread)", t_decode),
                       (f"model, batch 32 ({model.session.get_session_options().intra_op_num_threads} threads)", t_model),
                       ("database writes (SQLite, per batch)", t_db), ("vector index build + save", t_index)]:
        row(name, f"{secs / n * 1000:7.2f} ms/image", f"{secs / total * 100:5.1f} %")


def cifar10_peak_memory(limit: int | None = None) -> None:
    """Peak resident memory of ``imagespace index`` over the 50,000 cifar10 training images."""
    header("peak memory: indexing the cifar10 training images")
    zpath = need(CIFAR10_ZIP)
    with tempfile.TemporaryDirectory(prefix="imagespace-bench-cifar-") as tmp:
        folder = Path(tmp) / "train"
        t = time.perf_counter()
        with zipfile.ZipFile(zpath) as z:
            names = [m for m in z.namelist() if m.startswith("train/") and m.endswith(".jpg")]
            names = names[:limit] if limit else names
            for name in names:
                z.extract(name, tmp)
        print(f"  extracted {len(names)} files in {time.perf_counter() - t:.0f}s", flush=True)
        db = Path(tmp) / "db"
        t = time.perf_counter()
        proc = subprocess.Popen([*IMAGESPACE, "index", str(folder), "--db", str(db), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        report = json.loads(out)
        row("images indexed", report["added"], f"failed {len(report['failed'])}")
        row("wall time", f"{wall:.0f} s", f"{report['added'] / wall:.0f} img/s whole process",
            f"{report['images_per_second']:.0f} img/s as reported")
        row("peak resident memory (ru_maxrss)", f"{usage.ru_maxrss / 1024:.0f} MB", "goal < 1024 MB")


def run(quick: bool = False, cifar10: bool = False) -> None:
    n_photos = 16 if quick else 192
    repeats = 1 if quick else 3
    t = time.perf_counter()
    photos = make_camera_photos(PHOTO_DIR, n_photos)
    print(f"  {n_photos} 12 MP JPEGs in {PHOTO_DIR} ({time.perf_counter() - t:.0f}s to make or find)", flush=True)
    with tempfile.TemporaryDirectory(prefix="imagespace-bench-photos-") as tmp:
        for p in photos:  # exactly these files, whatever else the cache folder holds
            os.symlink(p, os.path.join(tmp, os.path.basename(p)))
        compare("indexing 12-megapixel JPEGs", tmp, photos, 6 if quick else 12, repeats)
    breakdown("where the time goes, 12 MP JPEGs (CPU per image, stage by stage)", photos[: 16 if quick else 32])
    train, _ = flowers12_split("train")
    test, _ = flowers12_split("test")
    small = train + test
    compare(f"indexing flowers12 as is (224 px JPEGs, {len(small)} files)", str(need(FLOWERS12)),
            small, 48 if quick else 120, repeats)
    breakdown("where the time goes, flowers12 (CPU per image, stage by stage)", small[: 256 if quick else 480])
    if cifar10:
        cifar10_peak_memory(5000 if quick else None)


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv, cifar10="--cifar10" in sys.argv)
