"""What the benchmarks share: data paths, generated photos, timing and retrieval metrics."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FLOWERS12 = SHARED_DATA / "flowers12"
CIFAR10_ZIP = SHARED_DATA / "cifar10" / "cifar10-jpg.zip"
PYTHON = sys.executable
IMAGESPACE = [PYTHON, "-m", "imagespace"]


class Skip(Exception):
    """A benchmark that cannot run here (data absent); the runner prints why and goes on."""


def need(path: Path) -> Path:
    if not path.exists():
        raise Skip(f"{path} is absent (real data lives beside the project, in ../shared/data)")
    return path


def flowers12_split(split: str) -> tuple[list[str], list[str]]:
    """(paths, labels) of flowers12's ``train`` or ``test`` split, sorted."""
    root = need(FLOWERS12) / split
    paths, labels = [], []
    for cls in sorted(os.listdir(root)):
        for name in sorted(os.listdir(root / cls)):
            paths.append(str(root / cls / name))
            labels.append(cls)
    return paths, labels


def _cpuinfo_line(key: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The CPU a figure ran on (speed figures name it: the machines change between runs)."""
    import platform

    return _cpuinfo_line("model name") or platform.processor() or platform.machine()


def has_vnni() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    flags = _cpuinfo_line("flags").split()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def header(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def row(label: str, *cells) -> None:
    print(f"  {label:<58} " + "  ".join(str(c) for c in cells), flush=True)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median [min-max] of repeated measurements: the spread is the noise."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def run_cli(args: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of one ``imagespace`` process, from start to exit, and its stdout."""
    t = time.perf_counter()
    out = subprocess.run([*IMAGESPACE, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return time.perf_counter() - t, out.stdout


def load_pixels(paths: list[str], size: int = 224) -> np.ndarray:
    from imagespace.images import load_image

    return np.stack([load_image(p, size=size).pixels for p in paths])


def retrieval_quality(train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str]) -> tuple[float, float]:
    """flowers12 protocol: each test vector queries the train vectors by cosine; (P@1, mAP)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    tl = np.asarray(train_labels)
    sims = test @ train.T
    order = np.argsort(-sims, axis=1, kind="stable")
    p1, aps = 0.0, []
    for i, lab in enumerate(test_labels):
        rel = tl[order[i]] == lab
        p1 += float(rel[0])
        hits = np.cumsum(rel)
        ranks = np.nonzero(rel)[0] + 1
        aps.append(float(np.mean(hits[rel] / ranks)) if len(ranks) else 0.0)
    return p1 / len(test_labels), float(np.mean(aps))


def make_camera_photos(out: Path, n: int, size: tuple[int, int] = (4000, 3000), seed: int = 0,
                       sources: list[str] | None = None) -> list[str]:
    """``n`` 12-megapixel JPEGs made from flowers12 (or ``sources``) by upscaling with a little noise.

    Sensor-like noise keeps the files from compressing like flat upscales, so they decode
    like camera photos (about 2-4 MB each). Files already there are reused. With more
    photos than sources, sources repeat (with the noise shifted): near-copies.
    """
    from PIL import Image

    paths = sources if sources is not None else flowers12_split("train")[0]
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tile = rng.normal(0, 6, (size[1] // 4, size[0] // 4, 3)).astype(np.float32)
    noise = np.tile(tile, (4, 4, 1))
    made = []
    step = max(1, len(paths) // n)
    for i in range(n):
        dst = out / f"photo_{i:04d}.jpg"
        if not dst.exists():
            im = Image.open(paths[(i * step) % len(paths)]).convert("RGB")
            upright = im.height > im.width  # a portrait source stays a portrait (3000x4000)
            im = im.resize(size[::-1] if upright else size, Image.Resampling.BICUBIC)
            grain = np.roll(noise, i * 97, axis=1)
            arr = np.asarray(im, dtype=np.float32) + (grain.transpose(1, 0, 2) if upright else grain)
            tmp = dst.with_suffix(".tmp")
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=90)
            os.replace(tmp, dst)
        made.append(str(dst))
    return made


def peak_rss_mb_of_children() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
