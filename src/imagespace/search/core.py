"""The one query core: every search (CLI, server, Python) is answered by :meth:`Searcher.query`.

A query is an image file or its bytes, a vector, a stored image (``like``) or words; it may
be filtered (``where``), expanded (QE) and run against augmented vectors (DBA). Scores are
cosine similarities between L2-normalised vectors of one model, so they mean the same thing
across queries and a ``min_score`` cut-off is meaningful.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..collection import Collection
from ..images import ImageError, decode, read_bytes
from ..index import EXACT_LIMIT, VectorSearch, exact_search, open_index
from ..models import EmbeddingModel, create_model
from .chance import chance_line
from .concept_ranking import concept_classes, concept_names, concept_scores, is_weak
from .filter_hints import where_hints
from .filters import ids_passing
from .rerank import reranked, stored_vectors
from .results import Hit, QueryError, finish
from .score_meaning import COSINE, ScoreMeaning, cosine_meaning, probability_meaning
from .text import classes_vector, clip_scores, explain, understand_words


@dataclass
class Answer:
    """The hits of a query and, for words, how they were understood (``understood_as``)."""

    hits: list[Hit]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``search --json`` document; ``scores`` says what the scores mean and which
        results are weak (each result's ``weak``)."""
        return {"results": [h.to_dict() for h in self.hits], **self.extra}

    @property
    def weak(self) -> list[Hit]:
        """The hits judged weak (see ``extra["scores"]["weak_rule"]``)."""
        return [h for h in self.hits if h.weak]


class Searcher:
    """Answers queries over one collection; the model is loaded only for image queries.

    Args:
        collection: an indexed collection.
        model: the collection's model, if already loaded (else loaded on the first image query).
        index_kind: ``auto``, ``hnsw`` or ``ivfpq`` (see :func:`imagespace.index.open_index`).
        load_model: how to load the model on the first image query (default: ``create_model``
            of the collection's spec); :class:`imagespace.ImageSpace` hands over its model cache.

    Example:
        >>> searcher = Searcher(Collection("photos.imagespace"))  # doctest: +SKIP
        >>> searcher.query(like="~/Pictures/cat.jpg", k=5, where="width > 1000").hits  # doctest: +SKIP
    """

    def __init__(self, collection: Collection, model=None, index_kind: str = "auto",
                 load_model: Callable[[], EmbeddingModel] | None = None):
        collection.require_images()
        self.collection = collection
        self._model = model
        self._load_model = load_model
        if model is not None:
            collection.check_model(model.model_id)
        self._index: VectorSearch | None = None
        self.index_kind = index_kind

    @property
    def model(self):
        """The collection's embedding model, loaded on first use."""
        if self._model is None:
            self._model = self._load_model() if self._load_model is not None else create_model(self.collection.model_spec)
            self.collection.check_model(self._model.model_id)
        return self._model

    @property
    def index(self) -> VectorSearch:
        """The collection's index, opened (or rebuilt) on first use."""
        if self._index is None:
            self._index = open_index(self.collection, self.index_kind)
        return self._index

    def answered_by(self) -> dict:
        """The index that answered this searcher's queries: kind, search settings and the
        recall it measured on the collection (``exact`` when none was opened)."""
        if self._index is None:
            return {"kind": "exact", "vectors": len(self.collection), "settings": {}, "recall_at_10": 1.0}
        return self._index.describe()

    def refresh(self) -> None:
        """Catch up with rows written since the index was opened (e.g. by an indexing run)."""
        if self._index is not None and not self._index.refresh():
            self._index = None  # no longer matches the rows: reopened (rebuilt) on next use

    # -- query vectors -------------------------------------------------------------------

    def embed_image(self, image: str | os.PathLike[str] | bytes) -> np.ndarray:
        """The query vector of an image file or of its bytes."""
        try:
            data = image if isinstance(image, bytes) else read_bytes(image)
            decoded = decode(data, size=self.model.input_size)
        except ImageError as e:
            name = "the uploaded image" if isinstance(image, bytes) else str(image)
            raise QueryError(f"cannot read query image {name}: {e}") from None
        # the collection's pipeline (e.g. centring on its mean), as its stored vectors had
        return self.collection.post_process(self.model.embed(decoded.pixels[None]).vectors[0])

    def stored_vector(self, path: str | os.PathLike[str]) -> tuple[int, np.ndarray]:
        """(row id, vector) of an image in the collection."""
        row = self.collection.row_by_path(path)
        if row is None:
            raise QueryError(f"{path} is not in the collection (index it first, or search by the image file itself)")
        ids, vecs = self.collection.vectors([row.id])
        if not len(ids):
            raise QueryError(f"{path} has not been embedded with the collection's current model yet: re-run index")
        return row.id, vecs[0]

    # -- the query -----------------------------------------------------------------------

    def query(
        self,
        image: str | os.PathLike[str] | bytes | None = None,
        *,
        vector: np.ndarray | None = None,
        like: str | os.PathLike[str] | None = None,
        text: str | None = None,
        text_model: str | os.PathLike[str] | None = None,
        qe: bool | None = None,
        dba: bool = False,
        where: str | None = None,
        min_score: float | None = None,
        k: int = 10,
        offset: int = 0,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> Answer:
        """Answer one query; give exactly one of ``image``, ``vector``, ``like`` or ``text``.

        Args:
            image: an image file (need not be in the collection) or its bytes.
            vector: a query vector of the collection's model.
            like: an image already in the collection (it is left out of the answer).
            text: words (matched to ImageNet concepts, or through ``text_model``, a local
                CLIP folder).
            qe: query expansion (not for ``text``); ``None``: as the collection's pipeline
                says (``info``; on for centred collections, see :mod:`imagespace.vector_pipeline`).
                It orders the answer; scores stay plain cosines to the query.
            dba: database-side augmentation (not for ``text``).
            where: a filter in the ``--where`` language (:mod:`imagespace.search.filters`).
            min_score: drop results with a lower cosine similarity.
            k, offset: the page of results wanted.
            exclude: row ids never returned.

        Returns:
            An :class:`Answer`: ``.hits`` best first, ``.extra`` says how words were understood.

        Raises:
            QueryError: an unreadable image, a bad filter, words that name nothing known.

        Example:
            >>> searcher.query("query.jpg", k=5, where="width > 1000").hits[0].path  # doctest: +SKIP
        """
        given = [x is not None for x in (image, vector, like, text)]
        if sum(given) != 1:
            raise QueryError("give exactly one of an image, a vector, a stored image (like) or words (text)")
        opts = dict(k=k, offset=offset, where=where, min_score=min_score)
        if text is not None:
            return self._by_text(text, text_model, exclude=exclude, **opts)
        exclude = set(exclude)
        if like is not None:
            row_id, vector = self.stored_vector(like)
            exclude.add(row_id)
        elif image is not None:
            vector = self.embed_image(image)
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.collection.dim:
            raise QueryError(f"query vector has {vector.shape[0]} dimensions, the collection {self.collection.dim}")
        want = k + offset + len(exclude)
        allowed = ids_passing(self.collection, where) if where else None
        expansion = self.collection.pipeline.query_expansion
        if qe is None:
            qe = self.collection.pipeline.expands_by_default
        if qe or dba:
            knobs = {} if expansion is None else {"qe_neighbours": expansion[0], "qe_alpha": expansion[1]}
            ids, scores = reranked(self.collection, self.index, vector, want, allowed=allowed, exclude=exclude,
                                   qe=qe, dba=dba, **knobs)
            if not dba:
                # QE decides the order; each score stays the plain cosine between the query and
                # the image (the query's own photo scores 1), which --min-score and the weak line read.
                scores = self._plain_cosines(vector, ids)
        elif allowed is not None:
            ids, scores = self._filtered(vector, want, allowed)
        else:
            ids, scores = self._nearest(vector, want)
        hits = finish(self.collection, zip(ids, scores), exclude=exclude, **_page(opts))
        meaning = self.judge_cosines(hits, augmented=dba, expanded=bool(qe))
        return self._hinted(Answer(hits, {"scores": meaning.to_dict()}), where)

    def _hinted(self, answer: Answer, where: str | None) -> Answer:
        """An empty answer to a filter says which tag or label no image has (a typing error?)."""
        if where and not answer.hits:
            hints = where_hints(self.collection, where)
            if hints:
                answer.extra["hints"] = hints
        return answer

    def judge_cosines(self, hits: list[Hit], *, augmented: bool = False, expanded: bool = False):
        """Mark ``hits`` (cosine scores) weak below the collection's chance line; its meaning."""
        line = None if augmented else chance_line(self.collection)
        for h in hits:
            h.weak = None if line is None else bool(h.score < line.value)
        return cosine_meaning(line, augmented=augmented, expanded=expanded)

    # -- the parts -----------------------------------------------------------------------

    def _plain_cosines(self, vector: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Cosines of ``vector`` with the rows ``ids`` (-1 where a row is gone or an id pads)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(len(ids), -1.0, dtype=np.float32)
        real = ids >= 0
        plain = stored_vectors(self.collection, self.index, ids[real]) @ vector
        out[real] = np.where(np.isfinite(plain), plain, -1.0)
        return out

    def _nearest(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = self.index.search(vector[None], k)
        return ids[0], scores[0]

    def _filtered(self, vector: np.ndarray, k: int, allowed: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if len(allowed) <= EXACT_LIMIT:
            return exact_search(vector, *self.collection.vectors(allowed), k)
        # Many rows pass the filter: ask the graph for more until enough of them pass.
        allowed_set = set(allowed)
        n = len(self.index)
        fetch = max(k * 4, 64)
        while True:
            ids, scores = self._nearest(vector, fetch)
            keep = np.array([int(i) in allowed_set for i in ids], dtype=bool)
            if keep.sum() >= k or fetch >= n:
                return ids[keep][:k], scores[keep][:k]
            fetch = min(n, fetch * 4)

    def _by_text(self, text: str, text_model, *, k: int, offset: int, where: str | None,
                 min_score: float | None, exclude) -> Answer:
        text = (text or "").strip()
        if not text:
            raise QueryError("give some words to search for")
        coll = self.collection
        allowed = ids_passing(coll, where) if where else None
        if text_model is not None:
            scored, extra = clip_scores(coll, text, Path(text_model), coll.ids() if allowed is None else allowed,
                                        k + offset + len(exclude))
            meaning = ScoreMeaning(COSINE, "cosine similarity of the words' and the image's CLIP vectors, higher is closer",
                                   "not judged: CLIP's text-image cosines have a scale of their own")
            return Answer(finish(coll, scored, k=k, offset=offset, min_score=min_score, exclude=exclude),
                          {**extra, "scores": meaning.to_dict()})
        # Ranked by the concepts' summed stored probabilities (see concept_ranking); when fewer
        # images carry them than asked for, the rest come from the concepts' classifier rows
        # in vector space, scored 0 (no stored probability).
        understanding, user = understand_words(coll, text)
        want = k + offset
        scored = concept_scores(coll, understanding, k=want + len(exclude), allowed=allowed, min_score=min_score, user=user)
        hits = finish(coll, scored, k=want, min_score=min_score, exclude=exclude)
        vector = classes_vector(coll, concept_classes(understanding))
        if len(hits) < want and vector is not None and (min_score is None or min_score <= 0):
            more = self.query(vector=vector, k=want - len(hits), where=where, exclude=set(exclude) | {h.id for h in hits},
                              qe=False)
            hits += [Hit(h.id, h.path, 0.0, h.tags, h.width, h.height, h.size) for h in more.hits]
        names = concept_names(understanding)
        own = {c.name for c in understanding.concepts if c.how == "user"}
        for h in hits:
            labelled = user is not None and user.by_path.get(h.path, ("", 0.0))[0] in own
            h.weak = not labelled and is_weak(h.score, h.tags, names)
        return self._hinted(Answer(hits[offset:], {**explain(understanding), "scores": probability_meaning().to_dict()}), where)


def _page(opts: dict) -> dict:
    return {key: opts[key] for key in ("k", "offset", "min_score")}
