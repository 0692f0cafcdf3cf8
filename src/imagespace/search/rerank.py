"""Better rankings: alpha query expansion (QE) and database-side augmentation (DBA).

QE replaces the query by itself plus its top neighbours, weighted by similarity^alpha.
DBA replaces every stored vector by itself plus its own top neighbours the same way, so
that images of one kind pull together. Measured on flowers12 (240 test queries against the
720 training photos): mAP 0.722 without either, 0.756 with QE (n=2), 0.803 with DBA (n=3),
0.845 with both, with precision@1 0.971 -> 0.975 and precision@10 0.911 -> 0.943. QE is
the default of image searches in centred collections (vector_pipeline: 2 neighbours,
alpha 1), where the searcher keeps each score the plain cosine to the query; DBA stays an
option (``search --dba``): its augmented copy is rebuilt whole on every change, and
recommendations with three liked photos did not gain from it (9.25 against 9.33 of the
top 10). Larger n raise mAP further but start to cost precision@1.

The augmented vectors are a derived file beside the collection, rebuilt whenever the
collection has changed since (its change number differs), like the ANN index itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from usearch.index import Index

from ..collection import Collection
from ..atomic import atomic_write, write_text_atomic
from ..index import EXACT_LIMIT, VectorSearch, exact_search, open_index

QE_NEIGHBOURS = 2
QE_ALPHA = 3.0
DBA_NEIGHBOURS = 3
DBA_ALPHA = 3.0
# Above this many rows QE finds the query's neighbours in the HNSW graph even where the
# answer itself is an exact scan (index.EXACT_LIMIT); below, a scan costs next to nothing.
GRAPH_NEIGHBOURS_ABOVE = 2_000


def expand_query(query: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float = QE_ALPHA) -> np.ndarray:
    """alpha-QE: the query plus its neighbours weighted by max(sim, 0)^alpha, L2-normalised."""
    w = np.maximum(np.asarray(sims, dtype=np.float32), 0.0) ** alpha
    out = np.asarray(query, dtype=np.float32) + (w[:, None] * neighbours).sum(0)
    return out / max(float(np.linalg.norm(out)), 1e-12)


def augment(vectors: np.ndarray, neighbour_ids: np.ndarray, neighbour_sims: np.ndarray, alpha: float = DBA_ALPHA) -> np.ndarray:
    """DBA of each row: itself plus its neighbours (positions into ``vectors``, -1 = none)."""
    w = np.where(neighbour_ids >= 0, np.maximum(neighbour_sims, 0.0) ** alpha, 0.0).astype(np.float32)
    gathered = vectors[np.maximum(neighbour_ids, 0)]
    out = vectors + (w[..., None] * gathered).sum(1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class DbaSpace:
    """The collection's vectors after DBA, with an ANN index over them."""

    ids: np.ndarray
    vectors: np.ndarray
    index: object  # usearch Index keyed by row id
    seq: int

    def search(self, query: np.ndarray, k: int, allowed: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None:
            pos = np.searchsorted(self.ids, np.asarray(sorted(allowed), dtype=np.int64))
            pos = pos[(pos < len(self.ids))]
            pos = pos[np.isin(self.ids[pos], allowed)]
            return exact_search(query, self.ids[pos], self.vectors[pos], k)
        k = min(k, len(self.ids))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        m = self.index.search(np.asarray(query, dtype=np.float32), k, exact=len(self.ids) <= EXACT_LIMIT)
        keys = np.asarray(m.keys, dtype=np.int64).reshape(-1)
        return keys, 1.0 - np.asarray(m.distances, dtype=np.float32).reshape(-1)


def dba_space(collection: Collection, *, n: int = DBA_NEIGHBOURS, alpha: float = DBA_ALPHA, index: VectorSearch | None = None) -> DbaSpace:
    """The DBA vectors of the collection, from the cache file when it is still current."""
    base = collection.root / f"dba-n{n}-a{alpha:g}"
    meta_path, vec_path, idx_path = base.with_suffix(".json"), base.with_suffix(".npz"), base.with_suffix(".usearch")
    seq, model = collection.seq, collection.model_id
    owner = getattr(collection, "collection_id", None)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("seq") == seq and meta.get("model_id") == model and meta.get("collection_id") == owner:
            data = np.load(vec_path)
            restored = Index.restore(str(idx_path), view=False)
            if restored is not None and len(restored) == len(data["ids"]):
                return DbaSpace(data["ids"], data["vectors"], restored, seq)
    except (OSError, ValueError, KeyError, RuntimeError):
        pass
    ids, vectors = collection.vectors()
    index = index or open_index(collection)
    nb_ids, nb_sims = _neighbours(index, ids, vectors, n)
    augmented = augment(vectors, nb_ids, nb_sims, alpha)
    ann = Index(ndim=vectors.shape[1] if len(vectors) else (collection.dim or 1), metric="cos", dtype="f32")
    if len(ids):
        ann.add(ids, augmented)
    # Files first, description last: a crash in between leaves a stale seq, so a rebuild.
    with atomic_write(vec_path, suffix=".npz") as tmp:
        np.savez(tmp, ids=ids, vectors=augmented)
    with atomic_write(idx_path) as tmp:
        ann.save(str(tmp))
    write_text_atomic(meta_path, json.dumps({"seq": seq, "model_id": model, "collection_id": owner, "n": n, "alpha": alpha, "count": len(ids)}))
    return DbaSpace(ids, augmented, ann, seq)


def _neighbours(index: VectorSearch, ids: np.ndarray, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` nearest other rows, as positions into ``ids``."""
    pos_of = {int(i): p for p, i in enumerate(ids.tolist())}
    out_ids = np.full((len(ids), n), -1, dtype=np.int64)
    out_sims = np.zeros((len(ids), n), dtype=np.float32)
    for start in range(0, len(ids), 4096):
        found, sims = index.search(vectors[start : start + 4096], n + 1)
        for r in range(len(found)):
            me = int(ids[start + r])
            got = [(pos_of[int(j)], s) for j, s in zip(found[r], sims[r]) if j >= 0 and int(j) != me and int(j) in pos_of][:n]
            for c, (p, s) in enumerate(got):
                out_ids[start + r, c], out_sims[start + r, c] = p, s
    return out_ids, out_sims


def stored_vectors(collection: Collection, index: VectorSearch, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of rows ``ids``, in that order; NaN rows for ids no longer there.
    From the index's own float32 vectors when it holds them in memory, else the database."""
    ids = np.asarray(ids, dtype=np.int64)
    if getattr(index, "holds_full_vectors", False):
        return index.vectors_of(ids)
    found, vecs = collection.vectors(ids.tolist())
    out = np.full((len(ids), vecs.shape[1]), np.nan, dtype=np.float32)
    if len(found):
        pos = np.searchsorted(found, ids)
        there = (pos < len(found)) & (found[np.minimum(pos, len(found) - 1)] == ids)
        out[there] = vecs[pos[there]]
    return out


def reranked(
    collection: Collection,
    index: VectorSearch,
    vector: np.ndarray,
    want: int,
    *,
    allowed: list[int] | None = None,
    exclude: set[int] | frozenset[int] = frozenset(),
    qe: bool = True,
    dba: bool = True,
    qe_neighbours: int = QE_NEIGHBOURS,
    qe_alpha: float = QE_ALPHA,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``want`` nearest (ids, scores) to ``vector`` with QE and/or DBA, among ``allowed``
    ids when given. Scores stay cosine similarities (against the augmented vectors when DBA
    is on). ``exclude``: ids that never count as the query's neighbours (the query itself)."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dba:
        space = dba_space(collection, index=index)
        lookup = lambda q, n, **_: space.search(q, n, allowed)  # noqa: E731
        vectors_of = lambda ids: space.vectors[np.searchsorted(space.ids, ids)]  # noqa: E731
    else:
        def lookup(q, n, *, neighbours_only: bool = False):
            if allowed is not None:
                return exact_search(q, *collection.vectors(allowed), n)
            if neighbours_only and len(index) > GRAPH_NEIGHBOURS_ABOVE and getattr(index, "holds_full_vectors", False):
                # The query's few nearest images from the graph, not a second scan of every
                # vector: about 5 ms a query less at 8,400 rows (AP@1000 unchanged), and the
                # graph's recall of a few nearest is near 1 with a search list of 64.
                found, sims = index.search(q[None], n, exact=False)
            else:
                found, sims = index.search(q[None], n)
            return found[0], sims[0]

        vectors_of = lambda ids: stored_vectors(collection, index, ids)  # noqa: E731
    if qe:
        found, sims = lookup(query, qe_neighbours + len(exclude) + 1, neighbours_only=True)
        keep = [(int(i), float(s)) for i, s in zip(found, sims) if i >= 0 and int(i) not in exclude][:qe_neighbours]
        if keep:
            nb = np.asarray([i for i, _ in keep], dtype=np.int64)
            order = np.argsort(nb)
            vecs = vectors_of(nb[order])
            query = expand_query(query, vecs, np.asarray([s for _, s in keep], dtype=np.float32)[order], qe_alpha)
    return lookup(query, want)
