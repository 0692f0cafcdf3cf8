"""Networks x cheap tricks: which pretrained network, input size, pooling and post-processing
gives the best vectors, and what each costs.

    python -m benchmarks.bench_networks            # quality, model rate and 12 MP indexing
    python -m benchmarks.bench_networks --quick    # fewer cifar10 images, one speed round
    python -m benchmarks.bench_networks --quality-only | --indexing-only | --rates-only

Quality. Each network runs once per input size through a graph that pools its feature map
with GeM at several p at once, so every (network, size, p) is measured from one pass.
On top of each, post-processing learned on the collection alone (no labels): centring, and
centring + PCA to 256 dimensions (with and without whitening).

- flowers12, test against train: each of the 240 test photos queries the 720 train photos
  (precision@1, mAP); the centring/PCA is learned on the 720 train vectors (the collection).
- flowers12, leave-one-out: each of the 960 photos queries the other 959.
- cifar10 kNN: a fixed subset, 300 train images and 100 test images of each class (3,000 /
  1,000), similarity-weighted 10-NN vote; centring/PCA learned on the 3,000.

The choices (input size, p, post-processing) are tuned on flowers12 only; cifar10 is the set
they were not tuned on, reported for every row at each network's own input size (larger
inputs too with --cifar10-all), so that a choice that only fits flowers12 shows. PCA is
measured at p=3 (the default pooling); every p gets none and centring.

Speed. The model alone at batch 32 (the multi-p graph; GeM costs nothing next to the
network), every configuration in each round, as a ratio to Lite0 at 224 px. Then
``imagespace index --model NET`` on 12-megapixel JPEGs against the usual pipeline run with
the same network (benchmarks/bench_indexing.py: full Pillow decode, PyTorch eager, one
image at a time), interleaved, and the indexing rate on flowers12's small JPEGs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ._common import CIFAR10_ZIP, flowers12_split, header, need, retrieval_quality, row, spread

GEM_PS = (1.0, 2.0, 3.0, 4.0, 6.0)
BATCH = 32
VECTOR_CACHE = Path(tempfile.gettempdir()) / "imagespace-bench-networks"
PCA_DIM = 256


def configs(quick: bool = False) -> list[tuple[str, int]]:
    """(network, input size): each at the size it was trained at, and about 15% larger."""
    from imagespace.models.networks import NETWORKS

    native = [(arch, net.input_size) for arch, net in NETWORKS.items()]
    larger = [(arch, int(round(net.input_size * 1.15 / 4)) * 4) for arch, net in NETWORKS.items()]
    if quick:
        return native
    # Lite0 first (the baseline), then the largest network: the rest is for when time allows.
    return [native[0], larger[0], native[2], native[1], larger[2], larger[1]]


# -- vectors -------------------------------------------------------------------------------


def multi_gem_onnx(arch: str, size: int) -> Path:
    """An ONNX graph: uint8 NHWC at ``size`` in, GeM-pooled features at every p of GEM_PS
    out, concatenated (n, len(GEM_PS) * 1280). Exported once into VECTOR_CACHE."""
    path = VECTOR_CACHE / f"multigem-{arch}-{size}.onnx"
    if path.is_file():
        return path
    import torch
    from torch import nn

    from imagespace.models.torch_nets import PIXEL_MEAN, PIXEL_SCALE, build_backbone, export_onnx
    from imagespace.models.networks import network

    class MultiGem(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, pixels):
            x = (pixels.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_SCALE
            fmap = self.backbone.extract_features(x).clamp(min=1e-6)
            return torch.cat([fmap.pow(p).mean(dim=(2, 3)).pow(1.0 / p) for p in GEM_PS], dim=1)

    net = MultiGem(build_backbone(network(arch).weights_path(), arch=arch)).eval()
    return export_onnx(net, path, input_size=size)


def _session(path: Path):
    from imagespace.models.base import make_session

    return make_session(path, ["CPUExecutionProvider"], None)


def _run(session, pixels: np.ndarray) -> np.ndarray:
    out = [session.run(None, {"pixels": pixels[i : i + BATCH]})[0] for i in range(0, len(pixels), BATCH)]
    return np.concatenate(out).reshape(len(pixels), len(GEM_PS), -1)


def flowers12_bytes() -> tuple[list[bytes], np.ndarray, int]:
    """(file bytes, labels, number of train photos): the 720 train photos, then the 240 test."""
    train, train_labels = flowers12_split("train")
    test, test_labels = flowers12_split("test")
    names = sorted(set(train_labels))
    labels = np.array([names.index(c) for c in train_labels + test_labels])
    return [Path(p).read_bytes() for p in train + test], labels, len(train)


def cifar10_bytes(per_class_train: int, per_class_test: int) -> tuple[list[bytes], np.ndarray, int]:
    """A fixed subset of cifar10 (the first files of each class in the zip's order)."""
    out: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    with zipfile.ZipFile(need(CIFAR10_ZIP)) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        taken: dict[tuple[str, str], int] = {}
        for n in names:
            split, cls = n.split("/")[:2]
            limit = per_class_train if split == "train" else per_class_test
            if taken.get((split, cls), 0) < limit:
                taken[(split, cls)] = taken.get((split, cls), 0) + 1
                out[split].append((cls, z.read(n)))
    classes = sorted({c for c, _ in out["train"]})
    data = out["train"] + out["test"]
    return [b for _, b in data], np.array([classes.index(c) for c, _ in data]), len(out["train"])


def vectors(set_name: str, data: list[bytes], arch: str, size: int) -> np.ndarray:
    """(n, len(GEM_PS), 1280) float32 pooled features, cached on disk between runs."""
    from imagespace.images import decode

    cache = VECTOR_CACHE / f"{set_name}-{len(data)}-{arch}-{size}.npy"
    if cache.is_file():
        return np.load(cache).astype(np.float32)
    session = _session(multi_gem_onnx(arch, size))
    parts = []
    for i in range(0, len(data), 256):  # bounded memory: 6,000 images at 300 px are 1.6 GB
        pixels = np.stack([decode(b, size=size).pixels for b in data[i : i + 256]])
        parts.append(_run(session, pixels))
        print(f"    {set_name} {arch} @{size}: {min(i + 256, len(data))}/{len(data)}", flush=True)
    out = np.concatenate(parts)
    tmp = cache.with_suffix(f".{os.getpid()}.npy")
    np.save(tmp, out.astype(np.float16))
    os.replace(tmp, cache)
    return out


# -- post-processing learned on the collection -----------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def post_process(kind: str, collection: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``collection`` and ``others`` after the post-processing ``kind``, learned on the
    (L2-normalised) collection vectors only."""
    c = _unit(collection)
    xs = [c, *(_unit(o) for o in others)]
    if kind == "none":
        return xs
    mean = c.mean(0)
    if kind == "centre":
        return [_unit(x - mean) for x in xs]
    # PCA from the covariance's eigenvectors (one GEMM and a 1280x1280 eigh: far cheaper
    # than an SVD of the whole collection on a busy machine)
    centred = (c - mean).astype(np.float64)
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(c))
    top = np.argsort(eigvals)[::-1][:PCA_DIM]
    basis = eigvecs[:, top].astype(np.float32)
    if kind == "pca256":
        return [_unit((x - mean) @ basis) for x in xs]
    if kind == "pca256-whiten":
        scale = (1.0 / np.sqrt(np.maximum(eigvals[top], 1e-12))).astype(np.float32)
        return [_unit(((x - mean) @ basis) * scale) for x in xs]
    raise ValueError(kind)


POST = ("none", "centre", "pca256", "pca256-whiten")


def leave_one_out(x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    x = _unit(x)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]
    rel = labels[order] == labels[:, None]
    p1 = float(rel[:, 0].mean())
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    aps = (hits / ranks * rel).sum(1) / np.maximum(rel.sum(1), 1)
    return p1, float(aps.mean())


def quality(flowers, cifar, arch: str, size: int) -> dict[tuple[float, str], dict[str, float]]:
    """Every GeM p x post-processing of (arch, size); cifar10 kNN only when ``cifar`` is given."""
    from imagespace.train.metrics import knn_accuracy

    fdata, flabels, fn_train = flowers
    fv = vectors("flowers12", fdata, arch, size)
    if cifar is not None:
        cdata, clabels, cn_train = cifar
        cv = vectors("cifar10", cdata, arch, size)
    out = {}
    for j, p in enumerate(GEM_PS):
        # PCA at the default pooling only: every p with none and centring
        for kind in POST if p == 3.0 else POST[:2]:
            tr, te = post_process(kind, fv[:fn_train, j], fv[fn_train:, j])
            p1, mAP = retrieval_quality(tr, list(flabels[:fn_train]), te, list(flabels[fn_train:]))
            (loo,) = post_process(kind, fv[:, j])
            loo_p1, loo_map = leave_one_out(loo, flabels)
            knn = float("nan")
            if cifar is not None:
                ctr, cte = post_process(kind, cv[:cn_train, j], cv[cn_train:, j])
                knn = knn_accuracy(ctr, clabels[:cn_train], cte, clabels[cn_train:], k=10)
            out[(p, kind)] = {"p1": p1, "map": mAP, "loo_p1": loo_p1, "loo_map": loo_map, "knn": knn}
    return out


def report_quality(results: dict, baseline_key) -> None:
    header("quality: flowers12 (tuned on) and cifar10 kNN-10 (3,000/1,000 subset, not tuned on)")
    print(f"  {'network @ size, GeM p, post-processing':<52} {'F12 P@1':>8} {'F12 mAP':>8} {'LOO P@1':>8} "
          f"{'LOO mAP':>8} {'c10 kNN':>8}", flush=True)
    base = results[baseline_key[0]][baseline_key[1]]
    for (arch, size), by_trick in results.items():
        for (p, kind), m in by_trick.items():
            label = f"{arch} @{size}, p={p:g}, {kind}"
            print(f"  {label:<52} {m['p1']:8.3f} {m['map']:8.3f} {m['loo_p1']:8.3f} {m['loo_map']:8.3f} {m['knn']:8.3f}")
    print(f"  baseline (today's default): {baseline_key[0][0]} @{baseline_key[0][1]}, p=3, none: "
          + ", ".join(f"{k} {v:.3f}" for k, v in base.items()))


# -- speed ---------------------------------------------------------------------------------


def model_rates(cfgs: list[tuple[str, int]], rounds: int, n: int = 64) -> dict[tuple[str, int], list[float]]:
    """images/s of each configuration's graph at batch 32, all configurations in every round."""
    from imagespace.images import decode

    fdata, _, _ = flowers12_bytes()
    sessions, pixels = {}, {}
    for cfg in cfgs:
        sessions[cfg] = _session(multi_gem_onnx(*cfg))
        pixels[cfg] = np.stack([decode(b, size=cfg[1]).pixels for b in fdata[:n]])
        _run(sessions[cfg], pixels[cfg][:BATCH])  # warm-up
    rates: dict[tuple[str, int], list[float]] = {cfg: [] for cfg in cfgs}
    for _ in range(rounds):
        for cfg in cfgs:
            t = time.perf_counter()
            _run(sessions[cfg], pixels[cfg])
            rates[cfg].append(n / (time.perf_counter() - t))
    return rates


def report_model_rates(rates: dict, base_cfg) -> None:
    header("the model alone, batch 32 (flowers12 pixels), ratio to Lite0 @224 in the same round")
    base = rates[base_cfg]
    for cfg, r in rates.items():
        row(f"{cfg[0]} @{cfg[1]}", f"{spread(r)} img/s", f"x{spread([a / b for a, b in zip(r, base)], '{:.2f}')}")


def indexing(archs: list[str], n_photos: int, baseline_n: int, repeats: int) -> None:
    """12 MP JPEGs: ``imagespace index --model NET`` against the usual pipeline with the same
    network; then flowers12 as is. Network after network inside each repeat."""
    from . import bench_indexing as bi
    from ._common import FLOWERS12, make_camera_photos

    photos = make_camera_photos(bi.PHOTO_DIR, n_photos)
    base = {a: [] for a in archs}
    whole = {a: [] for a in archs}
    inrun = {a: [] for a in archs}
    small = {a: [] for a in archs}
    train, _ = flowers12_split("train")
    test, _ = flowers12_split("test")
    n_small = len(train) + len(test)
    with tempfile.TemporaryDirectory(prefix="imagespace-bench-photos-") as tmp:
        for p in photos:
            os.symlink(p, os.path.join(tmp, os.path.basename(p)))
        for _ in range(repeats):
            for arch in archs:
                base[arch].append(bi.baseline_rate(photos[:baseline_n], arch))
                w, r = bi.imagespace_rate(tmp, len(photos), model=arch)
                whole[arch].append(w)
                inrun[arch].append(r)
                small[arch].append(bi.imagespace_rate(str(FLOWERS12), n_small, model=arch)[1])
    header(f"indexing {len(photos)} 12 MP JPEGs: imagespace index against the usual pipeline with the same network "
           f"({baseline_n} images, full decode, PyTorch eager, batch of 1)")
    for arch in archs:
        row(f"{arch}: baseline (img/s)", spread(base[arch], "{:.2f}"))
        row(f"{arch}: imagespace index, whole process (img/s)", spread(whole[arch], "{:.2f}"),
            "ratio", spread([w / b for w, b in zip(whole[arch], base[arch])], "{:.1f}x"))
        row(f"{arch}: imagespace index, as the run reports (img/s)", spread(inrun[arch], "{:.2f}"),
            "ratio", spread([w / b for w, b in zip(inrun[arch], base[arch])], "{:.1f}x"))
        row(f"{arch}: flowers12 as is ({n_small} small JPEGs), as the run reports (img/s)", spread(small[arch]))


def run(quick: bool = False, speed: bool = True, quality_only: bool = False, cifar_all: bool = False,
        indexing_only: bool = False, rates_only: bool = False) -> None:
    from imagespace.models.networks import NETWORKS

    VECTOR_CACHE.mkdir(parents=True, exist_ok=True)
    cfgs = configs(quick)
    if rates_only:
        native = [(arch, net.input_size) for arch, net in NETWORKS.items()]
        report_model_rates(model_rates(native, rounds=2 if quick else 3), native[0])
        return
    if indexing_only:
        indexing(list(NETWORKS), n_photos=16 if quick else 64, baseline_n=4 if quick else 8, repeats=1 if quick else 2)
        return
    flowers = flowers12_bytes()
    cifar = cifar10_bytes(200 if quick else 300, 40 if quick else 100)
    print(f"  flowers12: {len(flowers[0])} photos; cifar10 subset: {cifar[2]} train, {len(cifar[0]) - cifar[2]} test",
          flush=True)
    results = {}
    # flowers12 first for every configuration (960 photos each); then cifar10 (6,000 images
    # each) at each network's own input size, where the held-out check matters most on a
    # shared 2-core machine, and at the larger size only with --cifar10-all.
    for arch, size in cfgs:
        t = time.perf_counter()
        with_cifar = cifar_all or size == NETWORKS[arch].input_size
        results[(arch, size)] = quality(flowers, cifar if with_cifar else None, arch, size)
        print(f"  {arch} @{size}: {time.perf_counter() - t:.0f}s", flush=True)
        report_quality(results, (cfgs[0], (3.0, "none")))  # after each: a partial run still tells
    if quality_only:
        return
    report_model_rates(model_rates(cfgs, rounds=2 if quick else 3), cfgs[0])
    if speed:
        indexing(list(NETWORKS), n_photos=16 if quick else 64, baseline_n=4 if quick else 8, repeats=1 if quick else 2)


if __name__ == "__main__":
    import sys

    if "--clear" in sys.argv:
        shutil.rmtree(VECTOR_CACHE, ignore_errors=True)
    run(quick="--quick" in sys.argv, speed="--no-indexing" not in sys.argv, quality_only="--quality-only" in sys.argv,
        cifar_all="--cifar10-all" in sys.argv, indexing_only="--indexing-only" in sys.argv,
        rates_only="--rates-only" in sys.argv)
