"""The default query pipeline, measured: network x post-processing x query expansion / DBA.

    python -m benchmarks.bench_pipelines embed [NET ...]   # cache vectors (slow; once)
    python -m benchmarks.bench_pipelines                   # the tables, from the cache
    python -m benchmarks.bench_pipelines library [NET ...] # P@1 / AP@1000 / ms through space.search
    python -m benchmarks.bench_pipelines timing            # old default against new, queries in turn

Vectors: each photo through a graph that pools the feature map with GeM at several p at
once and gives the ImageNet logits, at the network's own input size, decoded as indexing
decodes (imagespace.images.decode). Cached as .npy under $IMAGESPACE_BENCH_CACHE (default
a temporary directory), per set and network.

Sets: clothing10/train and flowers12/train TUNE (the choices: p, centring, PCA, QE/DBA and
their k, alpha); clothing10/test, flowers12/test and a cifar10 subset (3,000 train / 1,000
test, the first of each class in the zip) REPORT, never looked at while tuning.
Instance search: edited copies (crop, rotation, recompression, colour...) of test photos
added to the collection; each original must find its own copies first.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._common import SHARED_DATA, header, need

GEM_PS = (1.0, 2.0, 3.0, 4.0)
BATCH = 32
CACHE = Path(os.environ.get("IMAGESPACE_BENCH_CACHE", Path(tempfile.gettempdir()) / "imagespace-bench-pipelines"))
CLOTHING10 = SHARED_DATA / "clothing10"
FLOWERS12 = SHARED_DATA / "flowers12"
COPIES_PER_PHOTO = 2
COPIED = {"clothing10": 150, "flowers12": 100}  # first N test photos (sorted) get edited copies


# -- data ---------------------------------------------------------------------------------


def folder_split(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    base = need(root) / split
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((base / c).iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                paths.append(f)
                labels.append(i)
    return paths, np.array(labels), classes


def cifar10_subset(per_train: int = 300, per_test: int = 100):
    from .bench_networks import cifar10_bytes

    data, labels, n_train = cifar10_bytes(per_train, per_test)
    return data, labels, n_train


def edited_copies(paths: list[Path], seed: int = 0) -> list[tuple[int, bytes]]:
    """(index of the original, JPEG bytes) for COPIES_PER_PHOTO edited copies of each path."""
    from PIL import Image

    from .quality_analysis import _edits

    rng = random.Random(seed)
    edits = _edits()
    out = []
    for i, p in enumerate(paths):
        im = Image.open(p).convert("RGB")
        for e in rng.sample(edits, COPIES_PER_PHOTO):
            buf = io.BytesIO()
            e(im, rng).save(buf, "JPEG", quality=90)
            out.append((i, buf.getvalue()))
    return out


# -- vectors ------------------------------------------------------------------------------


def graph(arch: str) -> Path:
    """uint8 NHWC in; GeM at every p of GEM_PS (n, len * 1280) and logits out."""
    from imagespace.models.networks import network

    size = network(arch).input_size
    path = CACHE / f"gem-logits-{arch}-{size}.onnx"
    if path.is_file():
        return path
    import torch
    from torch import nn

    from imagespace.models.nets import PIXEL_MEAN, PIXEL_SCALE, build_backbone, export_onnx

    class MultiGemLogits(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, pixels):
            x = (pixels.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_SCALE
            fmap = self.backbone.extract_features(x)
            c = fmap.clamp(min=1e-6)
            pooled = torch.cat([c.pow(p).mean(dim=(2, 3)).pow(1.0 / p) for p in GEM_PS], dim=1)
            return pooled, self.backbone._fc(fmap.mean(dim=(2, 3)))

    net = MultiGemLogits(build_backbone(network(arch).weights_path(), arch=arch)).eval()
    return export_onnx(net, path, input_size=size)


def embed_bytes(name: str, arch: str, items) -> tuple[np.ndarray, np.ndarray]:
    """(pooled (n, len(GEM_PS), 1280), logits (n, 1000)), cached. ``items``: a callable
    giving the list of bytes (so nothing is read when the cache holds it)."""
    from imagespace.images import decode
    from imagespace.models.base import make_session
    from imagespace.models.networks import network

    vec_path, logit_path = CACHE / f"{name}-{arch}-gem.npy", CACHE / f"{name}-{arch}-logits.npy"
    if vec_path.is_file() and logit_path.is_file():
        return np.load(vec_path).astype(np.float32), np.load(logit_path).astype(np.float32)
    size = network(arch).input_size
    session = make_session(graph(arch), ["CPUExecutionProvider"], None)
    data = items()
    pooled, logits = [], []
    t = time.perf_counter()
    for i in range(0, len(data), BATCH):
        px = np.stack([decode(b, size=size).pixels for b in data[i : i + BATCH]])
        a, b = session.run(None, {"pixels": px})
        pooled.append(a.reshape(len(px), len(GEM_PS), -1))
        logits.append(b)
    pooled, logits = np.concatenate(pooled), np.concatenate(logits)
    print(f"  {name} {arch}: {len(data)} images, {len(data) / (time.perf_counter() - t):.1f} img/s", flush=True)
    for path, arr in ((vec_path, pooled.astype(np.float16)), (logit_path, logits.astype(np.float16))):
        tmp = path.with_suffix(f".{os.getpid()}.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    return pooled, logits


def sets() -> dict:
    """name -> (bytes loader, labels). Labels of copies: the index of their original."""
    out = {}
    for ds, root in (("clothing10", CLOTHING10), ("flowers12", FLOWERS12)):
        for split in ("train", "test"):
            paths, labels, _ = folder_split(root, split)
            out[f"{ds}-{split}"] = (lambda p=paths: [x.read_bytes() for x in p], labels)
        test_paths, _, _ = folder_split(root, "test")
        copies_of = test_paths[: COPIED[ds]]
        out[f"{ds}-copies"] = (
            lambda p=copies_of: [b for _, b in edited_copies(p)],
            np.repeat(np.arange(len(copies_of)), COPIES_PER_PHOTO),
        )
    cache: dict = {}

    def cifar(part):
        if "c" not in cache:
            cache["c"] = cifar10_subset()
        data, labels, n = cache["c"]
        return data[:n] if part == "train" else data[n:]

    out["cifar10-train"] = (lambda: cifar("train"), None)
    out["cifar10-test"] = (lambda: cifar("test"), None)
    return out


def embed_all(archs: list[str]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        for name, (loader, _) in sets().items():
            embed_bytes(name, arch, loader)
        if "c" in globals():
            pass


# -- pipelines ----------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Pipeline:
    """What happens between the network's pooled vector and the ranking."""

    p: float = 3.0  # GeM p
    post: str = "none"  # none | centre | pca256
    qe: int = 0  # alpha-QE neighbours (0: off)
    qe_alpha: float = 3.0
    dba: int = 0  # DBA neighbours (0: off)
    dba_alpha: float = 3.0

    def label(self) -> str:
        parts = [f"p={self.p:g}", self.post]
        if self.qe:
            parts.append(f"QE k={self.qe} a={self.qe_alpha:g}")
        if self.dba:
            parts.append(f"DBA k={self.dba} a={self.dba_alpha:g}")
        return ", ".join(parts)


def post_process(kind: str, collection: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Learned on the (L2-normalised) collection only, as a collection would learn it."""
    c = unit(collection)
    xs = [c, *(unit(o) for o in others)]
    if kind == "none":
        return xs
    mean = c.mean(0)
    if kind == "centre":
        return [unit(x - mean) for x in xs]
    if kind == "pca256":
        centred = (c - mean).astype(np.float64)
        vals, vecs = np.linalg.eigh(centred.T @ centred / len(c))
        basis = vecs[:, np.argsort(vals)[::-1][:256]].astype(np.float32)
        return [unit((x - mean) @ basis) for x in xs]
    raise ValueError(kind)


def _topk(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argpartition(-sims, k, axis=1)[:, :k]
    part = np.take_along_axis(sims, idx, 1)
    order = np.argsort(-part, axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(part, order, 1)


def rank(pipe: Pipeline, db: np.ndarray, queries: np.ndarray, self_index: np.ndarray | None) -> np.ndarray:
    """(n_queries, n_db) similarities after DBA / QE as the library does them (the query's
    own row, ``self_index``, never counts as its neighbour and is ranked last)."""
    base = db
    if pipe.dba:
        s = db @ db.T
        np.fill_diagonal(s, -np.inf)
        nb, ns = _topk(s, pipe.dba)
        w = np.maximum(ns, 0) ** pipe.dba_alpha
        db = unit(db + (w[..., None] * base[nb]).sum(1))
    sims = queries @ db.T
    if self_index is not None:
        sims[np.arange(len(queries)), self_index] = -np.inf
    if pipe.qe:
        nb, ns = _topk(sims, pipe.qe)
        w = np.maximum(ns, 0) ** pipe.qe_alpha
        q = unit(queries + (w[..., None] * db[nb]).sum(1))
        sims = q @ db.T
        if self_index is not None:
            sims[np.arange(len(queries)), self_index] = -np.inf
    return sims


def p1_map(sims: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray, self_index=None) -> tuple[float, float]:
    order = np.argsort(-sims, axis=1, kind="stable")
    if self_index is not None:
        order = order[:, :-1]  # the query itself, ranked last
    rel = db_labels[order] == q_labels[:, None]
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    aps = (hits / ranks * rel).sum(1) / np.maximum(rel.sum(1), 1)
    return float(rel[:, 0].mean()), float(aps.mean())


def evaluate(pipe: Pipeline, gem: dict, labels: dict, what: str) -> tuple[float, float]:
    """``what``: "A>B" (each photo of half A queries half B, the collection) or "A" (each
    photo of half A queries the rest of A)."""
    j = GEM_PS.index(pipe.p)
    if ">" in what:
        q_name, db_name = what.split(">")
        db, q = post_process(pipe.post, gem[db_name][:, j], gem[q_name][:, j])
        return p1_map(rank(pipe, db, q, None), labels[db_name], labels[q_name])
    (x,) = post_process(pipe.post, gem[what][:, j])
    n = np.arange(len(x))
    return p1_map(rank(pipe, x, x, n), labels[what], labels[what], n)


def instance(pipe: Pipeline, gem: dict, ds: str) -> tuple[float, float]:
    """The test half plus edited copies of some of its photos: each original and each copy
    queries the rest; its relevant rows are the other members of its group (the original
    and its copies). P@1 and mAP over those queries."""
    j = GEM_PS.index(pipe.p)
    test, copies = gem[f"{ds}-test"][:, j], gem[f"{ds}-copies"][:, j]
    n_copied = COPIED[ds]
    (x,) = post_process(pipe.post, np.concatenate([test, copies]))
    group = np.concatenate([np.arange(len(test)), np.repeat(np.arange(n_copied), COPIES_PER_PHOTO)])
    group[n_copied:len(test)] = -1 - np.arange(len(test) - n_copied)  # uncopied: alone
    queries = np.concatenate([np.arange(n_copied), np.arange(len(test), len(x))])
    sims = rank(pipe, x, x[queries], queries)
    return p1_map(sims, group, group[queries], queries)


def load(archs: list[str]) -> tuple[dict, dict]:
    gem, labels = {}, {}
    for name, (_, lab) in sets().items():
        for arch in archs:
            vp = CACHE / f"{name}-{arch}-gem.npy"
            if vp.is_file():
                gem[(arch, name)] = np.load(vp).astype(np.float32)
        if lab is not None:
            labels[name] = lab
    _, clab, n = cifar10_subset_labels()
    labels["cifar10-train"], labels["cifar10-test"] = clab[:n], clab[n:]
    return gem, labels


def cifar10_subset_labels(per_train: int = 300, per_test: int = 100):
    import zipfile

    from ._common import CIFAR10_ZIP

    with zipfile.ZipFile(need(CIFAR10_ZIP)) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
    taken: dict = {}
    out = {"train": [], "test": []}
    for n in names:
        split, cls = n.split("/")[:2]
        limit = per_train if split == "train" else per_test
        if taken.get((split, cls), 0) < limit:
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            out[split].append(cls)
    classes = sorted(set(out["train"]))
    lab = np.array([classes.index(c) for c in out["train"] + out["test"]])
    return None, lab, len(out["train"])


TUNE = ("clothing10-train", "flowers12-train")
REPORT = ("clothing10-test>clothing10-train", "clothing10-test", "flowers12-test>flowers12-train", "flowers12-test",
          "cifar10-test>cifar10-train")


def grid() -> list[Pipeline]:
    out = [Pipeline(p=p, post=post) for p in GEM_PS for post in ("none", "centre")]
    out += [Pipeline(post="pca256")]
    for post in ("none", "centre"):
        for k in (1, 2, 3, 5):
            for a in (1.0, 3.0):
                out.append(Pipeline(post=post, qe=k, qe_alpha=a))
        for k in (1, 2, 3, 5):
            out.append(Pipeline(post=post, dba=k))
        for qk in (1, 2, 3):
            for dk in (2, 3):
                out.append(Pipeline(post=post, qe=qk, dba=dk))
    return out


# today's default, centring alone, the new default (centring + QE k=2 alpha=1), the old QE,
# and DBA on top (an option)
REPORTED = [Pipeline(), Pipeline(qe=2), Pipeline(post="centre"), Pipeline(post="centre", qe=2, qe_alpha=1.0),
            Pipeline(post="centre", qe=2, qe_alpha=1.0, dba=3)]


def tables(archs: list[str], pipes: list[Pipeline], columns) -> None:
    gem, labels = load(archs)
    print(f"  {'network, pipeline':<52}" + "".join(f"{c[:22]:>24}" for c in columns), flush=True)
    for arch in archs:
        if (arch, columns[0].split(">")[0].replace("instance:", "")) not in gem and not columns[0].startswith("instance"):
            continue
        g = {name: v for (a, name), v in gem.items() if a == arch}
        for pipe in pipes:
            cells = []
            for c in columns:
                try:
                    if c.startswith("instance:"):
                        cells.append("{:.3f} / {:.3f}".format(*instance(pipe, g, c.split(":")[1])))
                    else:
                        cells.append("{:.3f} / {:.3f}".format(*evaluate(pipe, g, labels, c)))
                except KeyError:
                    cells.append("-")
            print(f"  {arch.replace('efficientnet-', '') + ', ' + pipe.label():<52}" + "".join(f"{x:>24}" for x in cells), flush=True)


# -- through the library: ImageSpace.search(like=...) ----------------------------------------


def library_collection(root: Path, arch: str, pipeline: str) -> tuple[list[str], np.ndarray]:
    """A collection of the cached vectors (clothing10 and flowers12, both halves, and the
    cifar10 subset: about 8,400 rows) written through the collection's own write path, as
    an indexing run writes them, then refitted as a run's end does. Returns (paths, labels),
    labels unique across the sets."""
    from imagespace.collection import Collection
    from imagespace.embed import Embedded, FileInfo
    from imagespace.models import create_model

    gem, labels = load([arch])
    names = ["clothing10-train", "clothing10-test", "flowers12-train", "flowers12-test", "cifar10-train", "cifar10-test"]
    paths, labs = [], []
    model = create_model(arch)
    offset = {"clothing10": 0, "flowers12": 100, "cifar10": 200}
    with Collection(root) as coll:
        coll.bind_model(model.model_id, arch, 1280, pipeline)
        for name in names:
            vecs = unit(gem[(arch, name)][:, GEM_PS.index(3.0)])
            lab = labels[name] + offset[name.split("-")[0]]
            batch = []
            for i, (v, lab_i) in enumerate(zip(vecs, lab)):
                path = f"/bench/{name}/{i:05d}.jpg"
                batch.append(Embedded(FileInfo(path, 1, 1, f"{name}-{i}"), v, [], 1, 1, "JPEG"))
                paths.append(path)
                labs.append(int(lab_i))
            for s in range(0, len(batch), 256):
                coll.write_embedded(batch[s : s + 256], [])
        coll.refit_pipeline()
    return paths, np.array(labs)


def library_queries(arch: str = "efficientnet-lite0", n_queries: int = 400, k: int = 1000) -> None:
    """P@1, AP@k and ms a query of ``space.search(like=..., k=k)`` over 400 fixed queries
    (clothing10/test and flowers12/test photos; the collection holds everything else as
    distractors), for today's raw collection and the centred one, with and without QE/DBA."""
    import imagespace

    rng = np.random.default_rng(0)
    header(f"space.search(like=..., k={k}), {n_queries} queries from clothing10/test + flowers12/test, {arch}")
    print("  P@1 / AP@1000 / ms a query (median of the queries); the machine is shared: compare rows, not runs")
    quick = os.environ.get("NO_DBA")
    for pipeline, options in (("raw", [dict(qe=False), dict(qe=True)] + ([] if quick else [dict(qe=True, dba=True)])),
                              ("centred", [dict(qe=False), dict()] + ([] if quick else [dict(qe=None, dba=True)]))):
        with tempfile.TemporaryDirectory() as tmp:
            paths, labs = library_collection(Path(tmp) / "c", arch, pipeline)
            test = [i for i, p in enumerate(paths) if "-test/" in p and "cifar" not in p]
            chosen = rng.choice(test, size=min(n_queries, len(test)), replace=False)
            space = imagespace.open(Path(tmp) / "c")
            label_of = dict(zip(paths, labs))
            for opts in options:
                space.search(like=paths[chosen[0]], k=k, **opts)  # warm: index, DBA file
                p1, aps, times = [], [], []
                for q in chosen:
                    t = time.perf_counter()
                    hits = space.search(like=paths[q], k=k, **opts)
                    times.append(time.perf_counter() - t)
                    rel = np.array([label_of[h.path] == labs[q] for h in hits])
                    total = int((labs == labs[q]).sum()) - 1
                    p1.append(float(rel[0]))
                    hit_ranks = np.nonzero(rel)[0] + 1
                    aps.append(float((np.arange(1, len(hit_ranks) + 1) / hit_ranks).sum() / max(min(total, k), 1)))
                label = f"{pipeline}, " + (", ".join(f"{a}={b}" for a, b in opts.items()) or "defaults")
                print(f"  {label:<40} {np.mean(p1):.3f} / {np.mean(aps):.3f} / {1000 * np.median(times):.1f} ms", flush=True)
            space.close()


def default_timing(n_queries: int = 400, k: int = 1000, rounds: int = 3) -> None:
    """ms a query of ``space.search(like=..., k=k)``: the old default (Lite0, raw vectors, no
    expansion) against the new (Lite2, centred, expanded), on the same 8,400-row collection
    of cached vectors, the two asked in turn, query by query, so that the machine's load
    falls on both alike."""
    import imagespace

    from ._common import cpu_name

    header(f"old default against new, space.search(like=..., k={k}), {n_queries} queries in turn (CPU: {cpu_name()})")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        spaces, paths = {}, {}
        for name, arch, pipeline in (("old", "efficientnet-lite0", "raw"), ("new", "efficientnet-lite2", "centred")):
            paths[name], _ = library_collection(Path(tmp) / name, arch, pipeline)
            spaces[name] = imagespace.open(Path(tmp) / name)
        test = [i for i, p in enumerate(paths["old"]) if "-test/" in p and "cifar" not in p]
        chosen = rng.choice(test, size=min(n_queries, len(test)), replace=False)
        times: dict[str, list[float]] = {"old": [], "new": [], "new, qe=False": []}
        for name in spaces:
            spaces[name].search(like=paths[name][chosen[0]], k=k)  # warm: index loaded
        for _ in range(rounds):
            for q in chosen:
                for label, name, opts in (("old", "old", {}), ("new", "new", {}), ("new, qe=False", "new", {"qe": False})):
                    t = time.perf_counter()
                    spaces[name].search(like=paths[name][q], k=k, **opts)
                    times[label].append(time.perf_counter() - t)
        for space in spaces.values():
            space.close()
    old = float(np.median(times["old"]))
    for label, ts in times.items():
        med = float(np.median(ts))
        print(f"  {label:<40} median {1000 * med:6.1f} ms  p90 {1000 * np.percentile(ts, 90):6.1f} ms  "
              f"{med / old:4.2f}x the old default", flush=True)


if __name__ == "__main__":
    archs = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
    if len(sys.argv) > 1 and sys.argv[1] == "embed":
        embed_all(sys.argv[2:] or ["efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite1"])
    elif len(sys.argv) > 1 and sys.argv[1] == "tune":
        header("TUNING halves: each photo of the half queries the rest of it (P@1 / mAP)")
        tables(archs, grid(), list(TUNE))
    elif len(sys.argv) > 1 and sys.argv[1] == "timing":
        default_timing(n_queries=int(os.environ.get("QUERIES", "400")))
    elif len(sys.argv) > 1 and sys.argv[1] == "library":
        for arch in sys.argv[2:] or ["efficientnet-lite0"]:
            library_queries(arch, n_queries=int(os.environ.get("QUERIES", "400")))
    else:
        header("REPORT halves (never tuned on): P@1 / mAP")
        tables(archs, REPORTED, list(REPORT) + ["instance:clothing10", "instance:flowers12"])
