"""Analysis commands: duplicates, clusters, recommend, classify, map, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..search import MAX_K
from ._common import DEFAULT_DB, DbOption, Failure, JsonOption, app, console, emit, open_space, print_results, say

DIVERSIFIED_NOTE = (
    "Order: diversified, not by score alone. Each pick balances its score (mean cosine to the liked "
    "images, minus half its cosine to the nearest disliked one) against its likeness to the picks above it, "
    "so near-copies of one picture do not fill the list."
)


@app.command()
def duplicates(
    threshold: Annotated[
        Optional[float],
        typer.Option(
            min=-1.0,
            max=1.0,
            help="Lowest cosine similarity of the nearest neighbours that are checked. Default 0.50 with "
            "verification (each image's 10 nearest neighbours above it are compared by local features, the "
            "shape of the transform between them, their aligned pixels and EXIF capture times); 0.95 with "
            "--no-verify, where the cosine alone decides (fast, but misses cropped, rotated or mirrored "
            "copies and cannot tell a copy from a retake).",
        ),
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check candidates by local features, geometry, pixels and EXIF.")] = True,
    tier: Annotated[
        str,
        typer.Option("--tier", help="copy: files made from one picture (safe to delete all but the kept one); "
                     "retake: the same scene shot again (pick the best yourself); all: both."),
    ] = "all",
    list_out: Annotated[
        Optional[Path],
        typer.Option("--list-out", help="Write the copies that are not kept to this file, one a line: the path, a tab, "
                     "the kept file it copies, a tab, why. Only copies: never a kept file, a retake, a look-alike or a "
                     "copy that differs in a region. In names, backslash, tab, newline and other control characters "
                     "are written as escapes (\\\\, \\t, \\n, \\xHH): decode each field, e.g. with bash's printf '%b'. "
                     "Nothing is deleted."),
    ] = None,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Copies (safe to delete one) and retakes (pick the best), each explained; look-alikes are never grouped."""
    from ..analysis.duplicates import TIERS

    if tier not in TIERS:
        raise Failure(f"--tier must be one of {', '.join(TIERS)}, not {tier!r}")
    with open_space(db, create=False) as space:
        found = space.duplicate_groups(threshold, verify=verify, tier=tier)
    payload = found.to_dict()
    if list_out is not None:
        written = found.write_list(list_out)
        payload["list_out"] = str(list_out)
        payload["extra_copies"] = written

    def human(p: dict) -> None:
        c = console()
        for n, g in enumerate(p["details"], 1):
            kind = "copies" if g["tier"] == "copy" else "retakes"
            if g["tier"] == "copy":
                head = "keep the first" if not any(m["kept"] for m in g["members"][1:]) else "keep those marked keep"
            else:
                head = "the best shot first; pick yourself"
            c.print(f"group {n}: {len(g['members'])} {kind}, {head}:", highlight=False)
            for n_member, m in enumerate(g["members"]):
                if g["tier"] == "copy":
                    mark = "keep" if m["kept"] else "copy"
                else:  # a retake group only suggests: the person picks, so nothing says keep
                    mark = "best" if n_member == 0 else "shot"
                sim = f" (similarity {m['similarity']:.2f})" if m.get("similarity") is not None else ""
                c.print(f"  [{mark}] {m['path']}", highlight=False, markup=False)
                if n_member > 0:
                    c.print(f"         {m['reason']}{sim}", highlight=False, markup=False)
        c.print(f"{len(p['groups'])} groups of copies, {len(p['retakes'])} groups of retakes")
        if "list_out" in p:
            c.print(f"wrote {p['extra_copies']} copies that are not kept to {p['list_out']} (nothing was deleted)")

    emit(as_json, payload, human)


@app.command()
def clusters(
    k: Annotated[Optional[int], typer.Option("-k", "--k", min=1, max=1000, help="Number of clusters (default: chosen by silhouette).")] = None,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Clusters of similar images, labelled from their tags, most typical images first."""
    with open_space(db, create=False) as space:
        payload = space.clusters(k).to_dict()

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
    with open_space(db, create=False) as space:
        space.require_images()
        like_ids = space.ids_of(like, "--like")
        unlike_ids = space.ids_of(unlike or [], "--unlike")
        hits = space.recommend(like_ids, unlike_ids, k=k, dba=dba)
        # the scores are cosines (mean cosine to the liked images, less half the cosine to the
        # nearest disliked one): weak by the same line as a search by image
        meaning = space.searcher.judge_cosines(hits, augmented=dba)
    payload = {
        "results": [{"path": h.path, "score": round(h.score, 6), "tags": [t for t, _ in h.tags], "weak": h.weak} for h in hits],
        "order": "diversified",
        "scores": meaning.to_dict(),
    }

    def human(p: dict) -> None:
        print_results(p["results"], scores=p["scores"], note=DIVERSIFIED_NOTE if p["results"] else None)

    emit(as_json, payload, human)


@app.command()
def classify(
    train: Annotated[Path, typer.Option("--train", help="A folder with one sub-folder of example images per class.")],
    min_probability: Annotated[float, typer.Option(min=0.0, max=1.0, help="Below this top probability an image is 'unknown'. Probabilities are calibrated on your examples (cross-validated): 0.9 means right about nine times in ten, so the default 0.5 leaves 'unknown' the images whose best guess is more likely wrong than right. An image is 'unknown' too when it is farther from every example than your examples of one class are from each other; each 'unknown' says which rule applied.")] = 0.5,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Keep the labels in the collection: for --where \"label = NAME\", and as words for search --text.")] = True,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Learn your classes from labelled folders and label every image of the collection."""
    with open_space(db, create=False) as space:
        # with --save the labels serve --where "label = NAME", and the folder names become
        # words that search --text understands for this collection
        clf, predictions = space.classify(train, min_probability=min_probability, save=save)
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
        "scores": {"kind": "probability",
                   "meaning": "probability that the label is right, calibrated on your examples (cross-validated): "
                              "0.9 means right about nine times in ten",
                   "unknown_below": min_probability, "temperature": round(clf.temperature, 4)},
    }

    def human(p: dict) -> None:
        c = console()
        for r in p["predictions"]:
            why = f"  ({r['reason']})" if r.get("reason") else ""
            c.print(f"{r['label']:<20} {r['score']:.2f}  {r['path']}{why}", highlight=False, markup=False)
        cv = "n/a" if p["cv_accuracy"] is None else f"{p['cv_accuracy']:.3f}"
        c.print(f"scores: {p['scores']['meaning']}; 'unknown' below {p['scores']['unknown_below']:.2f}",
                highlight=False, markup=False)
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
    if out.suffix.lower() not in (".png", ".html", ".htm"):
        raise Failure(f"--out must end in .png or .html, not {out.name!r}")
    with open_space(db, create=False) as space:
        path = space.map(out, max_points=max_points)
    emit(as_json, {"out": str(path)}, lambda p: console().print(f"wrote the map to {p['out']}", highlight=False))


@app.command(name="eval")
def eval_(
    data: Annotated[Path, typer.Option("--data", help="A folder with one sub-folder of images per class.")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Precision@1, mAP, kNN accuracy and cluster NMI of the collection's model on a labelled folder."""
    from ..collection import DB_FILE

    if (Path(db) / DB_FILE).exists():
        with open_space(db, create=False) as space:
            metrics = space.evaluate(data)
    else:
        # No collection: measure the default model on the folder, leaving nothing behind.
        import tempfile

        with tempfile.TemporaryDirectory(prefix="imagespace-eval-") as tmp, open_space(tmp) as space:
            metrics = space.evaluate(data)

    def human(p: dict) -> None:
        console().print(
            f"{p['images']} images, {p['classes']} classes, model {p['model']}: precision@1 {p['precision_at_1']:.3f}, "
            f"mAP {p['map']:.3f}, kNN accuracy {p['knn_accuracy']:.3f}, NMI {p['nmi']:.3f}",
            highlight=False,
        )
        if p.get("warning"):
            say("warning: " + p["warning"])

    emit(as_json, metrics, human)
