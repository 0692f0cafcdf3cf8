"""Search a collection: one query core (:class:`Searcher`), the ``--where`` language
(:mod:`.filters`), words (:mod:`.text`), QE and DBA (:mod:`.rerank`), results (:mod:`.results`)."""

from __future__ import annotations

from .core import Answer, Searcher, search_text
from .filters import WHERE_FIELDS, WHERE_HELP, WHERE_SYNTAX, FilterError, compile_where, ids_passing
from .results import MAX_K, WEAK_MATCH, Hit, QueryError

__all__ = [
    "MAX_K", "WEAK_MATCH", "WHERE_FIELDS", "WHERE_HELP", "WHERE_SYNTAX", "Answer", "FilterError", "Hit", "QueryError",
    "Searcher", "compile_where", "ids_passing", "search_text",
]
