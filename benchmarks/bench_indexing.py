"""End-to-end indexing: ``imagespace index`` against the usual one-image-at-a-time pipeline.

    python -m benchmarks.bench_indexing [--quick] [--cifar10]   # BENCH_MODEL=NET: another network

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
    CIFAR10_ZIP, FLOWERS12, IMAGESPACE, cpu_name, flowers12_split, header, make_camera_photos, need, row, run_cli, spread,
)

PHOTO_DIR = Path(tempfile.gettempdir()) / "imagespace-bench-12mp"


def baseline_rate(paths: list[str], arch: str | None = None, threads: int | None = None) -> float:
    """images/s of Pillow full decode + resize + PyTorch eager, batch of 1, one process,
    with the network ``arch`` (default: the default model's) at its own input size (PyTorch's
    own thread count, or ``threads``)."""
    return _baseline(paths, arch, threads)[0]


def _baseline(paths: list[str], arch: str | None = None, threads: int | None = None) -> tuple[float, float]:
    """(images/s of wall time, CPU seconds per image) of the usual pipeline."""
    import torch
    from PIL import Image

    from imagespace.models import DEFAULT_MODEL
    from imagespace.models.networks import network

    arch = arch or DEFAULT_MODEL

    net = _torch_net(arch)
    size = network(arch).input_size
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        with torch.no_grad():
            net(torch.zeros((1, size, size, 3), dtype=torch.uint8))  # warm-up, not timed
            t, c = time.perf_counter(), time.process_time()
            for p in paths:
                im = Image.open(p).convert("RGB")  # full-size decode
                im = im.resize((size, size), Image.Resampling.BILINEAR)
                x = torch.from_numpy(np.asarray(im).copy()).unsqueeze(0)
                feats, _ = net(x)
                _ = (feats / feats.norm(dim=1, keepdim=True)).numpy()[0]
            return len(paths) / (time.perf_counter() - t), (time.process_time() - c) / len(paths)
    finally:
        torch.set_num_threads(default_threads)


_NETS: dict = {}


def _default() -> str:
    from imagespace.models import DEFAULT_MODEL

    return DEFAULT_MODEL


def _network() -> str:
    """The network measured: the default, or ``BENCH_MODEL`` (e.g. efficientnet-lite0)."""
    return os.environ.get("BENCH_MODEL") or _default()


def _torch_net(arch: str):
    if arch not in _NETS:
        from imagespace.models.torch_nets import build_embedding_net
        from imagespace.models.networks import network

        _NETS[arch] = build_embedding_net(network(arch).weights_path(), arch=arch)
    return _NETS[arch]


def imagespace_rate(folder: str, n: int, model: str | None = None) -> tuple[float, float]:
    """(images/s over the whole process, images/s the run reports) of ``imagespace index``."""
    return _imagespace(folder, n, model)[:2]


def _imagespace(folder: str, n: int, model: str | None = None) -> tuple[float, float, float]:
    """(images/s over the whole process, images/s the run reports, CPU seconds per image of
    the whole process: user + system, start-up included)."""
    db = tempfile.mkdtemp(prefix="imagespace-bench-db-")
    try:
        before = os.times()
        wall, out = run_cli(["index", folder, "--db", db, "--json", *(["--model", model] if model else [])])
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        report = json.loads(out)
        assert report["added"] == n and not report["failed"], report
        return n / wall, float(report["images_per_second"]), cpu / n
    finally:
        shutil.rmtree(db, ignore_errors=True)


def compare(title: str, folder: str, paths: list[str], baseline_n: int, repeats: int) -> None:
    """Whole runs side by side. The baseline is timed with PyTorch's own threads and with one
    thread, and the faster counts (on a loaded machine PyTorch's threads wait on each other
    and the default can be several times slower: that would flatter the ratio)."""
    net = _network()
    header(f"{title}, network {net} on both sides (CPU: {cpu_name()}, {os.cpu_count()} cores)")
    base, base_cpu, whole, inrun, cpu = [], [], [], [], []
    for _ in range(repeats):  # interleaved: baseline, candidate, baseline, candidate...
        tries = [_baseline(paths[:baseline_n], net), _baseline(paths[:baseline_n], net, threads=1)]
        best = max(tries)
        base.append(best[0])
        base_cpu.append(best[1])
        w, r, c = _imagespace(folder, len(paths), None if net == _default() else net)
        whole.append(w)
        inrun.append(r)
        cpu.append(c)
    ratios = [w / b for w, b in zip(whole, base)]
    row(f"baseline, {baseline_n} images (img/s; faster of default and 1 thread)", spread(base, "{:.2f}"))
    row("baseline, CPU per image (ms)", spread([1000 * c for c in base_cpu], "{:.1f}"))
    row(f"imagespace index, {len(paths)} images, whole process (img/s)", spread(whole, "{:.2f}"))
    row("imagespace index, as the run reports it (img/s)", spread(inrun, "{:.2f}"))
    row("imagespace index, CPU per image, whole process (ms)", spread([1000 * c for c in cpu], "{:.1f}"))
    row("ratio whole-process / baseline (wall)", spread(ratios, "{:.1f}x"))
    row("ratio in-run / baseline (wall)", spread([r / b for r, b in zip(inrun, base)], "{:.1f}x"))
    row("ratio of CPU per image, baseline / whole process", spread([b / c for b, c in zip(base_cpu, cpu)], "{:.1f}x"))


def breakdown(title: str, paths: list[str]) -> None:
    """CPU time per image of each stage, one stage at a time, single thread where possible."""
    from imagespace.collection import Collection
    from imagespace.embed import Embedded, FileInfo, content_digest
    from imagespace.images import VERIFY_SIDE, decode, read_bytes
    from imagespace.index.hnsw import VectorIndex
    from imagespace.models import create_model

    header(title)
    empty = tempfile.mkdtemp(prefix="imagespace-bench-empty-")
    db = tempfile.mkdtemp(prefix="imagespace-bench-db-")
    try:  # a whole process with nothing to embed: interpreter, imports, collection, scan
        wall, _ = run_cli(["index", empty, "--db", db, "--json"])
    finally:
        shutil.rmtree(db, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    row("start-up: `imagespace index` of an empty folder (wall)", f"{wall * 1000:7.0f} ms once per run")
    model = create_model(_network())
    t = time.process_time()
    model.session  # noqa: B018
    row("model load (ONNX Runtime session, CPU)", f"{(time.process_time() - t) * 1000:7.0f} ms once per run")
    n = len(paths)
    t = time.process_time()
    datas = [read_bytes(p) for p in paths]
    t_read = time.process_time() - t
    t = time.process_time()
    digests = [content_digest(d) for d in datas]
    t_digest = time.process_time() - t
    t = time.process_time()
    decoded = [decode(d, size=model.input_size, grey_side=VERIFY_SIDE) for d in datas]
    t_decode = time.process_time() - t
    pixels = np.stack([d.pixels for d in decoded])
    model.embed(pixels[:8])
    t = time.process_time()
    outs = [model.embed(pixels[i : i + 32]) for i in range(0, n, 32)]
    t_model = time.process_time() - t
    vectors = np.concatenate([o.vectors for o in outs])
    tags = [t for o in outs for t in o.tags]
    items = [
        Embedded(FileInfo(p, len(d), 0, g), vectors[i], tags[i], dec.width, dec.height, dec.format)
        for i, (p, d, g, dec) in enumerate(zip(paths, datas, digests, decoded))
    ]
    with tempfile.TemporaryDirectory() as db:
        coll = Collection(db)
        coll.bind_model(model.model_id, model.name, model.dim)
        t = time.process_time()
        for i in range(0, n, 32):
            coll.write_embedded(items[i : i + 32], [])
        t_db = time.process_time() - t
        from imagespace.feature_store import FeatureStore, pack_grey

        t = time.process_time()
        store = FeatureStore(db)
        for i in range(0, n, 32):
            store.put("grey", [(it.file.digest, pack_grey(dec.grey)) for it, dec in zip(items[i : i + 32], decoded[i : i + 32])
                               if dec.grey is not None])
        store.close()
        t_db += time.process_time() - t
        t = time.process_time()
        VectorIndex.open(coll).save_if_changed()
        t_index = time.process_time() - t
        coll.close()
    total = t_read + t_digest + t_decode + t_model + t_db + t_index
    for name, secs in [("read file", t_read), ("digest (XXH3-128)", t_digest), ("decode + resize (+ grey for duplicates) (1 thread)", t_decode),
                       (f"model, batch 32 ({model.session.get_session_options().intra_op_num_threads} threads)", t_model),
                       ("database writes (SQLite, per batch; grey images kept)", t_db), ("vector index build + save", t_index)]:
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
