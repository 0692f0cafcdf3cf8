"""The user's own classes, learnt from labelled folders, applied to every image.

A logistic regression on the collection's vectors: on flowers12 it labels the test photos
with accuracy 0.967 from 60 examples per class, in well under a second.

Its probabilities are calibrated on the user's examples: regularised on few examples, a
logistic regression's probabilities are squeezed (12 classes, 8 examples each: the highest
probability over a thousand photos was 0.49 while most top guesses were right), so its
logits are divided by a temperature fitted on cross-validated predictions of the examples
(each predicted by a model that did not see it). Then 0.9 means right about nine times in
ten, and the ranking of classes is unchanged.

An image is "unknown" when the calibrated top probability is below ``min_probability``
(default 0.5: the best guess is more likely wrong than right) or when it lies farther from
every example than examples of one class lie from each other (cosine to the nearest example
below a floor calibrated on the examples themselves), so that a photo of a car is not called
a daisy just because daisy was the least bad answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..collection import Collection
from ._threads import single_threaded
from .labelled import LabelledFolderError, LabelledSet, embed_labelled

UNKNOWN = "unknown"
# Below this calibrated top probability the answer is "unknown": the best guess is then more
# likely wrong than right.
MIN_PROBABILITY = 0.5
# The nearest-example floor is this quantile of each example's cosine to its nearest
# same-class example, taken with a margin: unknown means "unlike anything you showed me".
_FLOOR_QUANTILE = 0.01
_FLOOR_MARGIN = 0.05
_C = 1.0  # logistic regression's inverse regularisation: C=1 beat 10 and 100 on flowers12


@dataclass
class Verdict:
    label: str  # a class, or UNKNOWN
    score: float  # the classifier's top probability
    guess: str  # the most probable class, even when the label is UNKNOWN
    nearest: float  # cosine to the nearest example
    reason: str | None  # why UNKNOWN; None for a class


@dataclass
class Classifier:
    classes: list[str]
    model: object  # a fitted sklearn LogisticRegression
    examples: np.ndarray  # (n, dim) training vectors, for the nearest-example check
    min_probability: float
    min_similarity: float
    cv_accuracy: float | None
    n_examples: int
    temperature: float = 1.0  # logits are divided by it (fitted on cross-validated predictions)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (n, classes), columns in ``self.model.classes_`` order."""
        with single_threaded():
            return _softmax(_logits(self.model, vectors) / self.temperature)

    def predict(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        """(label, probability) per vector; ``unknown`` where nothing fits."""
        return [(v.label, v.score) for v in self.verdicts(vectors)]

    def verdicts(self, vectors: np.ndarray) -> list[Verdict]:
        """A label per vector, with the best guess and, for ``unknown``, which rule said so."""
        if not len(vectors):
            return []
        probs = self.probabilities(vectors)
        best = probs.argmax(1)
        nearest = np.zeros(len(vectors), dtype=np.float32)
        for start in range(0, len(vectors), 4096):
            nearest[start : start + 4096] = (vectors[start : start + 4096] @ self.examples.T).max(1)
        out = []
        for i, j in enumerate(best):
            p = float(probs[i, j])
            guess = str(self.model.classes_[j])
            if p < self.min_probability:
                reason = f"top probability {p:.2f} ({guess}) is below --min-probability {self.min_probability:.2f}"
            elif nearest[i] < self.min_similarity:
                reason = (f"unlike every example: cosine {nearest[i]:.2f} to the nearest one, below "
                          f"{self.min_similarity:.2f} (how close your examples of one class are to each other)")
            else:
                out.append(Verdict(guess, p, guess, float(nearest[i]), None))
                continue
            out.append(Verdict(UNKNOWN, p, guess, float(nearest[i]), reason))
        return out


@dataclass
class Prediction:
    id: int
    path: str
    label: str
    score: float
    reason: str | None = None  # why "unknown"
    guess: str | None = None  # the most probable class

    def to_dict(self) -> dict:
        out = {"path": self.path, "label": self.label, "score": round(self.score, 4)}
        if self.reason is not None:
            out["reason"] = self.reason
            out["guess"] = self.guess
        return out


def train_classifier(
    collection: Collection,
    train_dir: str | os.PathLike[str],
    *,
    min_probability: float = MIN_PROBABILITY,
    cross_validate: bool = True,
) -> Classifier:
    """Learn the classes of ``train_dir`` (one sub-folder per class) on the collection's vectors."""
    collection.require_images()
    data = embed_labelled(collection, train_dir, min_per_class=2)
    with single_threaded():
        return fit_classifier(data, min_probability=min_probability, cross_validate=cross_validate)


def fit_classifier(data: LabelledSet, *, min_probability: float = MIN_PROBABILITY, cross_validate: bool = True) -> Classifier:
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(data.labels)
    counts = {c: int((labels == c).sum()) for c in set(data.labels)}
    if len(counts) < 2:
        raise LabelledFolderError("need at least two classes to learn from")
    cv, temperature = None, 1.0
    if cross_validate:
        cv, temperature = _cross_validated(data.vectors, labels, min(counts.values()))
    model = LogisticRegression(C=_C, max_iter=2000).fit(data.vectors, labels)
    return Classifier(
        classes=sorted(counts),
        model=model,
        examples=data.vectors,
        min_probability=min_probability,
        min_similarity=_similarity_floor(data.vectors, labels),
        cv_accuracy=cv,
        n_examples=len(labels),
        temperature=temperature,
    )


def classify_collection(collection: Collection, classifier: Classifier, ids: list[int] | None = None) -> list[Prediction]:
    """A label and score for every image of the collection (or only ``ids``), in path order."""
    predictions: list[Prediction] = []
    chunks = [collection.vectors(ids)] if ids is not None else collection.iter_vectors()
    for chunk_ids, vecs in chunks:
        rows = collection.rows(chunk_ids.tolist())
        for i, v in zip(chunk_ids.tolist(), classifier.verdicts(vecs)):
            if i in rows:
                predictions.append(Prediction(i, rows[i].path, v.label, v.score, v.reason, v.guess))
    predictions.sort(key=lambda p: p.path)
    return predictions


def save_predictions(collection: Collection, predictions: list[Prediction]) -> int:
    """Keep the labels in the collection, so that ``--where "label = daisy"`` can use them."""
    return collection.save_labels((p.id, p.label, p.score, p.reason) for p in predictions)


def _cross_validated(vectors: np.ndarray, labels: np.ndarray, smallest: int) -> tuple[float | None, float]:
    """Stratified k-fold (k up to 5, limited by the smallest class): the accuracy, and the
    temperature that makes the out-of-fold probabilities most likely (least log loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    folds = min(5, smallest)
    if folds < 2:
        return None, 1.0
    classes = np.unique(labels)
    target = np.searchsorted(classes, labels)
    logits = np.zeros((len(labels), len(classes)), dtype=np.float64)
    for train, held in StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(vectors, labels):
        model = LogisticRegression(C=_C, max_iter=2000).fit(vectors[train], labels[train])
        logits[held] = _logits(model, vectors[held])  # every class is in every training fold
    accuracy = float((logits.argmax(1) == target).mean())
    return accuracy, _fit_temperature(logits, target)


def _fit_temperature(logits: np.ndarray, target: np.ndarray) -> float:
    """The temperature T minimising the log loss of softmax(logits / T): a log-spaced search,
    then a finer one around the best."""

    def loss(t: float) -> float:
        p = _softmax(logits / t)
        return float(-np.log(np.maximum(p[np.arange(len(target)), target], 1e-12)).mean())

    grid = np.geomspace(0.01, 10, 61)
    best = grid[int(np.argmin([loss(t) for t in grid]))]
    fine = np.geomspace(best / 1.15, best * 1.15, 21)
    return float(fine[int(np.argmin([loss(t) for t in fine]))])


def _logits(model, vectors: np.ndarray) -> np.ndarray:
    """A fitted logistic regression's logits (n, classes); a two-class model's one column as two."""
    d = model.decision_function(vectors)
    return np.stack([np.zeros_like(d), d], axis=1) if d.ndim == 1 else d


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _similarity_floor(vectors: np.ndarray, labels: np.ndarray) -> float:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    same = labels[:, None] == labels[None, :]
    nearest_same = np.where(same, sims, -np.inf).max(1)
    nearest_same = nearest_same[np.isfinite(nearest_same)]
    if not len(nearest_same):
        return -1.0
    return float(np.quantile(nearest_same, _FLOOR_QUANTILE)) - _FLOOR_MARGIN
