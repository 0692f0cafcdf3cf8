"""Search a collection: one query core (:class:`Searcher`), the ``--where`` language
(:mod:`.filters`), words (:mod:`.text`), QE and DBA (:mod:`.rerank`), results (:mod:`.results`).

Words in detail: WordNet concepts and hedged tags (:mod:`.word_concepts`), ranking by a concept's
summed probability (:mod:`.concept_ranking`) over the tag postings (:mod:`.tag_postings`), the
``classify --train`` labels (:mod:`.user_labels`), the ONNX sentence fallback
(:mod:`.sentence_onnx`)."""

from __future__ import annotations

from .core import Answer, Searcher
from .filters import WHERE_FIELDS, WHERE_HELP, WHERE_SYNTAX, FilterError, compile_where, ids_passing
from .results import MAX_K, Hit, QueryError

__all__ = [
    "MAX_K", "WHERE_FIELDS", "WHERE_HELP", "WHERE_SYNTAX", "Answer", "FilterError", "Hit", "QueryError",
    "Searcher", "compile_where", "ids_passing",
]
