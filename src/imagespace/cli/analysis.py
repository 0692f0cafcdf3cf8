"""Analysis commands: duplicates, clusters, recommend, classify, map, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..search import MAX_K
from ._common import DEFAULT_DB, DbOption, Failure, JsonOption, app, console, emit, open_collection, print_results

DIVERSIFIED_NOTE = (
    "Order: diversified, not by score alone. Each pick balances its score (mean cosine to the liked "
    "images, minus half its cosine to the nearest disliked one) against its likeness to the picks above it, "
    "so near-copies of one picture do not fill the list."
)


def _ids_of(coll, paths: list[Path], option: str) -> list[int]:
    ids, unknown = [], []
    for p in paths:
        row = coll.row_by_path(p)
        if row is None:
            unknown.append(str(p))
        else:
            ids.append(row.id)
    if unknown:
        raise Failure(f"{option}: not in the collection (index them first): {', '.join(unknown)}")
    return ids


def _require_images(coll) -> None:
    if coll.model_id is None or len(coll) == 0:
        raise Failure(f"the collection at {coll.root} is empty: run 'imagespace index PATH --db {coll.root}' first")


@app.command()
def duplicates(
    threshold: Annotated[
        Optional[float],
        typer.Option(
            min=-1.0,
            max=1.0,
            help="Cosine similarity from which two images are candidates. Default 0.70 with verification "
            "(candidates are then confirmed by matching local features with a geometric check, mirrored "
            "too: on a flowers12 test set this found every edited copy while rejecting other photos of the "
            "same flower); 0.95 with --no-verify, where it alone decides (fast, but misses cropped, rotated "
            "or mirrored copies).",
        ),
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Confirm candidates by local features and geometry.")] = True,
    list_out: Annotated[
        Optional[Path],
        typer.Option("--list-out", help="Write the extra copies (all but the first, largest, image of each group) to this file, one path a line; nothing is deleted."),
    ] = None,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Groups of near-duplicate images (resized, recompressed, cropped, edited, mirrored copies)."""
    from ..analysis.duplicates import find_duplicates

    with open_collection(db) as coll:
        _require_images(coll)
        groups = find_duplicates(coll, threshold=threshold, verify=verify)
        rows = coll.rows(i for g in groups for i in g)
        paths = [[rows[i].path for i in g if i in rows] for g in groups]
    payload: dict = {"groups": paths}
    if list_out is not None:
        extra = [p for g in paths for p in g[1:]]
        list_out.write_text("".join(p + "\n" for p in extra), encoding="utf-8")
        payload["list_out"] = str(list_out)
        payload["extra_copies"] = len(extra)

    def human(p: dict) -> None:
        c = console()
        for n, g in enumerate(p["groups"], 1):
            c.print(f"group {n} ({len(g)} images), keep the first:", highlight=False)
            for path in g:
                c.print(f"  {path}", highlight=False, markup=False)
        c.print(f"{len(p['groups'])} groups of near-duplicates")
        if "list_out" in p:
            c.print(f"wrote {p['extra_copies']} extra copies to {p['list_out']} (nothing was deleted)")

    emit(as_json, payload, human)


@app.command()
def clusters(
    k: Annotated[Optional[int], typer.Option("-k", "--k", min=1, max=1000, help="Number of clusters (default: chosen by silhouette).")] = None,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Clusters of similar images, labelled from their tags, most typical images first."""
    from ..analysis.clusters import cluster_collection

    with open_collection(db) as coll:
        _require_images(coll)
        result = cluster_collection(coll, k=k)
        rows = coll.rows([i for c in result.clusters for i in c.ids] + result.outliers)
    payload = {
        "clusters": [{"id": c.id, "label": c.label, "paths": [rows[i].path for i in c.ids]} for c in result.clusters],
        "outliers": [rows[i].path for i in result.outliers],
        "k": result.k,
        "k_chosen_automatically": result.auto_k,
        "silhouette": None if result.silhouette is None else round(result.silhouette, 4),
    }

    def human(p: dict) -> None:
        c = console()
        for cl in p["clusters"]:
            c.print(f"[bold]{cl['id']}[/bold] {cl['label']} ({len(cl['paths'])} images)", highlight=False)
            for path in cl["paths"][:3]:
                c.print(f"    {path}", highlight=False, markup=False)
        c.print(f"{p['k']} clusters; {len(p['outliers'])} images fit none")

    emit(as_json, payload, human)


@app.command()
def recommend(
    like: Annotated[list[Path], typer.Option("--like", help="An image of the collection you like (repeat the option).")],
    unlike: Annotated[Optional[list[Path]], typer.Option("--unlike", help="An image of the collection you do not like (repeatable).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=MAX_K, help=f"Number of results (at most {MAX_K}).")] = 10,
    dba: Annotated[bool, typer.Option("--dba/--no-dba", help="Database-side augmentation: raises search mAP, but on flowers12 recommendations it did not win (9.25 vs 9.33 of 10), so it is off.")] = False,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """More images like the liked ones and unlike the disliked ones, varied, inputs excluded."""
    from ..analysis.recommend import recommend as run

    with open_collection(db) as coll:
        _require_images(coll)
        like_ids = _ids_of(coll, like, "--like")
        unlike_ids = _ids_of(coll, unlike or [], "--unlike")
        hits = run(coll, like_ids, unlike_ids, k=k, dba=dba)
    payload = {
        "results": [{"path": h.path, "score": round(h.score, 6), "tags": [t for t, _ in h.tags]} for h in hits],
        "order": "diversified",
    }

    def human(p: dict) -> None:
        print_results(p["results"], note=DIVERSIFIED_NOTE if p["results"] else None)

    emit(as_json, payload, human)


@app.command()
def classify(
    train: Annotated[Path, typer.Option("--train", help="A folder with one sub-folder of example images per class.")],
    min_probability: Annotated[float, typer.Option(min=0.0, max=1.0, help="Below this top probability an image is 'unknown'. An image is 'unknown' too when it is farther from every example than your examples of one class are from each other; each 'unknown' says which rule applied.")] = 0.15,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Keep the labels in the collection: for --where \"label = NAME\", and as words for search --text.")] = True,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Learn your classes from labelled folders and label every image of the collection."""
    from ..analysis.classify import classify_collection, save_predictions, train_classifier
    from ..user_labels import save_user_labels

    with open_collection(db) as coll:
        _require_images(coll)
        clf = train_classifier(coll, train, min_probability=min_probability)
        predictions = classify_collection(coll, clf)
        if save:
            save_predictions(coll, predictions)  # for --where "label = NAME"
            # the folder names become words that search --text understands for this collection
            save_user_labels(coll.root, clf.classes, [p for p in predictions if p.label in clf.classes])
    counts: dict[str, int] = {}
    for p in predictions:
        counts[p.label] = counts.get(p.label, 0) + 1
    payload = {
        "predictions": [p.to_dict() for p in predictions],
        "classes": clf.classes,
        "examples": clf.n_examples,
        "cv_accuracy": None if clf.cv_accuracy is None else round(clf.cv_accuracy, 4),
        "counts": counts,
        "saved": save,
    }

    def human(p: dict) -> None:
        c = console()
        for r in p["predictions"]:
            why = f"  ({r['reason']})" if r.get("reason") else ""
            c.print(f"{r['label']:<20} {r['score']:.2f}  {r['path']}{why}", highlight=False, markup=False)
        cv = "n/a" if p["cv_accuracy"] is None else f"{p['cv_accuracy']:.3f}"
        c.print(f"{len(p['classes'])} classes from {p['examples']} examples, cross-validated accuracy {cv}; "
                + ", ".join(f"{k}: {v}" for k, v in sorted(p["counts"].items())), highlight=False, markup=False)
        if p["saved"]:
            c.print("labels saved in the collection: search with --where \"label = NAME\"", highlight=False, markup=False)

    emit(as_json, payload, human)


@app.command(name="map")
def map_(
    out: Annotated[Path, typer.Option("--out", help="The map to write: a .png picture or an .html page.")],
    max_points: Annotated[int, typer.Option(min=2, max=100_000, help="Images laid out at most (a larger collection is sampled).")] = 5000,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """A 2-D map of the collection: thumbnails placed where their vectors fall."""
    from ..analysis.maps import render_map

    if out.suffix.lower() not in (".png", ".html", ".htm"):
        raise Failure(f"--out must end in .png or .html, not {out.name!r}")
    with open_collection(db) as coll:
        _require_images(coll)
        path = render_map(coll, out, max_points=max_points)
    emit(as_json, {"out": str(path)}, lambda p: console().print(f"wrote the map to {p['out']}", highlight=False))


@app.command(name="eval")
def eval_(
    data: Annotated[Path, typer.Option("--data", help="A folder with one sub-folder of images per class.")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Precision@1, mAP, kNN accuracy and cluster NMI of the collection's model on a labelled folder."""
    from ..analysis.evaluate import evaluate_folder
    from ..collection import Collection

    if (Path(db) / "collection.sqlite").exists():
        with open_collection(db) as coll:
            metrics = evaluate_folder(coll, data)
    else:
        # No collection: measure the default model on the folder, leaving nothing behind.
        import tempfile

        with tempfile.TemporaryDirectory(prefix="imagespace-eval-") as tmp, Collection(tmp, create=True) as coll:
            metrics = evaluate_folder(coll, data)

    def human(p: dict) -> None:
        console().print(
            f"{p['images']} images, {p['classes']} classes, model {p['model']}: precision@1 {p['precision_at_1']:.3f}, "
            f"mAP {p['map']:.3f}, kNN accuracy {p['knn_accuracy']:.3f}, NMI {p['nmi']:.3f}",
            highlight=False,
        )

    emit(as_json, metrics, human)
