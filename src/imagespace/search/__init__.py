"""Search a collection: one query core (:class:`Searcher`), the ``--where`` language
(:mod:`.filters`), words (:mod:`.text`), QE and DBA (:mod:`.rerank`), results (:mod:`.results`)."""

from __future__ import annotations

from .core import Answer, Searcher
from .filters import WHERE_HELP, compile_where, ids_passing
from .results import Hit, QueryError

__all__ = ["WHERE_HELP", "Answer", "Hit", "QueryError", "Searcher", "compile_where", "ids_passing"]
