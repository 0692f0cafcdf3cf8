"""The one place where a collection, its model, its searcher and its analyses are put together.

``imagespace.open(folder)`` returns an :class:`ImageSpace`; its methods are the CLI's
commands (``index``, ``search``, ``duplicates``, ``clusters``, ``recommend`` ...) with Python
values instead of JSON. The command line is ``with imagespace.open(db) as space:`` plus
printing, the server's engine is one long-lived ``ImageSpace`` plus its locks and caches, and
both get the same guards from here: one empty-collection error
(:class:`~imagespace.collection.EmptyCollectionError`), one path-to-id lookup
(:meth:`ImageSpace.ids_of`), one model cache.

The analyses and the indexing run are imported when first asked for, so that a ``search``
from the command line does not pay for them at start-up.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .collection import DB_FILE, Collection, Row
from .models import EmbeddingModel, create_model, resolve_model_spec
from .search import Answer, Hit, QueryError, Searcher
from .vector_pipeline import KINDS as PIPELINE_KINDS

if TYPE_CHECKING:
    from .analysis.classify import Classifier, Prediction
    from .analysis.clusters import ClusterResult
    from .analysis.duplicates import DuplicateGroups
    from .indexing import SyncReport

PathLike = str | os.PathLike[str]


class ImageSpace:
    """A collection of images and everything that can be asked of it.

    Made by :func:`imagespace.open`; close it (or use ``with``) to release the database.

    Args:
        root: the collection folder (the CLI's ``--db``).
        model: a model name (``imagespace.list_models()``) or a folder made by
            ``imagespace train``, used by :meth:`index`; default: the collection's own
            model, else ``efficientnet-lite2``.
        create: make the collection when the folder holds none yet (on first use: a folder
            that was never indexed into is not left behind by a failed first run).
        readonly: open the database for reading only (a server's second connection).
        threads: threads of one model call (default: every core; a server answering one
            query per request gives 1).
        index_kind: ``auto``, ``hnsw`` or ``ivfpq``: the index that answers queries.

    Threads: one ``ImageSpace`` holds one SQLite connection and one searcher; calls from
    several threads must be serialised by the caller (the server holds a lock), except
    :attr:`model`, which is loaded under a lock of its own and whose ``embed`` may run in any
    thread. An indexing run from another ``ImageSpace`` (or process) is seen by the next query
    here: every query first catches the searcher up with the rows.

    Example:
        >>> import imagespace
        >>> with imagespace.open("~/Pictures/.imagespace") as space:  # doctest: +SKIP
        ...     space.index(["~/Pictures"])
        ...     hits = space.search("query.jpg", k=5, where="width > 1000")
    """

    def __init__(self, root: PathLike, model: PathLike | None = None, *, create: bool = True, readonly: bool = False,
                 threads: int | None = None, index_kind: str = "auto"):
        self._root = Path(os.path.expanduser(os.fspath(root))).resolve()
        self._create = create
        self._readonly = readonly
        self._model_name = model
        self._threads = threads
        self.index_kind = index_kind
        self._collection: Collection | None = None
        self._model: EmbeddingModel | None = None
        self._model_spec_loaded: str | None = None
        self._model_lock = threading.Lock()
        self._searcher: Searcher | None = None
        self._searcher_model_id: str | None = None
        if not create or (self._root / DB_FILE).exists():
            self._open()  # an existing collection (or none, when create=False: the error now)

    # -- the collection --------------------------------------------------------------------

    def _open(self) -> Collection:
        if self._collection is None:
            self._collection = Collection(self._root, create=self._create, readonly=self._readonly)
        return self._collection

    @property
    def collection(self) -> Collection:
        """The rows (:class:`~imagespace.collection.Collection`), made on first use when new."""
        return self._collection if self._collection is not None else self._open()

    @property
    def root(self) -> Path:
        """The collection folder."""
        return self._root

    @property
    def model_spec(self) -> str:
        """The model that :meth:`index` embeds with: a registry name or an absolute folder."""
        return resolve_model_spec(self._model_name, self.collection.model_spec)

    def __len__(self) -> int:
        """How many images the collection holds."""
        return len(self.collection)

    def close(self) -> None:
        """Release the database (the object cannot be used afterwards)."""
        if self._collection is not None:
            self._collection.close()

    def __enter__(self) -> ImageSpace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImageSpace {self.root} ({len(self)} images, model {self.collection.model_spec})>"

    def require_images(self) -> None:
        """Raise :class:`~imagespace.collection.EmptyCollectionError` unless there is something to ask."""
        self.collection.require_images()

    def ids_of(self, paths: Sequence[PathLike], what: str = "paths") -> list[int]:
        """Row ids of images in the collection, in order; ``~`` is expanded.

        Raises:
            QueryError: naming every path that is not in the collection, after ``what``
                (e.g. ``"--like"``).

        Example:
            >>> space.ids_of(["~/Pictures/cat.jpg"])  # doctest: +SKIP
            [17]
        """
        ids, unknown = [], []
        for p in paths:
            row = self.collection.row_by_path(os.path.expanduser(os.fspath(p)))
            if row is None:
                unknown.append(os.fspath(p))
            else:
                ids.append(row.id)
        if unknown:
            raise QueryError(f"{what}: not in the collection (index them first): {', '.join(unknown)}")
        return ids

    def rows(self, ids: Sequence[int]) -> dict[int, Row]:
        """id -> :class:`~imagespace.collection.Row` (path, size, tags ...) for the given ids."""
        return self.collection.rows(int(i) for i in ids)

    def paths(self, ids) -> dict[int, str]:
        """id -> path for the given ids (ids no longer in the collection are left out)."""
        return {i: r.path for i, r in self.collection.rows(int(i) for i in ids).items()}

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the collection's images (all, or only ``ids``), L2-normalised float32.

        Example:
            >>> ids, vecs = space.vectors()  # doctest: +SKIP
            >>> vecs.shape
            (1204, 1280)
        """
        return self.collection.vectors(None if ids is None else [int(i) for i in ids])

    # -- the model -----------------------------------------------------------------------

    def _model_for(self, spec: str) -> EmbeddingModel:
        with self._model_lock:  # one load, however many threads ask at once
            if self._model is None or self._model_spec_loaded != spec:
                self._model = create_model(spec, **({"threads": self._threads} if self._threads else {}))
                self._model_spec_loaded = spec
            return self._model

    @property
    def model(self) -> EmbeddingModel:
        """The collection's embedding model, loaded on first use and kept (safe from any thread).

        Raises:
            EmptyCollectionError: nothing indexed yet, so no model.
            CollectionError: the model's vectors no longer match the collection's (re-index).
        """
        coll = self.collection
        coll.require_images()
        model = self._model_for(coll.model_spec)
        coll.check_model(model.model_id)
        return model

    # -- indexing ----------------------------------------------------------------------------

    def index(self, paths: Sequence[PathLike] | PathLike, *, batch_size: int = 32, workers: int | None = None,
              progress: bool | None = None, on_progress: Callable[[int, int], None] | None = None,
              engine: str = "local", address: str | None = None, vectors: str | None = None) -> SyncReport:
        """Add new, changed and removed images under ``paths``, incrementally (as ``imagespace index``).

        Args:
            paths: image files or folders (scanned recursively); ``~`` is expanded.
            batch_size: images per model call.
            workers: decoding threads (default: one per core).
            progress: show a progress bar (images/s, time left) on standard error; by default
                when standard error is a terminal or a notebook, never in a pipe or a log file.
            on_progress: ``on_progress(done, total)``, called before the first batch and after
                each (e.g. to drive a progress bar of your own).
            engine: ``local`` (threads) or ``ray`` (decoding and the model as Ray tasks).
            address: with ``ray``, an existing cluster (default: a local Ray).
            vectors: the vector pipeline of a new collection (or of one re-embedded with
                another model): ``centred`` (the default) or ``raw`` (the network's own
                vectors, comparable with other raw collections and with shards); an existing
                collection keeps its own.

        Returns:
            A :class:`~imagespace.indexing.SyncReport` (``.added``, ``.updated``,
            ``.removed``, ``.failed`` ...; ``.to_dict()`` is the CLI's JSON).

        Raises:
            FileNotFoundError: a path that does not exist on the first run (no collection is
                made), or every path missing later (the collection is left unchanged: its rows
                under a missing folder stay, in case it is on a drive not mounted now).

        Example:
            >>> space.index(["~/Pictures"]).added  # doctest: +SKIP
            1204
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.path.expanduser(os.fspath(p)) for p in paths]
        self._check_paths(paths)
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be local or ray, not {engine!r}")
        if vectors not in (None, *PIPELINE_KINDS):
            raise ValueError(f"vectors must be one of {', '.join(PIPELINE_KINDS)}, not {vectors!r}")
        spec = self.model_spec
        model = self._model_for(spec)
        if progress is None:
            progress = _interactive()
        if engine == "ray":
            from .distributed import sync_with_ray

            report = sync_with_ray(self.collection, paths, model, model_spec=spec, address=address,
                                   batch_size=batch_size, progress=progress, pipeline=vectors)
        else:
            from .indexing import sync

            report = sync(self.collection, paths, model, model_spec=spec, batch_size=batch_size, workers=workers,
                          progress=progress, on_progress=on_progress, pipeline=vectors)
        if self._searcher is not None:
            self._searcher.refresh()
        return report

    def _check_paths(self, paths: list[str]) -> None:
        """Checked before the collection is made: a mistyped folder must not leave an empty one."""
        missing = [p for p in paths if not os.path.lexists(p)]
        first_run = self._collection is None and not (self._root / DB_FILE).exists()
        if not missing or not (first_run or len(missing) == len(paths)):
            return
        names = ", ".join(missing)
        if first_run:
            raise FileNotFoundError(f"no such file or folder: {names} (nothing was indexed and no collection was made)")
        raise FileNotFoundError(f"no such file or folder: {names}; the collection at {self.root} is unchanged "
                                "(its rows under a missing folder are kept, in case the folder is on a drive not mounted now)")

    # -- searching ---------------------------------------------------------------------------

    @property
    def searcher(self) -> Searcher:
        """The query core over this collection: opened on first use, caught up with the rows on
        every use, opened anew when the collection was re-indexed with another model.

        Raises:
            EmptyCollectionError: nothing to search.
        """
        coll = self.collection
        if self._searcher is None or self._searcher_model_id != coll.model_id:
            self._searcher = Searcher(coll, index_kind=self.index_kind, load_model=lambda: self.model)
            self._searcher_model_id = coll.model_id
        else:
            coll.require_images()
            self._searcher.refresh()
        return self._searcher

    def search(
        self,
        image: PathLike | bytes | None = None,
        *,
        text: str | None = None,
        like: PathLike | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        where: str | None = None,
        min_score: float | None = None,
        qe: bool | None = None,
        dba: bool = False,
        text_model: PathLike | None = None,
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
            qe: query expansion; ``None`` (default): as the collection's pipeline says
                (``info``; on for centred collections: it orders the answer, scores stay
                plain cosines to the query).
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

    def query(self, image: PathLike | bytes | None = None, **kwargs) -> Answer:
        """:meth:`search` with the whole answer: ``.hits`` and ``.extra`` (how words were
        understood); also takes ``offset`` (paging) and ``exclude`` (ids never returned).

        Example:
            >>> space.query(text="a dog").extra["understood_as"]  # doctest: +SKIP
            [{'concept': 'dog', 'score': 0.93}]
        """
        return self.searcher.query(image, **kwargs)

    # -- analyses ----------------------------------------------------------------------------

    def duplicates(self, threshold: float | None = None, *, verify: bool = True) -> list[list[str]]:
        """Groups of near-duplicate images (resized, recompressed, cropped, edited, mirrored copies).

        Args:
            threshold: cosine similarity from which two images are candidates (default 0.50
                with ``verify``, 0.95 without).
            verify: confirm candidates by matching local features with a geometric check.

        Returns:
            Groups of paths, the copy worth keeping (largest) first. Nothing is deleted.

        Example:
            >>> for group in space.duplicates():  # doctest: +SKIP
            ...     keep, *extra = group
        """
        return self.duplicate_groups(threshold, verify=verify, tier="copy").copies()

    def duplicate_groups(self, threshold: float | None = None, *, verify: bool = True, tier: str = "all") -> DuplicateGroups:
        """Copies (safe to delete all but the kept one) and retakes (pick the best), each member explained.

        Args:
            threshold, verify: as in :meth:`duplicates`.
            tier: ``copy``, ``retake`` or ``all``.

        Returns:
            A :class:`~imagespace.analysis.duplicates.DuplicateGroups`: ``.copies()``,
            ``.retakes()``, ``.write_list(file)``, ``.to_dict()`` (the CLI's JSON).

        Example:
            >>> space.duplicate_groups(tier="copy").write_list("extra-copies.txt")  # doctest: +SKIP
            3
        """
        from .analysis.duplicates import DuplicateGroups, duplicate_report, explained_groups

        self.require_images()
        report = duplicate_report(self.collection, threshold=threshold, verify=verify)
        groups = explained_groups(report, tier)
        return DuplicateGroups(groups, self.paths(m["id"] for g in groups for m in g["members"]), report.stats)

    def clusters(self, k: int | None = None) -> ClusterResult:
        """Clusters of similar images, labelled from their tags.

        Args:
            k: number of clusters (default: chosen by silhouette).

        Returns:
            A :class:`~imagespace.analysis.clusters.ClusterResult`: ``.clusters`` (each with
            ``.label`` and row ``.ids``, most typical first), ``.outliers``, ``.paths`` (id ->
            path) and ``.to_dict()`` (the CLI's JSON).

        Example:
            >>> [(c.label, len(c.ids)) for c in space.clusters().clusters]  # doctest: +SKIP
        """
        from .analysis.clusters import cluster_collection

        self.require_images()
        result = cluster_collection(self.collection, k=k)
        result.paths = self.paths([i for c in result.clusters for i in c.ids] + result.outliers)
        return result

    def recommend(self, like: Sequence[PathLike | int], unlike: Sequence[PathLike | int] = (), k: int = 10, *,
                  dba: bool = False) -> list[Hit]:
        """More images like the ``like`` ones and unlike the ``unlike`` ones, varied, inputs left out.

        ``like`` and ``unlike`` are paths in the collection or row ids.

        Example:
            >>> space.recommend(like=["~/Pictures/cat1.jpg", "~/Pictures/cat2.jpg"], k=5)  # doctest: +SKIP
        """
        from .analysis.recommend import recommend

        searcher = self.searcher  # the open index: no reload of the index file per call
        return recommend(self.collection, self._ids(like, "like"), self._ids(unlike, "unlike"), k=k, dba=dba,
                         index=searcher.index)

    def _ids(self, items: Sequence[PathLike | int], what: str) -> list[int]:
        if all(isinstance(i, (int, np.integer)) for i in items):
            return [int(i) for i in items]
        return self.ids_of(items, what)  # type: ignore[arg-type]

    def classify(self, train: PathLike, *, min_probability: float | None = None,
                 save: bool = False) -> tuple[Classifier, list[Prediction]]:
        """Learn the classes of ``train`` (one sub-folder of examples per class) and label every image.

        Args:
            train: a folder with one sub-folder of example images per class.
            min_probability: below this top probability an image is ``unknown``.
            save: keep the labels in the collection (``where="label = NAME"``, words for search).

        Returns:
            (the classifier: ``.classes``, ``.n_examples``, ``.cv_accuracy``; the predictions).

        Example:
            >>> clf, predictions = space.classify("~/labelled")  # doctest: +SKIP
        """
        from .analysis.classify import MIN_PROBABILITY, classify_collection, save_predictions, train_classifier

        self.require_images()
        p = MIN_PROBABILITY if min_probability is None else min_probability
        clf = train_classifier(self.collection, train, min_probability=p)
        predictions = classify_collection(self.collection, clf)
        if save:
            save_predictions(self.collection, predictions)
        return clf, predictions

    def layout(self, max_points: int = 5000) -> tuple[np.ndarray, np.ndarray]:
        """(ids, xy) of up to ``max_points`` images on a 2-D map, xy in [0, 1].

        Example:
            >>> ids, xy = space.layout(1000)  # doctest: +SKIP
        """
        from .analysis.maps import layout

        self.require_images()
        return layout(self.collection, max_points=max_points)

    def map(self, out: PathLike, *, max_points: int = 5000) -> Path:
        """Write a 2-D map of the collection (``.png`` picture or ``.html`` page); returns its path.

        Example:
            >>> space.map("map.png")  # doctest: +SKIP
        """
        from .analysis.maps import render_map

        self.require_images()
        return render_map(self.collection, Path(out), max_points=max_points)

    def export(self, out: PathLike) -> int:
        """Write every row with its vector to ``out`` (``.parquet``, ``.csv``, ``.jsonl``, ``.npz``);
        returns the number of rows.

        Example:
            >>> space.export("photos.parquet")  # doctest: +SKIP
        """
        from .export import export_collection

        return export_collection(self.collection, out)

    def evaluate(self, data: PathLike) -> dict:
        """Precision@1, mAP, kNN accuracy and cluster NMI of the collection's model on a labelled folder.

        Example:
            >>> space.evaluate("~/labelled")["map"]  # doctest: +SKIP
        """
        from .analysis.evaluate import evaluate_folder

        return evaluate_folder(self.collection, data)


def open(root: PathLike, model: PathLike | None = None, *, create: bool = True, readonly: bool = False,  # noqa: A001 - the front door's name
         threads: int | None = None, index_kind: str = "auto") -> ImageSpace:
    """Open the collection in folder ``root`` (made on first use when missing, unless ``create=False``).

    Args:
        root: the collection folder, e.g. ``"~/Pictures/.imagespace"`` (the CLI's ``--db``).
        model: the model :meth:`ImageSpace.index` embeds with: a name
            (``imagespace.list_models()``) or a folder made by ``imagespace train``; default:
            the collection's own model, else ``efficientnet-lite2``.
        create: when False, a folder without a collection is an error.
        readonly, threads, index_kind: see :class:`ImageSpace`.

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
    return ImageSpace(root, model, create=create, readonly=readonly, threads=threads, index_kind=index_kind)


def _interactive() -> bool:
    """Is someone watching standard error: a terminal, or a Jupyter notebook (Rich draws there)?"""
    import sys

    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        return True
    return "ipykernel" in sys.modules
