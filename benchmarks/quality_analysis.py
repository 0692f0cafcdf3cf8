"""Quality of the analysis features on flowers12: classify, clusters, recommend, duplicates,
query expansion / DBA, and search by words.

    python -m benchmarks.quality_analysis            # from the project root
    python -m benchmarks.quality_analysis --db DIR   # reuse a collection of flowers12

The duplicate test set is built in code (imagespace.analysis.synthetic): every flowers12
photo, plus edited copies of some of them (resized, recompressed, cropped 8-15%, rotated
4-10 degrees, brighter or darker, recoloured, mirrored, with text, with a border, and a
mix), so the other photos of each species are the distractors. flowers12 itself holds pairs of the same photo saved
twice; they are found by comparing pixels (independently of the method measured) and count
as duplicates too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imagespace.analysis.evaluate import merge_groups, pair_precision_recall, pairs_of, rerank_scores
from imagespace.analysis.synthetic import build_duplicate_set, same_scene

ROOT = Path(__file__).resolve().parents[1]
FLOWERS12 = ROOT.parent / "shared" / "data" / "flowers12"


# -- data ---------------------------------------------------------------------------------


def flowers12_files(root: Path = FLOWERS12, species: list[str] | None = None) -> list[Path]:
    files = sorted(root.glob("*/*/*.jpg"))
    return [f for f in files if species is None or f.parent.name in species]


def index_folder(folder: Path | list[Path], db: Path):
    from imagespace.collection import Collection
    from imagespace.indexing import sync
    from imagespace.models import DEFAULT_MODEL, create_model

    coll = Collection(db, create=True)
    model = create_model(DEFAULT_MODEL)
    roots = folder if isinstance(folder, list) else [folder]
    sync(coll, [str(p) for p in roots], model, model_spec=DEFAULT_MODEL)
    return coll


def _labels_of(coll) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids, vectors = coll.vectors()
    rows = coll.rows(ids.tolist())
    species = np.array([Path(rows[i].path).parent.name for i in ids.tolist()])
    split = np.array([Path(rows[i].path).parent.parent.name for i in ids.tolist()])
    return ids, vectors, species, split


# -- measurements -------------------------------------------------------------------------


def measure_classify(coll, root: Path = FLOWERS12) -> dict:
    from imagespace.analysis.classify import classify_collection, train_classifier

    t0 = time.perf_counter()
    clf = train_classifier(coll, root / "train")
    preds = classify_collection(coll, clf)
    test = [p for p in preds if Path(p.path).parent.parent.name == "test"]
    correct = sum(p.label == Path(p.path).parent.name for p in test)
    unknown = sum(p.label == "unknown" for p in test)
    return {
        "test_accuracy": correct / len(test),
        "test_images": len(test),
        "unknown": unknown,
        "cv_accuracy": clf.cv_accuracy,
        "seconds": time.perf_counter() - t0,
    }


def measure_clusters(coll) -> dict:
    from sklearn.metrics import normalized_mutual_info_score

    from imagespace.analysis.clusters import cluster_collection

    t0 = time.perf_counter()
    result = cluster_collection(coll)
    ids, _, species, _ = _labels_of(coll)
    assigned = np.array([result.assignment[int(i)] for i in ids])
    outlier = set(result.outliers)
    keep = np.array([int(i) not in outlier for i in ids])
    return {
        "k": result.k,
        "nmi": float(normalized_mutual_info_score(species, assigned)),
        "nmi_without_outliers": float(normalized_mutual_info_score(species[keep], assigned[keep])),
        "outliers": len(outlier),
        "labels": [c.label for c in result.clusters],
        "seconds": time.perf_counter() - t0,
    }


def measure_recommend(coll, *, dba: bool, seed: int = 0) -> dict:
    from imagespace.analysis.recommend import recommend

    ids, _, species, split = _labels_of(coll)
    rng = np.random.default_rng(seed)
    hits_per_species = {}
    for s in sorted(set(species)):
        pool = ids[(species == s) & (split == "train")]
        liked = [int(i) for i in rng.choice(pool, 3, replace=False)]
        got = recommend(coll, liked, k=10, dba=dba)
        hits_per_species[s] = sum(Path(h.path).parent.name == s for h in got)
    values = list(hits_per_species.values())
    return {"mean_hits_of_10": float(np.mean(values)), "min_hits_of_10": int(min(values)), "per_species": hits_per_species}


def measure_rerank(coll) -> dict:
    """Test photos as queries against the training photos: mAP, precision@1 and @10."""
    _, vectors, species, split = _labels_of(coll)
    train, test = split == "train", split == "test"
    return rerank_scores(vectors[test], species[test], vectors[train], species[train])


def measure_duplicates(work: Path, files: list[Path], copies: int) -> dict:
    from imagespace.analysis.duplicates import duplicate_report

    truth = build_duplicate_set(work / "dupset", files, copies)
    t0 = time.perf_counter()
    coll = index_folder(work / "dupset", work / "dupdb")
    index_seconds = time.perf_counter() - t0

    def named(groups):
        rows = coll.rows(i for g in groups for i in g)
        return [{rows[i].path for i in g} for g in groups]

    out = {"images": len(coll), "true_pairs": len(pairs_of(truth)), "index_seconds": index_seconds}
    # Pairs found by a method but not in the constructed truth are looked at by pixels: the
    # same photo cropped at another offset joins the truth (counted as "recropped_in_flowers12").
    checked: dict[tuple[str, str], bool] = {}
    runs = [("cosine>=0.95 only", dict(verify=False)), ("candidates>=0.70 only", dict(threshold=0.70, verify=False)), ("default (candidates + verification)", {})]
    reports = {name: duplicate_report(coll, **kw) for name, kw in runs}
    true = pairs_of(truth)
    for name, rep in reports.items():
        extra = pairs_of(named(rep.groups)) - true
        if len(extra) <= 400:  # the unverified 0.70 run finds thousands of daisies: no need to look
            for pair in extra:
                if pair not in checked:
                    checked[pair] = same_scene(*pair)
    recropped = [set(p) for p, same in checked.items() if same]
    truth = merge_groups(truth + recropped)
    out["true_pairs"] = len(pairs_of(truth))
    out["recropped_in_flowers12"] = len(recropped)
    for name, rep in reports.items():
        p, r, npred, _ = pair_precision_recall(named(rep.groups), truth)
        out[name] = {"precision": p, "recall": r, "predicted_pairs": npred, "stats": rep.stats}
    coll.close()
    return out


def measure_text(coll, queries=("daisy", "a bee on a flower", "flowers in a pot", "sunflower", "a yellow flower")) -> dict:
    from imagespace.search import QueryError, Searcher

    searcher = Searcher(coll)
    out = {}
    for q in queries:
        try:
            answer = searcher.query(text=q, k=20)
            hits, extra = answer.hits, answer.extra
        except QueryError as e:
            out[q] = {"error": str(e)}
            continue
        species = [Path(h.path).parent.name for h in hits]
        out[q] = {
            "understood_as": [(c["concept"], c["score"]) for c in extra["understood_as"]],
            "top20_species": {s: species.count(s) for s in sorted(set(species), key=lambda s: -species.count(s))},
        }
    # "daisy" is an ImageNet class: how well do the classifier rows find flowers12's daisies,
    # against ranking by the stored top-5 tags?
    ids, vectors, species, _ = _labels_of(coll)
    from imagespace.models.labels import imagenet_labels
    from imagespace.search.text import classifier_rows

    rows = classifier_rows(coll)
    daisy = imagenet_labels().index("daisy")
    by_row = np.argsort(-(vectors @ rows[daisy]))
    tag_prob = []
    info = coll.rows(ids.tolist())
    for i in ids.tolist():
        tag_prob.append(dict(info[i].tags).get("daisy", 0.0))
    by_tag = np.argsort(-np.asarray(tag_prob), kind="stable")
    truth = species == "daisy"
    out["daisy precision@20/@80"] = {
        "classifier row on GeM vector": (float(truth[by_row[:20]].mean()), float(truth[by_row[:80]].mean())),
        "stored top-5 tag probability": (float(truth[by_tag[:20]].mean()), float(truth[by_tag[:80]].mean())),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an existing collection of flowers12 (default: build one in a temporary folder)")
    parser.add_argument("--copies", type=int, default=110, help="edited copies in the duplicate test set")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: classify clusters recommend rerank text duplicates")
    args = parser.parse_args(argv)
    if not (FLOWERS12 / "train").is_dir():
        print(f"skipped: {FLOWERS12} is absent (real data lives beside the project, in ../shared/data)")
        return 0
    with tempfile.TemporaryDirectory(prefix="imagespace-quality-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        coll = index_folder(FLOWERS12, args.db or work / "flowers12")
        print(f"flowers12 collection: {len(coll)} images ({time.perf_counter() - t0:.1f}s)", flush=True)
        parts = {
            "classify": lambda: measure_classify(coll),
            "clusters": lambda: measure_clusters(coll),
            "recommend": lambda: {"dba": measure_recommend(coll, dba=True), "plain": measure_recommend(coll, dba=False)},
            "rerank": lambda: measure_rerank(coll),
            "text": lambda: measure_text(coll),
            "duplicates": lambda: measure_duplicates(work, flowers12_files(), args.copies),
        }
        for name, run in parts.items():
            if name in args.skip:
                continue
            t = time.perf_counter()
            result = run()
            print(f"\n=== {name} ({time.perf_counter() - t:.1f}s) ===")
            _print(result)
            sys.stdout.flush()
        coll.close()
    return 0


def _print(value, indent: int = 2) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict):
                print(f"{pad}{k}:")
                _print(v, indent + 2)
            else:
                print(f"{pad}{k}: {_fmt(v)}")
    else:
        print(pad + _fmt(value))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


if __name__ == "__main__":
    os.environ.setdefault("IMAGESPACE_THREADS", "2")
    sys.exit(main())
