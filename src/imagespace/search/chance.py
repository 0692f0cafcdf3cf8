"""The weak line of a collection: how close two of its images are by chance.

A cosine means something only against what the same model gives unrelated pictures: with
the pretrained network a coffee cup and a rocket score about 0.4, with a model trained on
the user's folders 0.7. So the line under which a result is called weak is measured on each
collection, with its own model: a high percentile of the cosines between random pairs of its
images ("two of its images picked at random score this much only 5% of the time"). Tuned on
the train halves of flowers12 and clothing10 by what a user sees, the top 10 results of each
photo: the 95th to 99th percentiles balanced right results left unmarked against wrong ones
marked within 0.01 of each other (0.60-0.61), and the 95th marks the fewest right results
weak among them (18% on flowers12/train, 11% on clothing10/train), the complaint that
started this (``python -m benchmarks.bench_weak_line`` gives the figures, and the test halves').

The line is kept in the collection's meta table with the model and the number of images it
was measured on, and measured again when the model changes or the collection has grown or
shrunk by a tenth (any change at all while it is small).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from ..collection import Collection

PERCENTILE = 95
SAMPLE = 1000  # images whose pairs are measured: about 500,000 pairs, ~50 ms
MIN_IMAGES = 3  # fewer images than this have too few pairs to say what chance is
_META_KEY = "chance_line"
_SMALL = 200  # below this many images the line is measured again after any change


@dataclass(frozen=True)
class ChanceLine:
    """``value``: the ``percentile``-th percentile of the cosines between random pairs of the
    collection's images (``images`` of them measured, made with ``model_id``)."""

    value: float
    percentile: int
    images: int  # images whose pairs were measured (a sample of a large collection)
    collection_size: int  # images the collection held then
    model_id: str
    seq: int

    def to_dict(self) -> dict:
        return {"value": round(self.value, 4), "percentile": self.percentile, "images": self.images,
                "collection_size": self.collection_size, "model_id": self.model_id, "seq": self.seq}


def chance_line(collection: Collection) -> ChanceLine | None:
    """The collection's weak line, measured now if it was never measured or is out of date;
    None when the collection holds fewer than ``MIN_IMAGES`` images."""
    model_id, seq = _vector_space(collection), collection.seq
    saved = _saved(collection)
    if saved is not None and saved.model_id == model_id and saved.seq == seq:
        return saved  # nothing written since: no count of the rows (a search stays a few ms)
    n = len(collection)
    if collection.model_id is None or n < MIN_IMAGES:
        return None
    if saved is not None and saved.model_id == model_id and _still_current(saved, n, seq):
        saved = replace(saved, seq=seq)  # still right for this many images: stamped current
        _save(collection, saved)
        return saved
    line = measure(collection)
    if line is not None:
        _save(collection, line)
    return line


def measure(collection: Collection, *, percentile: int = PERCENTILE, sample: int = SAMPLE) -> ChanceLine | None:
    """The line measured on up to ``sample`` images chosen at random (the same ones for the
    same collection, so that the line does not wobble between two measurements)."""
    ids = np.asarray(collection.ids(), dtype=np.int64)
    if len(ids) < MIN_IMAGES:
        return None
    if len(ids) > sample:
        ids = np.sort(np.random.default_rng(0).choice(ids, sample, replace=False))
    _, vecs = collection.vectors(ids.tolist())
    if len(vecs) < MIN_IMAGES:
        return None
    return ChanceLine(cosine_percentile(vecs, percentile), percentile, len(vecs), len(collection),
                      _vector_space(collection) or "", collection.seq)


def _vector_space(collection: Collection) -> str | None:
    """The model and the version of the collection's vector pipeline: a new mean (a refit)
    moves every cosine, so the line is measured again, as for a new model."""
    if collection.model_id is None:
        return None
    p = collection.pipeline
    return collection.model_id if p.identity else f"{collection.model_id}#{p.kind}-v{p.version}"


def cosine_percentile(vectors: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of the cosines between every pair of the (L2-normalised) ``vectors``."""
    sims = vectors @ vectors.T
    upper = sims[np.triu_indices(len(vectors), 1)]
    return float(np.percentile(upper, percentile))


def _still_current(saved: ChanceLine, n: int, seq: int) -> bool:
    if saved.seq == seq:
        return True
    if n < _SMALL or saved.collection_size < _SMALL:
        return False
    return abs(n - saved.collection_size) <= 0.1 * saved.collection_size


def _save(collection: Collection, line: ChanceLine) -> None:
    # never waits for an indexing run holding the write lock; a read-only collection answers
    # with the line measured in memory
    collection.try_set_meta(_META_KEY, json.dumps(line.to_dict()))


def _saved(collection: Collection) -> ChanceLine | None:
    raw = collection.get_meta(_META_KEY)
    if not raw:
        return None
    try:
        d = json.loads(raw)
        return ChanceLine(float(d["value"]), int(d["percentile"]), int(d["images"]), int(d["collection_size"]),
                          str(d["model_id"]), int(d["seq"]))
    except (ValueError, KeyError, TypeError):
        return None
