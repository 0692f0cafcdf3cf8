"""Shared fixtures. Images are made in code; real photos come from ../shared/data when present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FLOWERS12 = SHARED_DATA / "flowers12"
CIFAR10_ZIP = SHARED_DATA / "cifar10" / "cifar10-jpg.zip"


@pytest.fixture(scope="session")
def flowers12() -> Path:
    """The real flowers12 photos; the test is skipped, saying so, where they are absent."""
    if not (FLOWERS12 / "train").is_dir():
        pytest.skip(f"real-data test: {FLOWERS12} is absent (it lives beside the project, in ../shared/data)")
    return FLOWERS12


@pytest.fixture(scope="session")
def cifar10_zip() -> Path:
    if not CIFAR10_ZIP.is_file():
        pytest.skip(f"real-data test: {CIFAR10_ZIP} is absent (it lives beside the project, in ../shared/data)")
    return CIFAR10_ZIP


def make_photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small synthetic 'photo': smooth colour gradients and a few shapes, distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-2, 2, (3, 2))
    img = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, max(w, h) / 3)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def photo_folder(tmp_path: Path):
    """Build a folder of N distinct small JPEG photos: ``photo_folder(n) -> Path``."""

    def build(n: int = 6, name: str = "photos", size: tuple[int, int] = (96, 72)) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make_photo(i, size).save(folder / f"img_{i:03d}.jpg", quality=90)
        return folder

    return build


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory) -> None:
    """Tests share one exported ONNX model, in the user's cache unless told otherwise."""
    os.environ.setdefault("IMAGESPACE_THREADS", "2")


def run_cli(*args, cwd=None, env: dict | None = None, timeout: float = 600,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m imagespace ARGS`` as a user runs it: a fresh process of this source, two
    threads, no ``IMAGESPACE_DB`` inherited from the caller (tests always pass ``--db``).
    ``prefix``: a command that runs it (e.g. in a namespace where a folder is read-only)."""
    full_env = dict(os.environ)
    full_env.pop("IMAGESPACE_DB", None)  # a test that wants it passes it in env
    full_env.update(IMAGESPACE_THREADS="2", **(env or {}))
    return subprocess.run(
        [*prefix, sys.executable, "-m", "imagespace", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout,
    )


@pytest.fixture(scope="session")
def model():
    """The default embedding model, loaded once for the whole session (one ONNX Runtime session)."""
    from imagespace.models import DEFAULT_MODEL, create_model

    return create_model(DEFAULT_MODEL)
