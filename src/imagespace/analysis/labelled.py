"""Labelled folders (one sub-folder per class) turned into vectors of a collection's model.

A file's class is the name of the folder that holds it, so both ``DIR/<class>/*.jpg`` and
``DIR/train/<class>/*.jpg`` read naturally. Vectors already in the collection (same file,
same model) are reused; the rest are embedded with the collection's model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..collection import Collection
from ..images import is_image_path


class LabelledFolderError(ValueError):
    """A labelled folder that cannot teach anything (missing, one class, empty classes)."""


@dataclass
class LabelledSet:
    paths: list[str]
    labels: list[str]
    vectors: np.ndarray
    failed: list[dict]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def scan_labelled(folder: str | os.PathLike[str], *, min_per_class: int = 1) -> tuple[list[str], list[str]]:
    """(paths, labels) of the images under ``folder``; refuses folders that cannot teach."""
    root = Path(folder)
    if not root.is_dir():
        raise LabelledFolderError(f"{folder} is not a folder: give a folder with one sub-folder of images per class")
    paths, labels = [], []
    class_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and not dirnames:
            class_dirs.add(here.name)
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_path(name) or here == root:
                continue
            paths.append(os.path.abspath(here / name))
            labels.append(here.name)
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    empty = sorted(class_dirs - set(counts))
    if empty:
        raise LabelledFolderError(f"class folders with no images in {folder}: {', '.join(empty)}")
    if len(counts) < 2:
        found = f"only {next(iter(counts))!r}" if counts else "none"
        raise LabelledFolderError(
            f"{folder} needs at least two class folders with images (one sub-folder per class); found {found}"
        )
    few = sorted(c for c, n in counts.items() if n < min_per_class)
    if few:
        raise LabelledFolderError(f"classes with fewer than {min_per_class} images in {folder}: {', '.join(few)}")
    return paths, labels


def embed_labelled(collection: Collection, folder: str | os.PathLike[str], *, min_per_class: int = 1, model=None) -> LabelledSet:
    """The images of a labelled folder as vectors of the collection's model."""
    paths, labels = scan_labelled(folder, min_per_class=min_per_class)
    vectors: dict[str, np.ndarray] = {}
    known = {}
    for p in paths:
        row = collection.row_by_path(p)
        if row is not None and row.model == collection.model_id:
            known[row.id] = p
    if known:
        ids, vecs = collection.vectors(list(known))
        vectors.update({known[int(i)]: v for i, v in zip(ids, vecs)})
    todo = [p for p in paths if p not in vectors]
    failed: list[dict] = []
    if todo:
        from ..embed import embed_files
        from ..models import create_model

        model = model or create_model(collection.model_spec)
        collection.check_model(model.model_id)
        for batch in embed_files(todo, model):
            for r in batch:
                if hasattr(r, "error"):
                    failed.append({"path": r.path, "error": r.error})
                else:
                    vectors[r.file.path] = collection.post_process(r.vector)  # as stored vectors are
    keep = [i for i, p in enumerate(paths) if p in vectors]
    kept_labels = [labels[i] for i in keep]
    if len(set(kept_labels)) < 2:
        raise LabelledFolderError(f"fewer than two classes in {folder} have readable images")
    return LabelledSet(
        paths=[paths[i] for i in keep],
        labels=kept_labels,
        vectors=np.stack([vectors[paths[i]] for i in keep]).astype(np.float32),
        failed=failed,
    )
