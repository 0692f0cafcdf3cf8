"""The weak line of image searches and classify's calibration, on real photos.

``python -m benchmarks.bench_weak_line [--cache DIR]``

Weak line (search/chance.py): a percentile of the cosines between random pairs of a
collection's images. Judged by what a user sees, each photo's 10 nearest others: the share
of same-kind results left unmarked and of other-kind results marked weak (and, for all
pairs, the share of same-kind pairs above the line and of two-kind pairs below it). The
percentile is chosen on the train halves of flowers12 and clothing10, then reported on the
test halves, each with the line measured on that test collection as a user's search would;
the fixed 0.5 of before is printed beside it.

Calibration (analysis/classify.py): 8 examples a class drawn from the train half (5 draws),
classify the test half; expected calibration error (10 bins) of the top probability before
(the logistic regression's own probabilities) and after (divided by the fitted temperature),
and how many test photos each default makes "unknown" (0.15 before, 0.5 after).

Collections are indexed once into ``--cache`` (default: a temporary folder) and reused.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ._common import IMAGESPACE, SHARED_DATA, header, need, row

SETS = ("flowers12", "clothing10")
PERCENTILES = (70, 80, 90, 93, 95, 97, 98, 99)
EXAMPLES = 8
DRAWS = 5


def collection_vectors(cache: Path, data: str, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    from imagespace.collection import Collection

    db = cache / f"{data}-{split}"
    folder = need(SHARED_DATA / data / split)
    subprocess.run([*IMAGESPACE, "index", str(folder), "--db", str(db), "--json"], check=True, capture_output=True)
    with Collection(db, create=False) as coll:
        ids, vecs = coll.vectors()
        rows = coll.rows(ids.tolist())
    return vecs, np.array([Path(rows[int(i)].path).parent.name for i in ids]), db


def top10_fractions(vecs: np.ndarray, labels: np.ndarray, line: float) -> tuple[float, float]:
    """(same-kind results of the 10 nearest left unmarked, other-kind results marked weak)."""
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    scores = np.take_along_axis(sims, top, 1)
    same = labels[top] == labels[:, None]
    return float((scores[same] >= line).mean()), float((scores[~same] < line).mean())


def pair_fractions(vecs: np.ndarray, labels: np.ndarray, line: float) -> tuple[float, float]:
    upper = np.triu_indices(len(vecs), 1)
    sims = (vecs @ vecs.T)[upper]
    same = (labels[:, None] == labels[None, :])[upper]
    return float((sims[same] >= line).mean()), float((sims[~same] < line).mean())


def weak_line(cache: Path) -> None:
    from imagespace.collection import Collection
    from imagespace.search.chance import PERCENTILE, measure

    header("weak line: tuning the percentile on the train halves (top-10 results of every photo)")
    balance = {p: [] for p in PERCENTILES}
    for data in SETS:
        vecs, labels, db = collection_vectors(cache, data, "train")
        with Collection(db, create=False) as coll:
            for p in PERCENTILES:
                line = measure(coll, percentile=p).value
                kept, marked = top10_fractions(vecs, labels, line)
                balance[p].append((kept + marked) / 2)
                row(f"{data}/train percentile {p}: line {line:.3f}", f"right results unmarked {kept:.3f}",
                    f"wrong results marked {marked:.3f}")
    for p in PERCENTILES:
        row(f"mean balance over both train halves, percentile {p}", f"{np.mean(balance[p]):.3f}")
    row("shipped percentile", PERCENTILE)
    header(f"weak line: reported on the test halves (percentile {PERCENTILE}, measured on each test collection)")
    for data in SETS:
        vecs, labels, db = collection_vectors(cache, data, "test")
        with Collection(db, create=False) as coll:
            line = measure(coll).value
        for name, value in ((f"line {line:.3f}", line), ("fixed 0.5 (before)", 0.5)):
            kept, marked = top10_fractions(vecs, labels, value)
            same, other = pair_fractions(vecs, labels, value)
            row(f"{data}/test {name}", f"top-10: right unmarked {kept:.3f}, wrong marked {marked:.3f}",
                f"all pairs: same-kind above {same:.3f}, two-kind below {other:.3f}")


def ece(conf: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - right[m].mean())
    return total


def calibration(cache: Path) -> None:
    from imagespace.analysis.classify import MIN_PROBABILITY, _logits, _softmax, fit_classifier
    from imagespace.analysis.labelled import LabelledSet

    header(f"classify calibration: {EXAMPLES} examples a class from train, {DRAWS} draws, reported on test")
    for data in SETS:
        vtr, ltr, _ = collection_vectors(cache, data, "train")
        vte, lte, _ = collection_vectors(cache, data, "test")
        found = {"before": [], "after": []}
        for seed in range(DRAWS):
            rng = np.random.default_rng(seed)
            pick = np.concatenate([rng.choice(np.flatnonzero(ltr == c), EXAMPLES, replace=False) for c in np.unique(ltr)])
            clf = fit_classifier(LabelledSet([""] * len(pick), list(ltr[pick]), vtr[pick], []))
            logits = _logits(clf.model, vte)
            for name, t, floor in (("before", 1.0, 0.15), ("after", clf.temperature, MIN_PROBABILITY)):
                p = _softmax(logits / t)
                conf, right = p.max(1), (clf.model.classes_[p.argmax(1)] == lte).astype(float)
                unknown = conf < floor
                found[name].append((ece(conf, right), conf.max(), float(np.median(conf)), right.mean(),
                                    unknown.sum(), (unknown & (right > 0)).sum()))
        for name, floor in (("before", 0.15), ("after", MIN_PROBABILITY)):
            e, top, med, acc, unk, unk_right = np.mean(found[name], axis=0)
            row(f"{data}/test {name}: ECE {e:.3f}", f"accuracy {acc:.3f}", f"max p {top:.2f}", f"median p {med:.2f}",
                f"unknown below {floor}: {unk:.1f} of {len(lte)} ({unk_right:.1f} rightly guessed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="folder for the indexed collections (reused)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-weak-line-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        weak_line(cache)
        calibration(cache)


if __name__ == "__main__":
    main()
