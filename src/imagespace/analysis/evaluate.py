"""How well a model's vectors separate the classes of a labelled folder.

Leave-one-out over the folder's images: precision@1 (is the nearest other image of the same
class), mAP (mean average precision of the full ranking), kNN accuracy (majority of the 10
nearest, ties to the closest) and cluster NMI (k-means with k = number of classes, against
the labels). The same protocol as ../shared/data/README.md, so figures compare with it.
Also the same measures for held-out queries against a database (``ranking_scores``) and,
for a duplicate finder, pair precision and recall of its groups against the true groups.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter

import numpy as np

from ..collection import Collection
from ..models.model_dir import trained_on
from ._threads import single_threaded
from .labelled import embed_labelled

KNN = 10


def evaluate_folder(collection: Collection, data_dir: str | os.PathLike[str], *, model=None, knn: int = KNN) -> dict:
    """Metrics of the collection's model (or ``model``) on ``data_dir`` (one sub-folder per class)."""
    started = time.perf_counter()
    data = embed_labelled(collection, data_dir, min_per_class=2, model=model)
    with single_threaded():
        metrics = evaluate_vectors(data.vectors, data.labels, knn=knn)
    metrics.update(
        {
            "images": len(data.labels),
            "classes": len(set(data.labels)),
            "model": (collection.model_spec or "efficientnet-lite0") if model is None else model.name,
            "failed": data.failed,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    warning = training_data_warning(collection.model_spec if model is None else None, data_dir)
    if warning:
        metrics["warning"] = warning
    return metrics


def training_data_warning(model_spec: str | None, data_dir: str | os.PathLike[str]) -> str | None:
    """A warning when ``data_dir`` holds (or lies in) the images the model was trained on:
    its figures then say how well it learnt them, not how it does on photos it has not seen."""
    trained = trained_on(model_spec)
    if trained is None:
        return None
    a, b = os.path.realpath(trained), os.path.realpath(data_dir)
    if a != b and not a.startswith(b.rstrip(os.sep) + os.sep) and not b.startswith(a.rstrip(os.sep) + os.sep):
        return None
    return (f"these are the model's training images: it was trained on {trained}, so these figures say how well "
            f"it learnt them, not how it does on new photos; evaluate on a labelled folder it has not seen")


def evaluate_vectors(vectors: np.ndarray, labels: list[str], *, knn: int = KNN, seed: int = 0) -> dict:
    """Leave-one-out retrieval and clustering metrics of L2-normalised ``vectors``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    y = np.asarray(labels)
    n = len(y)
    p1, aps, knn_ok = [], [], []
    for start in range(0, n, 1024):
        sims = vectors[start : start + 1024] @ vectors.T
        for r in range(len(sims)):
            me = start + r
            s = sims[r].copy()
            s[me] = -np.inf
            order = np.argsort(-s, kind="stable")[: n - 1]
            rel = y[order] == y[me]
            p1.append(bool(rel[0]))
            if rel.any():
                hits = np.cumsum(rel)
                aps.append(float((hits / np.arange(1, len(rel) + 1))[rel].mean()))
            votes = Counter(y[order[:knn]].tolist())
            top = max(votes.values())
            winner = next(label for label in y[order[:knn]] if votes[label] == top)  # ties: the closest
            knn_ok.append(winner == y[me])
    classes = len(set(labels))
    clusters = KMeans(classes, n_init=4, random_state=seed).fit_predict(vectors)
    return {
        "precision_at_1": round(float(np.mean(p1)), 4),
        "map": round(float(np.mean(aps)), 4) if aps else None,
        "knn_accuracy": round(float(np.mean(knn_ok)), 4),
        "knn": knn,
        "nmi": round(float(normalized_mutual_info_score(y, clusters)), 4),
    }


def ranking_scores(queries: np.ndarray, query_labels, database: np.ndarray, database_labels) -> dict:
    """mAP, precision@1 and @10 of ``queries`` ranked against ``database`` (unit vectors)."""
    ql, dl = np.asarray(query_labels), np.asarray(database_labels)
    s = queries @ database.T
    aps, p1, p10 = [], [], []
    for i in range(len(queries)):
        rel = dl[np.argsort(-s[i], kind="stable")] == ql[i]
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, len(rel) + 1))[rel].mean()))
        p1.append(rel[0])
        p10.append(rel[:10].mean())
    return {"map": float(np.mean(aps)), "p@1": float(np.mean(p1)), "p@10": float(np.mean(p10))}


def rerank_scores(queries: np.ndarray, query_labels, database: np.ndarray, database_labels) -> dict:
    """:func:`ranking_scores` of plain queries, query expansion, database-side augmentation
    and both (the settings of :mod:`imagespace.search.rerank`), over exact similarities."""
    from ..search.rerank import DBA_ALPHA, DBA_NEIGHBOURS, QE_ALPHA, QE_NEIGHBOURS, augment, expand_query

    def dba(db):
        s = db @ db.T
        np.fill_diagonal(s, -np.inf)
        nb = np.argsort(-s, 1)[:, :DBA_NEIGHBOURS]
        return augment(db, nb, np.take_along_axis(s, nb, 1), DBA_ALPHA)

    def qe(q, db):
        s = q @ db.T
        nb = np.argsort(-s, 1)[:, :QE_NEIGHBOURS]
        return np.stack([expand_query(q[i], db[nb[i]], s[i, nb[i]], QE_ALPHA) for i in range(len(q))])

    d_dba = dba(database)
    return {
        "plain": ranking_scores(queries, query_labels, database, database_labels),
        "qe": ranking_scores(qe(queries, database), query_labels, database, database_labels),
        "dba": ranking_scores(queries, query_labels, d_dba, database_labels),
        "qe+dba": ranking_scores(qe(queries, d_dba), query_labels, d_dba, database_labels),
    }


def merge_groups(groups: list[set[str]]) -> list[set[str]]:
    """Groups that share a member joined into one (the transitive closure of "same photo")."""
    merged: list[set[str]] = []
    for g in groups:
        g = set(g)
        for other in [m for m in merged if m & g]:
            g |= other
            merged.remove(other)
        merged.append(g)
    return merged


def pairs_of(groups) -> set[tuple[str, str]]:
    """Every pair (sorted) within each group."""
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(sorted(g), 2)}


def pair_precision_recall(predicted, truth) -> tuple[float, float, int, int]:
    """Precision and recall of the pairs in ``predicted`` groups against ``truth`` groups, and
    the number of pairs of each."""
    pred, true = pairs_of(predicted), pairs_of(truth)
    tp = len(pred & true)
    return (tp / len(pred) if pred else 1.0), (tp / len(true) if true else 1.0), len(pred), len(true)
