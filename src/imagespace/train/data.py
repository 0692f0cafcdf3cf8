"""Where training images come from: labelled folders, unlabelled folders, a zip of them, or
a Parquet listing of paths (local or fsspec URLs such as s3://) with optional labels.

A data set here is only a list of items (a file path or URL, or a member of a zip) with optional
labels; pixels are decoded on demand through :mod:`imagespace.images`, the only module that
opens image files. Files that fail to decode are skipped with their reason, never fatal.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..distributed import is_url, read_file
from ..images import ImageError, decode, is_image_path, load_image

PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(Exception):
    """Training data that cannot be used as given, with what to do about it."""


@dataclass
class ImageSet:
    """Items (paths or zip members), their labels (-1 when unlabelled) and class names."""

    root: str
    items: list[str]
    labels: np.ndarray  # (n,) int64, -1 for unlabelled
    classes: list[str]
    zip_path: str | None = None
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"}: left out, and why

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return len(self.classes) > 0

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.root, [self.items[i] for i in index], self.labels[index].copy(), list(self.classes),
                        self.zip_path, list(self.skipped))

    def describe(self) -> str:
        if not self.labelled:
            return f"{len(self)} unlabelled images"
        return f"{len(self)} images in {len(self.classes)} classes"


def open_image_set(data: str | os.PathLike[str], *, labelled: bool = True, zip_split: str = "train") -> ImageSet:
    """Scan ``data``: a folder (class subfolders when ``labelled``), a zip of the same shape,
    or a Parquet listing (see :func:`_scan_parquet`).

    In a zip with top-level ``train/`` and ``test/`` folders (like cifar10-jpg.zip) only
    ``zip_split`` is read. Nothing is decoded here.
    """
    if str(data).lower().endswith(PARQUET_SUFFIXES):
        return _scan_parquet(str(data), labelled=labelled)
    path = Path(data)
    if not path.exists():
        raise DataError(f"training data not found: {path}")
    if path.is_file() and zipfile.is_zipfile(path):
        return _scan_zip(path, labelled=labelled, split=zip_split)
    if not path.is_dir():
        raise DataError(f"{path} is neither a folder of images nor a zip file")
    return _scan_folder(path, labelled=labelled)


def check_supervised(ds: ImageSet) -> ImageSet:
    """Refuse data that supervised training cannot learn from; drop one-image classes.

    A class needs two images, one to learn from and one to check on; a class with one image
    is left out with a reason (listed in ``skipped``) rather than failing the whole run.
    """
    if not ds.labelled:
        raise DataError(f"{ds.root} has no class subfolders: put each class's images in a folder named after it "
                        "(or use --mode self-supervised for images without labels)")
    counts = np.bincount(ds.labels[ds.labels >= 0], minlength=len(ds.classes))
    keep_classes = [c for c, n in enumerate(counts) if n >= 2]
    skipped = list(ds.skipped)
    for c, n in enumerate(counts):
        if 0 < n < 2:
            skipped.append({"path": os.path.join(ds.root, ds.classes[c]),
                            "error": f"class {ds.classes[c]!r} has only {n} image; each class needs at least 2 "
                                     "(one to train on, one to validate), so it was left out"})
    if len(keep_classes) < 2:
        have = ", ".join(f"{ds.classes[c]} ({n})" for c, n in enumerate(counts) if n > 0) or "none"
        raise DataError(f"supervised training needs at least 2 classes with at least 2 readable images each; "
                        f"{ds.root} has: {have}")
    skipped.extend({"path": item, "error": "image outside any class folder, left out of supervised training"}
                   for item, y in zip(ds.items, ds.labels) if y < 0)
    remap = {old: new for new, old in enumerate(keep_classes)}
    idx = [i for i, y in enumerate(ds.labels) if int(y) in remap]
    out = ds.subset(idx)
    out.labels = np.array([remap[int(y)] for y in out.labels], dtype=np.int64)
    out.classes = [ds.classes[c] for c in keep_classes]
    out.skipped = skipped
    return out


def split_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, stratified when labelled, fixed by ``seed`` so --resume agrees.

    Every class with 2+ images keeps at least one image on each side.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    if n < 2:
        raise DataError(f"need at least 2 images to hold out a validation split, got {n}")
    if (labels < 0).all():
        order = rng.permutation(n)
        n_val = min(n - 1, max(1, int(round(n * fraction))))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(members) - 1, max(1, int(round(len(members) * fraction))))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def decode_all(ds: ImageSet, size: int, *, workers: int | None = None,
               on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Decode every item to ``size`` x ``size`` RGB: (pixels (m, size, size, 3), kept indices, failures).

    Threads, because Pillow releases the GIL while it decodes and resizes.
    """
    reader = ItemReader(ds)
    out = np.zeros((len(ds), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(ds), dtype=bool)
    failures: list[dict] = []

    def one(i: int) -> None:
        try:
            out[i] = reader.load(i, size)
            ok[i] = True
        except ImageError as e:
            failures.append({"path": reader.display(i), "error": str(e)})

    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        for start in range(0, len(ds), 256):
            list(pool.map(one, range(start, min(start + 256, len(ds)))))
            if on_progress:
                on_progress(min(256, len(ds) - start))
    reader.close()
    kept = np.flatnonzero(ok)
    return out[kept], kept, sorted(failures, key=lambda f: f["path"])


def _scan_folder(root: Path, *, labelled: bool) -> ImageSet:
    items: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labelled and subdirs:
        for c, sub in enumerate(subdirs):
            classes.append(sub.name)
            for f in _images_under(sub):
                items.append(f)
                labels.append(c)
        # Images beside the class folders have no label: kept (unlabelled training uses
        # them), and left out by check_supervised with a reason.
        for f in sorted(str(f) for f in root.iterdir() if f.is_file() and is_image_path(f)):
            items.append(f)
            labels.append(-1)
        skipped = []
    else:
        items = _images_under(root)
        labels = [-1] * len(items)
        skipped = []
    if not items:
        raise DataError(f"no image files found under {root}")
    return ImageSet(str(root), items, np.array(labels, dtype=np.int64), classes, None, skipped)


def _images_under(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_path(f) and not f.startswith("."))
    return sorted(found)


def _scan_zip(path: Path, *, labelled: bool, split: str) -> ImageSet:
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/") and is_image_path(n)]
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    # A zip laid out as train/<class>/..., test/<class>/... holds splits, not classes.
    prefix = f"{split}/" if split in tops and tops & {"train", "test", "val"} else ""
    if prefix:
        names = [n for n in names if n.startswith(prefix)]
    names.sort()
    if not names:
        raise DataError(f"no image files found in {path}" + (f" under {prefix}" if prefix else ""))
    classes: list[str] = []
    labels: list[int] = []
    if labelled:
        rel = [n[len(prefix):] for n in names]
        classes = sorted({r.split("/", 1)[0] for r in rel if "/" in r})
        lookup = {c: i for i, c in enumerate(classes)}
        labels = [lookup.get(r.split("/", 1)[0], -1) if "/" in r else -1 for r in rel]
    else:
        labels = [-1] * len(names)
    return ImageSet(str(path), names, np.array(labels, dtype=np.int64), classes, str(path), [])


def _scan_parquet(listing: str, *, labelled: bool) -> ImageSet:
    """A Parquet file (local, or any fsspec URL) with a ``path`` column and optionally ``label``.

    A listing lets a data set too large to walk on every run (millions of objects in a
    bucket) be named once. Without a ``label`` column, an image's class is the name of the
    folder it is in, as for a folder of class subfolders. Relative paths are read from the
    listing's folder.
    """
    import fsspec
    import pyarrow.parquet as pq

    try:
        with fsspec.open(listing, "rb") as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        raise DataError(f"training data not found: {listing}") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"cannot read the listing {listing}: {e}") from None
    if "path" not in table.column_names:
        raise DataError(f"{listing} has no 'path' column (found: {', '.join(table.column_names)})")
    base = os.path.dirname(listing)
    items = [p if is_url(p) or os.path.isabs(p) else os.path.join(base, p)
             for p in table.column("path").to_pylist() if p]
    if not items:
        raise DataError(f"no image paths in {listing}")
    if not labelled:
        return ImageSet(listing, items, np.full(len(items), -1, dtype=np.int64), [], None, [])
    if "label" in table.column_names:
        names = [None if v is None else str(v) for v in table.column("label").to_pylist()]
    else:
        names = [p.rstrip("/").rsplit("/", 2)[-2] if p.count("/") >= 1 else None for p in items]
    classes = sorted({n for n in names if n})
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup.get(n, -1) if n else -1 for n in names], dtype=np.int64)
    return ImageSet(listing, items, labels, classes, None, [])


class ItemReader:
    """Pixels of item ``i``; one zip handle per thread, since ZipFile is not thread-safe."""

    def __init__(self, ds: ImageSet):
        self.ds = ds
        self._local = threading.local()
        self._handles: list[zipfile.ZipFile] = []
        self._lock = threading.Lock()

    def display(self, i: int) -> str:
        item = self.ds.items[i]
        return f"{self.ds.zip_path}:{item}" if self.ds.zip_path else item

    def load(self, i: int, size: int) -> np.ndarray:
        if self.ds.zip_path is None:
            item = self.ds.items[i]
            return (decode(read_file(item)[0], size=size) if is_url(item) else load_image(item, size=size)).pixels
        zf = getattr(self._local, "zf", None)
        if zf is None:
            zf = zipfile.ZipFile(self.ds.zip_path)
            self._local.zf = zf
            with self._lock:
                self._handles.append(zf)
        try:
            data = zf.read(self.ds.items[i])
        except (KeyError, zipfile.BadZipFile, OSError) as e:
            raise ImageError(f"cannot read from the zip: {e}") from None
        return decode(data, size=size).pixels

    def close(self) -> None:
        for zf in self._handles:
            zf.close()
