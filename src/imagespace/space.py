"""The object a Python user holds: one collection, its model, its index and its searches.

``imagespace.open(folder)`` returns an :class:`ImageSpace`; its methods are the CLI's
commands (``index``, ``search``, ``duplicates``, ``clusters``, ``recommend``) with Python
values instead of JSON. It only assembles the library's parts (rows in
:mod:`.collection`, runs in :mod:`.indexing`, queries in :mod:`.search`, analyses in
:mod:`.analysis`); the CLI and the server use the same parts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .analysis.clusters import ClusterResult, cluster_collection
from .analysis.duplicates import find_duplicates
from .analysis.recommend import recommend
from .collection import Collection, CollectionError, Row
from .indexing import SyncReport, sync
from .models import create_model, resolve_model_spec
from .search import Answer, Hit, QueryError, Searcher


class ImageSpace:
    """A collection of images and everything that can be asked of it.

    Made by :func:`imagespace.open`; close it (or use ``with``) to release the database.

    Args:
        root: the collection folder (the CLI's ``--db``).
        model: a model name (``imagespace.list_models()``) or a folder made by
            ``imagespace train``, used by :meth:`index`; default: the collection's own
            model, else ``efficientnet-lite0``.
        create: make the folder when it holds no collection yet.

    Example:
        >>> import imagespace
        >>> with imagespace.open("~/Pictures/.imagespace") as space:  # doctest: +SKIP
        ...     space.index(["~/Pictures"])
        ...     hits = space.search("query.jpg", k=5, where="width > 1000")
    """

    def __init__(self, root: str | os.PathLike[str], model: str | os.PathLike[str] | None = None, *, create: bool = True):
        self.collection = Collection(Path(os.path.expanduser(os.fspath(root))), create=create)
        self._model_name = model
        self._model = None
        self._model_spec_loaded: str | None = None
        self._searcher: Searcher | None = None

    # -- the collection --------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The collection folder."""
        return self.collection.root

    @property
    def model_spec(self) -> str:
        """The model that :meth:`index` embeds with: a registry name or an absolute folder."""
        return resolve_model_spec(self._model_name, self.collection.model_spec)

    def __len__(self) -> int:
        """How many images the collection holds."""
        return len(self.collection)

    def close(self) -> None:
        """Release the database (the object cannot be used afterwards)."""
        self.collection.close()

    def __enter__(self) -> ImageSpace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImageSpace {self.root} ({len(self)} images, model {self.collection.model_spec})>"

    # -- indexing ----------------------------------------------------------------------------

    def index(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, batch_size: int = 32,
              workers: int | None = None, progress: bool = False) -> SyncReport:
        """Add new, changed and removed images under ``paths``, incrementally (as ``imagespace index``).

        Args:
            paths: image files or folders (scanned recursively); ``~`` is expanded.
            batch_size: images per model call.
            workers: decoding threads (default: one per core).
            progress: show a progress bar on standard error.

        Returns:
            A :class:`~imagespace.indexing.SyncReport` (``.added``, ``.updated``,
            ``.removed``, ``.failed`` ...; ``.to_dict()`` is the CLI's JSON).

        Example:
            >>> space.index(["~/Pictures"]).added  # doctest: +SKIP
            1204
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        spec = self.model_spec
        model = self._model_for(spec)
        report = sync(self.collection, [os.path.expanduser(os.fspath(p)) for p in paths], model,
                      model_spec=spec, batch_size=batch_size, workers=workers, progress=progress)
        if self._searcher is not None:
            self._searcher.refresh()
        return report

    def _model_for(self, spec: str):
        if self._model is None or self._model_spec_loaded != spec:
            self._model = create_model(spec)
            self._model_spec_loaded = spec
        return self._model

    # -- searching ---------------------------------------------------------------------------

    @property
    def searcher(self) -> Searcher:
        """The query core over this collection (opened on first use, kept up to date)."""
        if self._searcher is None or self._searcher.collection.model_id != self.collection.model_id:
            model = self._model if self._model is not None and self._model.model_id == self.collection.model_id else None
            self._searcher = Searcher(self.collection, model=model)
        return self._searcher

    def search(
        self,
        image: str | os.PathLike[str] | bytes | None = None,
        *,
        text: str | None = None,
        like: str | os.PathLike[str] | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        where: str | None = None,
        min_score: float | None = None,
        qe: bool | None = None,
        dba: bool = False,
        text_model: str | os.PathLike[str] | None = None,
    ) -> list[Hit]:
        """The images most like a query: give exactly one of ``image``, ``text``, ``like`` or ``vector``.

        Args:
            image: an image file (need not be in the collection) or its bytes.
            text: words, e.g. ``"a dog"`` (see :meth:`query` for how they were understood).
            like: an image already in the collection (left out of the results).
            vector: a vector of the collection's model.
            k: how many results.
            where: a filter, e.g. ``"width > 1000 and tag ~ dog"`` (``imagespace.WHERE_HELP``).
            min_score: drop results with a lower cosine similarity.
            qe: query expansion; ``None`` (default): as the collection's pipeline says (on for
                collections made since it is the default, off for older ones).
            dba: database-side augmentation (better rankings, slower).
            text_model: a local CLIP folder for open-vocabulary ``text``.

        Returns:
            :class:`~imagespace.Hit` objects, best first (``.path``, ``.score``, ``.tags`` ...).

        Raises:
            QueryError: an unreadable image, a bad filter, words that name nothing known.

        Example:
            >>> [h.path for h in space.search("query.jpg", k=5)]  # doctest: +SKIP
        """
        return self.query(image, text=text, like=like, vector=vector, k=k, where=where, min_score=min_score,
                          qe=qe, dba=dba, text_model=text_model).hits

    def query(self, image=None, **kwargs) -> Answer:
        """:meth:`search` with the whole answer: ``.hits`` and ``.extra`` (how words were understood).

        Example:
            >>> space.query(text="a dog").extra["understood_as"]  # doctest: +SKIP
            [{'concept': 'dog', 'score': 0.93}]
        """
        self._require_images()
        self.searcher.refresh()
        return self.searcher.query(image, **kwargs)

    # -- analyses ----------------------------------------------------------------------------

    def duplicates(self, threshold: float | None = None, *, verify: bool = True) -> list[list[str]]:
        """Groups of near-duplicate images (resized, recompressed, cropped, edited, mirrored copies).

        Args:
            threshold: cosine similarity from which two images are candidates (default 0.70
                with ``verify``, 0.95 without).
            verify: confirm candidates by matching local features with a geometric check.

        Returns:
            Groups of paths, the copy worth keeping (largest) first. Nothing is deleted.

        Example:
            >>> for group in space.duplicates():  # doctest: +SKIP
            ...     keep, *extra = group
        """
        self._require_images()
        groups = find_duplicates(self.collection, threshold=threshold, verify=verify)
        rows = self.collection.rows(i for g in groups for i in g)
        return [[rows[i].path for i in g if i in rows] for g in groups]

    def clusters(self, k: int | None = None) -> ClusterResult:
        """Clusters of similar images, labelled from their tags.

        Args:
            k: number of clusters (default: chosen by silhouette).

        Returns:
            A :class:`~imagespace.analysis.clusters.ClusterResult`: ``.clusters`` (each with
            ``.label`` and row ``.ids``, most typical first; paths by :meth:`rows`) and ``.outliers``.

        Example:
            >>> [(c.label, len(c.ids)) for c in space.clusters().clusters]  # doctest: +SKIP
        """
        self._require_images()
        return cluster_collection(self.collection, k=k)

    def recommend(self, like: Sequence[str | os.PathLike[str]], unlike: Sequence[str | os.PathLike[str]] = (),
                  k: int = 10) -> list[Hit]:
        """More images like the ``like`` ones and unlike the ``unlike`` ones (paths in the collection).

        Example:
            >>> space.recommend(like=["~/Pictures/cat1.jpg", "~/Pictures/cat2.jpg"], k=5)  # doctest: +SKIP
        """
        self._require_images()
        return recommend(self.collection, self._ids_of(like), self._ids_of(unlike), k=k, index=self.searcher.index)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the collection's images (all, or only ``ids``), L2-normalised float32.

        Example:
            >>> ids, vecs = space.vectors()  # doctest: +SKIP
            >>> vecs.shape
            (1204, 1280)
        """
        return self.collection.vectors(None if ids is None else [int(i) for i in ids])

    def rows(self, ids: Sequence[int]) -> dict[int, Row]:
        """id -> :class:`~imagespace.collection.Row` (path, size, tags ...) for the given ids."""
        return self.collection.rows(int(i) for i in ids)

    def _ids_of(self, paths) -> list[int]:
        out = []
        for p in paths:
            row = self.collection.row_by_path(os.path.expanduser(os.fspath(p)))
            if row is None:
                raise QueryError(f"{p} is not in the collection (index it first)")
            out.append(row.id)
        return out

    def _require_images(self) -> None:
        if self.collection.model_id is None or len(self.collection) == 0:
            raise CollectionError(f"the collection at {self.root} is empty: index some images first")


def open(root: str | os.PathLike[str], model: str | os.PathLike[str] | None = None, *, create: bool = True) -> ImageSpace:  # noqa: A001 - the front door's name
    """Open the collection in folder ``root`` (made when missing, unless ``create=False``).

    Args:
        root: the collection folder, e.g. ``"~/Pictures/.imagespace"`` (the CLI's ``--db``).
        model: the model :meth:`ImageSpace.index` embeds with: a name
            (``imagespace.list_models()``) or a folder made by ``imagespace train``; default:
            the collection's own model, else ``efficientnet-lite0``.
        create: when False, a folder without a collection is an error.

    Returns:
        An :class:`ImageSpace`.

    Raises:
        CollectionError: no collection there (``create=False``), or the folder is unusable.

    Example:
        >>> import imagespace
        >>> space = imagespace.open("~/Pictures/.imagespace")  # doctest: +SKIP
        >>> space.index(["~/Pictures"])  # doctest: +SKIP
        >>> hits = space.search("query.jpg", k=5, where="width > 1000")  # doctest: +SKIP
    """
    return ImageSpace(root, model, create=create)
