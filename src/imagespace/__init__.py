"""imagespace: turn folders of images into a searchable space of vectors, offline.

The front door for Python::

    import imagespace
    space = imagespace.open("~/Pictures/.imagespace")      # or create with a model name
    space.index(["~/Pictures"])                             # incremental, as the CLI
    hits = space.search("query.jpg", k=5, where="width > 1000")
    space.search(text="a dog"), space.duplicates(), space.clusters(), space.vectors(ids)

Names exported here:

- :func:`open` and :class:`ImageSpace`: a collection and everything that can be asked of it;
- :class:`Hit`: one search result (``path``, ``score``, ``tags``, ``width``, ``height``, ``size``);
- :func:`create_model`, :func:`list_models`, :data:`DEFAULT_MODEL`: the embedding models;
- :data:`WHERE_HELP`: the filter language of ``search(where=...)``;
- the errors: :class:`CollectionError` (the collection cannot be used as asked; its
  :class:`EmptyCollectionError`: nothing indexed yet, the same error from every door),
  :class:`QueryError` (a query cannot be answered), :class:`ImageError` (a file is not a
  readable image).

The names are loaded on first use, so that ``imagespace --help`` and other short runs of the
command line do not pay for the whole library (about a second) before they start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "open": "imagespace.space",
    "ImageSpace": "imagespace.space",
    "Hit": "imagespace.search.results",
    "QueryError": "imagespace.search.results",
    "WHERE_HELP": "imagespace.search.filters",
    "CollectionError": "imagespace.collection",
    "EmptyCollectionError": "imagespace.collection",
    "ImageError": "imagespace.images",
    "create_model": "imagespace.models.registry",
    "list_models": "imagespace.models.registry",
    "DEFAULT_MODEL": "imagespace.models.registry",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what a type checker and an editor see: the same names, eagerly
    from .collection import CollectionError, EmptyCollectionError
    from .images import ImageError
    from .models.registry import DEFAULT_MODEL, create_model, list_models
    from .search.filters import WHERE_HELP
    from .search.results import Hit, QueryError
    from .space import ImageSpace, open


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagespace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later uses do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
