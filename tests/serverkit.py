"""Helpers shared by the server tests: a small indexed collection, a free port, a live server."""

from __future__ import annotations

import functools
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from conftest import make_photo

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def model():
    """One model (one ONNX Runtime session) for every collection the tests build."""
    from imagespace.models import DEFAULT_MODEL, create_model

    return create_model(DEFAULT_MODEL)


def build_collection(base: Path, n: int = 16) -> tuple[Path, Path]:
    """``(db, photos)``: ``n`` small made-up photos, plus two copies of the first, indexed for real."""
    from imagespace.collection import Collection
    from imagespace.indexing import sync
    from imagespace.models import DEFAULT_MODEL

    photos = base / "photos"
    photos.mkdir(parents=True)
    for i in range(n):
        make_photo(i, (120, 90)).save(photos / f"img_{i:03d}.jpg", quality=90)
    # duplicates of photo 0: the same file under another name, and a resized PNG copy
    (photos / "copy_000.jpg").write_bytes((photos / "img_000.jpg").read_bytes())
    make_photo(0, (120, 90)).resize((100, 75)).save(photos / "small_000.png")
    db = base / "db"
    with Collection(db) as coll:
        report = sync(coll, [str(photos)], model(), model_spec=DEFAULT_MODEL)
    assert report.added == n + 2, report.to_dict()
    return db, photos


def jpeg_bytes(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    buf = io.BytesIO()
    make_photo(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``python -m imagespace serve`` in a subprocess on a free loopback port."""

    def __init__(self, db: Path, *extra: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = db.parent / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "imagespace", "serve", "--db", str(db), "--port", str(self.port), *extra]
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=str(db.parent)
        )

    def wait_ready(self, timeout: float = 90.0, headers: dict | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/api/session", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s: {self.log.read_text()}")

    def wait_warm(self, timeout: float = 180.0) -> None:
        """Until the server has loaded its models in the background (``warm`` in /api/health):
        memory measured before that includes the loading, not the serving."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/api/health", timeout=5).json().get("warm"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"server not warm after {timeout}s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode
