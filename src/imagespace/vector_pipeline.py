"""What a collection does to a network's vector before it stores, indexes and compares it.

``raw``: the network's pooled vector, L2-normalised (every collection made before the
pipeline existed, and shards, whose vectors must share one space across collections).
``centred`` (the default of new collections): the vector minus the mean vector of the
collection, L2-normalised again. The mean is the only thing learnt, without labels; on
clothing10 and flowers12 it raised mAP by about 0.03 (benchmarks/bench_pipelines.py).

A mean moves as images come and go, so it is *frozen*: every stored vector is made under
the collection's current mean (a version number), new images are centred on it as they
are added (indexing stays incremental), and it is refitted only when the collection has
doubled or halved since the last fit, in the same transaction that rewrites every stored
vector (the collection keeps each image's raw vector for that). A collection never mixes
vectors of two means, and a refit costs O(1) per image added, amortised.

Below ``MIN_ROWS_TO_FIT`` images no mean is fitted (version 0: vectors as the network gives
them): the mean of a handful of photos is mostly the photos themselves (two images centred
on their own mean point in opposite directions).

Plain numpy, no SQL: :mod:`imagespace.collection` stores what this computes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

RAW = "raw"
CENTRED = "centred"
KINDS = (RAW, CENTRED)
DEFAULT_KIND = CENTRED
MIN_ROWS_TO_FIT = 100
REFIT_FACTOR = 2.0
# The query side of ``centred``: alpha query expansion with the query's 2 nearest images,
# weighted by similarity^1 (tuned on clothing10/train and flowers12/train, each photo
# querying the rest: mAP +0.02 and +0.04 over centring alone, precision@1 unchanged; 3 or
# more neighbours gained a little more mAP but lost edited copies to look-alikes, and on
# centred vectors, whose similarities are lower, alpha 3 weighted the neighbours too little).
CENTRED_QE_NEIGHBOURS = 2
CENTRED_QE_ALPHA = 1.0
# Whether searches expand image queries when not told: yes, on centred collections. It lifts
# mAP by 0.02-0.04 at about 1.4x a query's time; the expanded query only orders the answer,
# and each score stays the plain cosine between the query and the image (search/core.py),
# so --min-score and the weak line mean what they meant without it.
EXPAND_BY_DEFAULT = True


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class VectorPipeline:
    """A collection's post-processing: ``kind``, and for ``centred`` the frozen mean."""

    kind: str = RAW
    version: int = 0  # 0: nothing fitted yet; +1 at each refit
    fitted_on: int = 0  # how many images the mean was learnt from
    mean: np.ndarray | None = None  # float32 (dim,), the mean of the raw (unit) vectors

    @property
    def identity(self) -> bool:
        """Stored vectors are the network's own (nothing fitted, or ``raw``)."""
        return self.kind == RAW or self.mean is None

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Stored/query vectors from raw network vectors (rows, or one vector)."""
        raw = np.asarray(raw, dtype=np.float32)
        if self.identity:
            return raw
        return unit(raw - self.mean)

    @property
    def query_expansion(self) -> tuple[int, float] | None:
        """(neighbours, alpha) of query expansion on this pipeline's vectors, or None for
        the library's long-standing ones (``raw`` collections answer as they always did)."""
        if self.kind == CENTRED:
            return CENTRED_QE_NEIGHBOURS, CENTRED_QE_ALPHA
        return None

    @property
    def expands_by_default(self) -> bool:
        """Whether a search that says nothing about ``qe`` expands its query."""
        return self.kind == CENTRED and EXPAND_BY_DEFAULT

    def wants_refit(self, count: int) -> bool:
        """Whether a collection of ``count`` images should learn its mean again."""
        if self.kind != CENTRED or count < MIN_ROWS_TO_FIT:
            return False
        if self.mean is None:
            return True
        return count >= self.fitted_on * REFIT_FACTOR or count * REFIT_FACTOR <= self.fitted_on

    def refitted(self, raw_sum: np.ndarray, count: int) -> VectorPipeline:
        """The next version, with the mean of ``count`` raw vectors summing to ``raw_sum``."""
        mean = (np.asarray(raw_sum, dtype=np.float64) / max(count, 1)).astype(np.float32)
        return VectorPipeline(self.kind, self.version + 1, count, mean)

    def name(self) -> str:
        """What ``info`` prints: e.g. ``centred (mean v3, learnt on 4,000 images)``."""
        if self.kind == RAW:
            return "raw (the network's vectors; no query expansion unless asked)"
        qe = (f"query expansion with {CENTRED_QE_NEIGHBOURS} neighbours by default (--no-qe: off)" if EXPAND_BY_DEFAULT
              else f"query expansion off by default ({CENTRED_QE_NEIGHBOURS} neighbours with --qe)")
        if self.mean is None:
            return f"centred (no mean yet: raw vectors until {MIN_ROWS_TO_FIT} images), {qe}"
        return f"centred (mean v{self.version}, learnt on {self.fitted_on:,} images), {qe}"

    def describe(self) -> dict:
        """For ``info --json`` and exports: enough to make the stored vectors again from
        the network's raw vectors (``unit(raw - mean)``)."""
        return {
            "kind": self.kind,
            "version": self.version,
            "fitted_on": self.fitted_on,
            "post_processed": not self.identity,
            "expands_by_default": self.expands_by_default,
            "query_expansion": None if self.query_expansion is None else dict(zip(("neighbours", "alpha"), self.query_expansion)),
            "mean": None if self.mean is None else [float(x) for x in self.mean],
        }

    # -- stored in the collection's meta table as one JSON value ------------------------------

    def to_json(self) -> str:
        mean = None if self.mean is None else base64.b64encode(self.mean.astype("<f4").tobytes()).decode()
        return json.dumps({"kind": self.kind, "version": self.version, "fitted_on": self.fitted_on, "mean": mean})

    @staticmethod
    def from_json(text: str | None) -> VectorPipeline:
        """``None`` (collections older than the pipeline): ``raw``, as they always were."""
        if not text:
            return VectorPipeline(RAW)
        d = json.loads(text)
        mean = None if d.get("mean") is None else np.frombuffer(base64.b64decode(d["mean"]), dtype="<f4").astype(np.float32)
        return VectorPipeline(d.get("kind", RAW), int(d.get("version", 0)), int(d.get("fitted_on", 0)), mean)
