"""Retrieval quality of a set of vectors with labels: precision@1, mAP, kNN accuracy.

Leave-one-out within one set: every vector queries all the others by cosine similarity;
the relevant results are those of its class. Same protocol as ../shared/data/README.md.
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, queries: int | None = None) -> dict[str, float]:
    """{"precision_at_1", "map", "queries"} over queries that have at least one relevant item.

    The first ``queries`` rows (default: all) query all the other rows.
    """
    z = _normalise(vectors)
    labels = np.asarray(labels)
    n = len(z)
    if n < 2:
        return {"precision_at_1": float("nan"), "map": float("nan"), "queries": 0}
    n_q = n if queries is None else min(queries, n)
    p1, aps = [], []
    for start in range(0, n_q, 1024):  # chunks keep memory at 1024 x n
        sim = z[start:min(start + 1024, n_q)] @ z.T
        for r in range(sim.shape[0]):
            i = start + r
            sim[r, i] = -np.inf
            order = np.argsort(-sim[r], kind="stable")[:-1]  # the query itself sorts last
            rel = labels[order] == labels[i]
            n_rel = int(rel.sum())
            if n_rel == 0:
                continue
            p1.append(float(rel[0]))
            hits = np.cumsum(rel)
            aps.append(float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / n_rel))
    return {"precision_at_1": float(np.mean(p1)) if p1 else float("nan"),
            "map": float(np.mean(aps)) if aps else float("nan"), "queries": len(aps)}


def split_metrics(val: np.ndarray, val_labels: np.ndarray, train: np.ndarray | None = None,
                  train_labels: np.ndarray | None = None) -> dict:
    """Retrieval metrics on a validation split: leave-one-out within it when its classes
    have 2+ images, else (tiny data: one image per class held out) its images searching
    the training images."""
    m = retrieval_metrics(val, val_labels)
    if m["queries"] > 0 or train is None or not len(train):
        return {**m, "protocol": "leave-one-out within the validation split"}
    m = retrieval_metrics(np.concatenate([val, train]), np.concatenate([val_labels, train_labels]),
                          queries=len(val))
    return {**m, "protocol": "validation images searching the training images"}


def knn_accuracy(db: np.ndarray, db_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                 k: int = 10) -> float:
    """Accuracy of a similarity-weighted vote among the ``k`` nearest ``db`` vectors."""
    a, b = _normalise(queries), _normalise(db)
    db_labels = np.asarray(db_labels)
    n_classes = int(max(db_labels.max(), np.asarray(query_labels).max())) + 1
    correct = 0
    for start in range(0, len(a), 512):
        sim = a[start:start + 512] @ b.T
        top = np.argpartition(-sim, min(k, sim.shape[1] - 1), axis=1)[:, :k]
        votes = np.zeros((len(top), n_classes), dtype=np.float64)
        rows = np.arange(len(top))[:, None]
        np.add.at(votes, (np.broadcast_to(rows, top.shape), db_labels[top]), np.exp(sim[rows, top] / 0.07))
        correct += int((votes.argmax(1) == np.asarray(query_labels)[start:start + 512]).sum())
    return correct / max(len(a), 1)


def view_retrieval(z1: np.ndarray, z2: np.ndarray) -> dict[str, float]:
    """Label-free quality for self-supervised runs: does each view find its twin first?"""
    a, b = _normalise(z1), _normalise(z2)
    sim = a @ b.T
    top1 = float((sim.argmax(1) == np.arange(len(a))).mean())
    rank = (sim > np.diag(sim)[:, None]).sum(1)
    return {"view_top1": top1, "view_mean_rank": float(rank.mean() + 1)}
