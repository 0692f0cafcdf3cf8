"""Image bytes for the web: originals and thumbnails, only for rows of the collection.

A request names a row id, never a path. Before any bytes leave the server, the row's file
must still be the file that was indexed: its real path (symbolic links resolved) inside one
of the collection's folders, and the same content digest as at indexing time. Thumbnails
are made once and cached inside the collection folder, named by row id and content digest,
so a changed image gets a new thumbnail and a stale one is never served.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..collection import Row
from ..embed import digest_hex, digest_like
from ..images import ImageError, load_pil, read_bytes

THUMB_DIR = "thumbs"
THUMB_SIZES = (128, 256, 512, 1024)
DEFAULT_THUMB = 256
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "DIB": "image/bmp",
    "TIFF": "image/tiff",
    "MPO": "image/jpeg",
}


class SourceRefused(Exception):
    """The row's file cannot be served (gone, changed, or outside the collection's folders)."""


@dataclass(frozen=True)
class Thumbnail:
    path: Path
    etag: str


def real_roots(roots: list[str]) -> list[str]:
    return [os.path.realpath(r) for r in roots]


def inside(path: str, roots: list[str]) -> bool:
    """Whether ``path`` (already real) is one of ``roots`` or lies under one of them."""
    for root in roots:
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def checked_source(row: Row, roots: list[str]) -> str:
    """The real path of the row's file, if serving it is allowed; else :class:`SourceRefused`."""
    real = os.path.realpath(row.path)
    if not inside(real, real_roots(roots)):
        raise SourceRefused(f"image {row.id} resolves outside the collection's folders; it is not served")
    if not os.path.isfile(real):
        raise SourceRefused(f"image {row.id} is no longer on disk; re-index the collection")
    return real


def original_bytes(row: Row, roots: list[str]) -> bytes:
    """The row's file, exactly as it was indexed (same digest), read once."""
    real = checked_source(row, roots)
    try:
        data = read_bytes(real)
    except ImageError as e:
        raise SourceRefused(f"image {row.id} cannot be read: {e}") from None
    if digest_like(data, row.digest) != row.digest:
        raise SourceRefused(f"image {row.id} has changed on disk since it was indexed; re-index the collection")
    return data


class ThumbnailCache:
    """JPEG thumbnails on disk under ``<collection>/thumbs/<size>/``."""

    def __init__(self, collection_root: Path):
        self.dir = Path(collection_root) / THUMB_DIR
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get(self, row: Row, size: int, roots: list[str]) -> Thumbnail:
        short = digest_hex(row.digest)[:16]
        etag = f'"{row.id}-{short}-{size}"'
        path = self.dir / str(size) / f"{row.id}-{short}.jpg"
        if path.is_file():
            return Thumbnail(path, etag)
        with self._lock_for(row.id, size):  # one maker per thumbnail, however many requests
            if not path.is_file():
                self._make(row, size, roots, path)
        return Thumbnail(path, etag)

    def _lock_for(self, row_id: int, size: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((row_id, size), threading.Lock())

    @staticmethod
    def _make(row: Row, size: int, roots: list[str], path: Path) -> None:
        real = checked_source(row, roots)
        try:
            data = read_bytes(real)
            if digest_like(data, row.digest) != row.digest:
                raise SourceRefused(f"image {row.id} has changed on disk since it was indexed; re-index the collection")
            im = load_pil(real, max_side=size)
        except ImageError as e:
            raise SourceRefused(f"image {row.id} cannot be read: {e}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, per_thread=True) as tmp:
            im.save(tmp, "JPEG", quality=82)
