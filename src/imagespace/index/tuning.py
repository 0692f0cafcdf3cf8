"""The index checks itself: measured recall on the collection's own vectors, and the cheapest
search settings that reach the target.

Settings chosen once on synthetic vectors do not carry over to real ones: the reduced
graph's fixed ``ef`` 32 with 24 candidates re-scored reached recall@10 0.982 on synthetic
vectors at 1M, but 0.893 on cifar10's 60,000 real embeddings. So when an index is built (or
the collection has grown enough since it was last measured), it measures itself:

1. ``SAMPLE_QUERIES`` stored vectors, picked at random, are the queries, as ``search
   --like`` asks them: the query's own row is dropped from its answers.
2. The truth is exact cosine search of those queries over every row, streamed chunk by
   chunk (:class:`SampleTruth`; at a build it rides along the pass that fills the index,
   so the rows are read once). Cost: one matrix product of the queries with each chunk,
   ``SAMPLE_QUERIES x n x dim`` multiply-adds (200 x 1M x 1,280 is about 0.26 TFLOP, a few
   seconds on 2 cores) and ``SAMPLE_QUERIES x k`` kept ids.
3. The search-time knobs are swept from cheapest up (graph: ``ef`` and candidates re-scored;
   compressed index: ``nprobe`` and candidates re-ranked). A sweep step searches the sample
   once, batched, at one ``ef`` (or ``nprobe``) and reads every shorter re-scoring list off
   that one answer, so a sweep costs a few batched searches of 200 queries.
4. The cheapest setting whose recall@10 on the sample is at least ``TARGET_RECALL`` wins
   (cost estimated from the figures quoted at :func:`graph_cost` and :func:`compressed_cost`);
   when none does, the cheapest within ``NEAR_BEST`` of the best recall seen is kept, and
   its recall says so (``check`` warns).

The result (:class:`Tuning`) is saved in the index's description and searched with.
Collections small enough for exact search need no sweep: recall 1.0, exact.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

TARGET_RECALL = 0.97
K = 10
SAMPLE_QUERIES = 200
# An index measured at n vectors is measured again once it holds RETUNE_GROWTH times more
# (or fewer): recall at fixed settings falls as a graph grows.
RETUNE_GROWTH = 2.0
# The graph's ef, and how many of its candidates are scored again with exact vectors.
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
RESCORE_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# The compressed index's lists probed, and candidates re-ranked with exact vectors.
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RERANK_STEPS = (25, 50, 100, 200, 400, 800, 1600)
QUERY_ROWS = 8192  # candidates' exact vectors held at once (8,192 x 5 KB = 42 MB at 1,280-d)


@dataclass
class Tuning:
    """What the self-check measured and chose; saved in the index's description."""

    recall: float  # recall@k of the chosen settings on the sample (1.0 when exact)
    knobs: dict  # the chosen search-time settings, by their names in the index's settings
    exact: bool = False  # every query compares with every vector: nothing to tune
    target: float = TARGET_RECALL
    k: int = K
    queries: int = 0
    count: int = 0  # vectors in the index when measured
    seconds: float = 0.0  # the sweep (the exact truth rides along the build's pass)
    sweep: list = field(default_factory=list)  # [knobs + recall], in the order tried

    @property
    def below_target(self) -> bool:
        return self.recall < self.target

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Tuning | None:
        if not isinstance(d, dict):
            return None
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError:
            return None

    def due(self, count: int, exact: bool) -> bool:
        """Whether an index of ``count`` vectors (exact or not) should be measured again."""
        if exact != self.exact:
            return True
        if exact:
            return False
        return count > RETUNE_GROWTH * self.count or count * RETUNE_GROWTH < self.count


def exact_tuning(count: int) -> Tuning:
    return Tuning(recall=1.0, knobs={}, exact=True, count=count)


# -- the truth: exact top-k of the sample over every row ---------------------------------


class SampleTruth:
    """Exact top-``k`` of sample queries (stored rows) among the other rows, fed chunk by chunk."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, k: int = K):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.queries = np.ascontiguousarray(vectors, dtype=np.float32)
        self.k = k
        self.best_ids = np.full((len(self.ids), 0), -1, np.int64)
        self.best_sims = np.full((len(self.ids), 0), -np.inf, np.float32)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(self.ids) or not len(ids):
            return
        ids = np.asarray(ids, dtype=np.int64)
        sims = self.queries @ np.asarray(vectors, dtype=np.float32).T
        sims[self.ids[:, None] == ids[None, :]] = -np.inf  # a query is not its own neighbour
        take = min(self.k, len(ids))
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        all_sims = np.concatenate([self.best_sims, np.take_along_axis(sims, part, 1)], axis=1)
        all_ids = np.concatenate([self.best_ids, ids[part]], axis=1)
        keep = np.argsort(-all_sims, axis=1, kind="stable")[:, : self.k]
        self.best_sims = np.take_along_axis(all_sims, keep, 1)
        self.best_ids = np.take_along_axis(all_ids, keep, 1)

    @property
    def truth(self) -> np.ndarray:
        return np.where(np.isfinite(self.best_sims), self.best_ids, -1)


def sample_truth(collection, count: int, n: int = SAMPLE_QUERIES, seed: int = 0) -> SampleTruth:
    """An empty :class:`SampleTruth` for ``n`` random stored rows (fill it with ``update``)."""
    rows = collection.ids() if count else []
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False).tolist()) if rows else []
    ids, vecs = collection.vectors([rows[i] for i in picked])
    return SampleTruth(ids, vecs)


def measured_truth(collection, count: int) -> SampleTruth:
    """A :class:`SampleTruth` filled by one pass over the rows (when no build reads them)."""
    truth = sample_truth(collection, count)
    for ids, vecs in collection.iter_vectors():
        truth.update(ids, vecs)
    return truth


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k among the ids found (-1 ignored)."""
    shares = []
    for f, t in zip(found, truth):
        t = t[t >= 0]
        if len(t):
            shares.append(len(set(f[f >= 0].tolist()) & set(t.tolist())) / len(t))
    return float(np.mean(shares)) if shares else 1.0


def top_k_without_self(query_ids: np.ndarray, cand: np.ndarray, sims: np.ndarray, k: int) -> np.ndarray:
    """Each row's best ``k`` candidates by ``sims``, the query's own id dropped, -1 padded."""
    sims = np.where((cand >= 0) & (cand != query_ids[:, None]), sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(cand, order, 1)
    return np.where(np.isfinite(np.take_along_axis(sims, order, 1)), out, -1)


def exact_scores(fetch, queries: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine of each query with each of its candidates' exact vectors (-inf for -1).

    ``fetch(sorted unique ids) -> (ids, vectors)``; a few queries at a time (``QUERY_ROWS``)."""
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    batch = max(1, QUERY_ROWS // max(1, cand.shape[1]))
    for start in range(0, len(cand), batch):
        part = cand[start : start + batch]
        wanted = np.unique(part[part >= 0])
        if not len(wanted):
            continue
        ids, vecs = fetch(wanted)
        pos = np.searchsorted(ids, part)
        pos = np.minimum(pos, max(len(ids) - 1, 0))
        ok = (part >= 0) & (ids[pos] == part) if len(ids) else np.zeros(part.shape, bool)
        gathered = vecs[pos]  # (batch, c, dim)
        s = np.einsum("bcd,bd->bc", gathered, queries[start : start + batch])
        out[start : start + batch] = np.where(ok, s, -np.inf)
    return out


# -- costs: what one query pays for a setting, in estimated microseconds ------------------


def graph_cost(ef: int, rescored: int) -> float:
    """At 1M vectors (issue 6's figures): the 128-d int8 graph took about 0.45 ms at ef 32
    (~14 us a step of ef), re-scoring 24 rows from the snapshot 0.10 ms (~4 us a row)."""
    return 14.0 * ef + 4.0 * rescored


def compressed_cost(nprobe: int, list_length: float, rerank: int) -> float:
    """A probed list costs its codes (~2 ns each, PQ32 by table look-up); a re-ranked
    candidate a SQLite row read (~10 us: 0.25 ms for 24 rows at 1M, issue 6)."""
    return 0.002 * nprobe * list_length + 10.0 * rerank


def _reaches(truth: SampleTruth, cand: np.ndarray, sims: np.ndarray, target: float) -> bool:
    """Whether re-scoring every candidate found would reach ``target``."""
    return recall_at_k(top_k_without_self(truth.ids, cand, sims, truth.k), truth.truth) >= target


# When no setting reaches the target: the cheapest within this much of the best recall seen
# (the largest settings can cost 100x the latency for the last 0.005).
NEAR_BEST = 0.005


def _choose(tried: list[tuple[float, float, dict]], target: float) -> tuple[dict, float]:
    """The cheapest (cost, recall, knobs) at or above ``target``; else the cheapest near the best."""
    best = max(t[1] for t in tried)
    good = [t for t in tried if t[1] >= min(target, best - NEAR_BEST)]
    cost, rec, knobs = min(good, key=lambda t: (t[0], -t[1]))
    return knobs, rec


def _try_depths(truth: SampleTruth, cand: np.ndarray, sims: np.ndarray, depths: list[int], knobs_of, cost_of,
                tried: list, sweep: list, target: float) -> float:
    """Re-score the first ``depth`` candidates, for each depth cheapest first, recording every
    try; returns the cost of the first that reaches ``target`` (more depth only costs more),
    infinity if none does."""
    if not _reaches(truth, cand, sims, target):  # not even with every candidate: one entry
        depths = depths[-1:]
    for depth in depths:
        head = min(depth, cand.shape[1])
        rec = recall_at_k(top_k_without_self(truth.ids, cand[:, :head], sims[:, :head], truth.k), truth.truth)
        knobs, cost = knobs_of(depth), cost_of(depth)
        tried.append((cost, rec, knobs))
        sweep.append({**knobs, "recall": round(rec, 4)})
        if rec >= target:
            return cost
    return np.inf


# -- the sweeps ------------------------------------------------------------------------------


def tune_graph(index, truth: SampleTruth, target: float = TARGET_RECALL) -> Tuning:
    """Sweep a :class:`~imagespace.index.VectorIndex`'s ``ef`` (and, for a reduced graph, how
    many candidates are re-scored); the graph's ``ef`` is left as it was."""
    started = time.perf_counter()
    k = truth.k
    want = truth.truth
    reduced = index.projection is not None
    graph = index.index
    saved_ef = graph.expansion_search
    queries = index._to_index(truth.queries)
    tried: list[tuple[float, float, dict]] = []
    sweep: list[dict] = []
    best_cost = np.inf
    try:
        for ef in EF_STEPS:
            if graph_cost(ef, min(RESCORE_STEPS) if reduced else 0) >= best_cost:
                break  # every later step costs more than a setting that already reaches the target
            graph.expansion_search = ef
            count = min(len(graph), ef if reduced else k + 1)
            cand, _ = index._graph_search(queries, count, exact=False)
            if not reduced:
                found = top_k_without_self(truth.ids, cand, -np.arange(cand.shape[1], dtype=np.float32)[None].repeat(len(cand), 0), k)
                rec = recall_at_k(found, want)
                knobs = {"expansion_search": ef, "rerank": 0}
                tried.append((graph_cost(ef, 0), rec, knobs))
                sweep.append({**knobs, "recall": round(rec, 4)})
                if rec >= target:
                    best_cost = min(best_cost, graph_cost(ef, 0))
                continue
            sims = exact_scores(index._exact_vectors_sorted, truth.queries, cand)
            # re-scoring more than ef candidates would make the graph search with that ef
            steps = [r for r in RESCORE_STEPS if r <= ef]
            best_cost = min(best_cost, _try_depths(
                truth, cand, sims, steps, lambda r: {"expansion_search": ef, "rerank": r},
                lambda r: graph_cost(ef, r), tried, sweep, target))
    finally:
        graph.expansion_search = saved_ef
    knobs, rec = _choose(tried, target)
    return Tuning(recall=rec, knobs=knobs, target=target, k=k, queries=len(truth.ids), count=len(graph),
                  seconds=round(time.perf_counter() - started, 3), sweep=sweep)


def tune_compressed(core, truth: SampleTruth, target: float = TARGET_RECALL) -> Tuning:
    """Sweep a :class:`~imagespace.index.ivfpq.CompressedIndex`'s ``nprobe`` and re-rank depth;
    its ``nprobe`` is left as it was."""
    started = time.perf_counter()
    k = truth.k
    n = len(core)
    nlist = int(core._ivf.nlist)
    list_length = n / max(nlist, 1)
    saved = core._ivf.nprobe
    tried: list[tuple[float, float, dict]] = []
    sweep: list[dict] = []
    best_cost = np.inf

    def fetch_sorted(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ids, core.fetch(ids)

    try:
        for nprobe in NPROBE_STEPS:
            if nprobe > nlist:
                break
            if compressed_cost(nprobe, list_length, min(RERANK_STEPS)) >= best_cost:
                break
            core._ivf.nprobe = nprobe
            depth = min(n, max(RERANK_STEPS))
            cand = core.candidates(truth.queries, depth)
            sims = exact_scores(fetch_sorted, truth.queries, cand)
            steps = [r for r in RERANK_STEPS if r <= depth] or [depth]
            best_cost = min(best_cost, _try_depths(
                truth, cand, sims, steps, lambda r: {"nprobe": nprobe, "rerank": r},
                lambda r: compressed_cost(nprobe, list_length, r), tried, sweep, target))
    finally:
        core._ivf.nprobe = saved
    knobs, rec = _choose(tried, target)
    return Tuning(recall=rec, knobs=knobs, target=target, k=k, queries=len(truth.ids), count=n,
                  seconds=round(time.perf_counter() - started, 3), sweep=sweep)


def describe(kind: str, count: int, knobs: dict, tuning: Tuning | None, **extra) -> dict:
    """What ``info``, ``check`` and ``search --json`` say about the index that answers."""
    out = {"kind": kind, "vectors": count, **extra, "settings": knobs}
    if tuning is None:
        out.update({"recall_at_10": None, "recall_target": TARGET_RECALL, "measured": False})
    else:
        out.update({"recall_at_10": round(tuning.recall, 4), "recall_target": tuning.target, "measured": True,
                    "exact": tuning.exact, "sample_queries": tuning.queries, "measured_at_vectors": tuning.count,
                    "tuning_seconds": tuning.seconds})
    return out


def summary(desc: dict) -> str:
    """One line for people: ``hnsw, ef 48, 64 re-scored: recall@10 0.981 (target 0.97) ...``."""
    kind = desc.get("kind")
    if not kind:
        return desc.get("state", "none")
    if kind == "exact":
        return f"exact search over {desc.get('vectors', 0):,} vectors: recall 1.0"
    names = {"expansion_search": "ef", "rerank": "re-scored", "reduce_dim": "dims", "dtype": "", "nprobe": "nprobe",
             "nlist": "lists", "pq_m": "PQ bytes", "pca_dim": "PCA dims"}
    knobs = ", ".join(f"{names.get(k, k)} {v}".strip() for k, v in desc.get("settings", {}).items())
    line = f"{kind} over {desc.get('vectors', 0):,} vectors ({knobs})"
    if desc.get("recall_at_10") is None:
        return line + f": recall not measured yet (target {desc.get('recall_target')})"
    return (line + f": recall@10 {desc['recall_at_10']:.3f} on {desc.get('sample_queries')} of its own vectors "
            f"(target {desc.get('recall_target')})")
