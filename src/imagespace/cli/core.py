"""Core commands: index, search, export, info."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import DEFAULT_DB, DbOption, JsonOption, app, console, emit, open_collection

@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (scanned recursively).")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
    model: Annotated[Optional[str], typer.Option(help="Model name or trained model folder; default: the collection's, else efficientnet-lite0.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Images per model call.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=1, max=256, help="Decoding threads (default: one per core).")] = None,
    engine: Annotated[str, typer.Option(help="Where decoding and the model run: local (threads) or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --engine ray: an existing Ray cluster (default: start a local Ray).")] = None,
) -> None:
    """Add new, changed and removed images to the collection, incrementally."""
    if engine not in ("local", "ray"):
        raise typer.BadParameter("--engine must be local or ray")
    from ..models import DEFAULT_MODEL, create_model

    with open_collection(db, create=True) as coll:
        spec = model or coll.model_spec or DEFAULT_MODEL
        if model and Path(model).is_dir():
            spec = str(Path(model).resolve())
        m = create_model(spec)
        progress = sys.stderr.isatty() or not as_json
        if engine == "ray":
            from ..distributed import sync_with_ray

            report = sync_with_ray(coll, [str(p) for p in paths], m, model_spec=spec, address=address, batch_size=batch_size, progress=progress)
        else:
            report = coll.sync([str(p) for p in paths], m, model_spec=spec, batch_size=batch_size, workers=workers, progress=progress)
        total = len(coll)

    def human(r: dict) -> None:
        c = console()
        c.print(
            f"added {r['added']}, updated {r['updated']}, moved {r['moved']}, removed {r['removed']}, "
            f"unchanged {r['unchanged']}, failed {len(r['failed'])} in {r['seconds']:.1f}s "
            f"({r['images_per_second']:.1f} images/s); the collection at {Path(db).resolve()} holds {total} images"
        )
        for f in r["failed"]:
            c.print(f"  [red]failed[/red] {f['path']}: {f['error']}", highlight=False, markup=True)

    emit(as_json, report.to_dict(), human)


@app.command()
def search(
    image: Annotated[Optional[Path], typer.Argument(help="A query image file (need not be in the collection).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Search by words.")] = None,
    like: Annotated[Optional[Path], typer.Option("--like", help="Search by an image already in the collection.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=10_000, help="Number of results.")] = 10,
    where: Annotated[Optional[str], typer.Option(help="Filter on stored fields, e.g. \"tag = daisy and width > 500\".")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Drop results with a cosine similarity below this.")] = None,
    text_model: Annotated[Optional[Path], typer.Option(help="A local CLIP model folder for open-vocabulary --text.")] = None,
    index_kind: Annotated[str, typer.Option("--index", help="auto (by size), hnsw (in memory) or ivfpq (compressed, on disk, re-ranked).")] = "auto",
    qe: Annotated[bool, typer.Option("--qe/--no-qe", help="Query expansion for IMAGE/--like: the query averaged with its top 2 neighbours (flowers12 mAP 0.72 -> 0.76).")] = False,
    dba: Annotated[bool, typer.Option("--dba/--no-dba", help="Database-side augmentation for IMAGE/--like (flowers12 mAP 0.72 -> 0.80, 0.84 with --qe); scores are then against augmented vectors.")] = False,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Images most like a query image, a stored image, or words."""
    given = [x is not None for x in (image, text, like)]
    if sum(given) != 1:
        raise typer.BadParameter("give exactly one of IMAGE, --text WORDS or --like PATH")
    from ..search import Searcher

    extra: dict = {}
    with open_collection(db) as coll:
        searcher = Searcher(coll, index_kind=index_kind)
        opts = dict(k=k, where=where, min_score=min_score)
        if (qe or dba) and text is None:
            from ..analysis.rerank import reranked_search

            row_id, vector = searcher.stored_vector(like) if like is not None else (None, searcher.embed_image(image))
            exclude = {row_id} if row_id is not None else set()
            hits = reranked_search(searcher, vector, exclude=exclude, qe=qe, dba=dba, **opts)
        elif image is not None:
            hits = searcher.by_image(image, **opts)
        elif like is not None:
            hits = searcher.by_path(like, **opts)
        else:
            from ..text import search_text

            hits, extra = search_text(searcher, text, text_model=text_model, **opts)
        extra["index"] = searcher.answered_by()
    payload = {"results": [h.to_dict() for h in hits], **extra}

    def human(p: dict) -> None:
        from rich.table import Table

        if p.get("understood_as"):
            console().print("understood as: " + ", ".join(
                c["concept"] + (f" ({c['classes']} classes)" if c.get("classes") else "") for c in p["understood_as"]))
        table = Table(show_edge=False)
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("path", overflow="fold")
        table.add_column("tag")
        for i, r in enumerate(p["results"], 1):
            # the hedged tag when the network is confident of a concept, else its top guesses
            tag = f"{r['tag']['name']} {r['tag']['confidence']:.0%}" if r.get("tag") else "unsure: " + ", ".join(r["tags"][:3])
            table.add_row(str(i), f"{r['score']:.3f}", r["path"], tag)
        console().print(table)
        if not p["results"]:
            console().print("no results")

    emit(as_json, payload, human)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Write every row with its vector to a Parquet file."""
    from ..export import export_parquet

    with open_collection(db) as coll:
        n = export_parquet(coll, out)
    emit(as_json, {"out": str(out), "rows": n}, lambda p: console().print(f"wrote {p['rows']} rows to {p['out']}"))


@app.command()
def info(db: DbOption = DEFAULT_DB, as_json: JsonOption = False) -> None:
    """What the collection holds: images, model, failures, the index and its measured recall."""
    from ..index_tuning import summary as index_line
    from ..large_index import describe_index

    with open_collection(db) as coll:
        payload = {
            "db": str(coll.root),
            "images": len(coll),
            "model_id": coll.model_id,
            "model": coll.model_spec,
            "dim": coll.dim,
            "failures": coll.failures(),
            "index": describe_index(coll) if coll.dim is not None else None,
        }

    def human(p: dict) -> None:
        c = console()
        c.print(f"collection {p['db']}: {p['images']} images, model {p['model']} ({p['model_id']}), {p['dim']} dimensions")
        if p["index"]:
            c.print(f"index: {index_line(p['index'])}", highlight=False, markup=False)
        for f in p["failures"]:
            c.print(f"  failed {f['path']}: {f['error']}", highlight=False, markup=False)

    emit(as_json, payload, human)
