"""A registry of embedding models by name, with one entry point: :func:`create_model`.

Model files register a factory with ``@register_model``; callers never import a model
module directly. A name that is a folder made by ``imagespace train`` loads that model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .base import EmbeddingModel

# Lite2 is the default since 2026-12-04 (README, "Networks"), decided on photos of real size:
# centred with query expansion, it beat Lite0 by 0.02-0.03 mAP on clothing10 (both halves,
# phone photos) and cifar10, lost 0.02 on flowers12/test (224 px squares it sees upscaled),
# and costs about twice the network time (13.8 against 6.8 ms an image on a 2-core Xeon),
# which on 12 MP photos is a small part of a run (decoding dominates). Collections made with
# Lite0 keep it until ``index --model``.
DEFAULT_MODEL = "efficientnet-lite2"

_model_entrypoints: dict[str, Callable[..., EmbeddingModel]] = {}
_model_info: dict[str, dict] = {}
_builtin_modules = ("imagespace.models.efficientnet", "imagespace.models.quantize")


def register_model(name: str, **info) -> Callable[[Callable[..., EmbeddingModel]], Callable[..., EmbeddingModel]]:
    """Register a factory under ``name``; ``info`` (input size, dimension, measured figures)
    is what :func:`model_info` and ``imagespace models`` show without loading the model."""

    def wrap(fn: Callable[..., EmbeddingModel]) -> Callable[..., EmbeddingModel]:
        _model_entrypoints[name] = fn
        _model_info[name] = dict(info)
        return fn

    return wrap


def _import_builtins() -> None:
    import importlib

    for module in _builtin_modules:
        importlib.import_module(module)


def list_models() -> list[str]:
    """The registered model names, e.g. ``['efficientnet-lite0', ...]``.

    Example:
        >>> "efficientnet-lite0" in list_models()
        True
    """
    _import_builtins()
    return sorted(_model_entrypoints)


def model_info(name: str) -> dict:
    """What was registered about ``name`` (empty when nothing was)."""
    _import_builtins()
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(sorted(_model_entrypoints))}")
    return dict(_model_info.get(name, {}))


def is_model_dir(spec: str | os.PathLike[str]) -> bool:
    from .model_dir import MODEL_CARD

    return (Path(spec) / MODEL_CARD).is_file()


def resolve_model_spec(name: str | os.PathLike[str] | None = None, current: str | None = None) -> str:
    """The spec a collection records for its model: how to make the model again later.

    Args:
        name: what the user asked for: a registered name, or a folder made by
            ``imagespace train`` (any relative form); None for "the collection's model".
        current: the collection's recorded spec, if it has one.

    Returns:
        ``name`` as given when it is a registered name, its absolute path when it is a
        folder, else ``current``, else :data:`DEFAULT_MODEL`.

    Example:
        >>> resolve_model_spec(None, None)
        'efficientnet-lite2'
    """
    if name is not None and Path(name).is_dir():
        return str(Path(name).resolve())
    return str(name or current or DEFAULT_MODEL)


def create_model(name: str | os.PathLike[str] | None = None, **kwargs) -> EmbeddingModel:
    """The embedding model called ``name``.

    Args:
        name: a registered name (:func:`list_models`) or a folder made by ``imagespace
            train``; default :data:`DEFAULT_MODEL`.
        **kwargs: passed to the model's factory (e.g. ``threads=1``).

    Returns:
        An :class:`~imagespace.models.base.EmbeddingModel`: ``embed(pixels)`` gives vectors
        and tags; ``model_id`` names what its vectors mean.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> model = create_model("efficientnet-lite0")  # doctest: +SKIP
        >>> model.dim
        1280
    """
    name = name or DEFAULT_MODEL
    if is_model_dir(name):
        from .model_dir import load_model_dir

        return load_model_dir(Path(name), **kwargs)
    _import_builtins()
    try:
        factory = _model_entrypoints[str(name)]
    except KeyError:
        known = ", ".join(sorted(_model_entrypoints))
        raise ValueError(
            f"unknown model {str(name)!r}: use one of {known}, or a folder made by 'imagespace train'"
        ) from None
    return factory(**kwargs)
