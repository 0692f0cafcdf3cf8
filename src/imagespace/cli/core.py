"""Core commands: index, search, export, info."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..search import MAX_K, WHERE_HELP
from ._common import DEFAULT_DB, DbOption, Failure, JsonOption, app, console, emit, open_space, print_results, say

@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (scanned recursively).")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
    model: Annotated[Optional[str], typer.Option(help="Model name or trained model folder; default: the collection's, else efficientnet-lite2.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Images per model call.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=1, max=256, help="Decoding threads (default: one per core).")] = None,
    engine: Annotated[str, typer.Option(help="Where decoding and the model run: local (threads) or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --engine ray: an existing Ray cluster (default: start a local Ray).")] = None,
    shards: Annotated[Optional[int], typer.Option(min=1, max=4096, help="Split the collection into N shards under --db (kept by later runs; serve them with serve --engine ray).")] = None,
    shard_by: Annotated[Optional[str], typer.Option(help="With --shards: hash (of each file's path; even shards) or folder (each sub-folder whole in one shard).")] = None,
    vectors: Annotated[Optional[str], typer.Option(help="A new collection's vectors: centred (default: on the collection's mean, better rankings) or raw (the network's own, comparable with shards and other raw collections). An existing collection keeps its own ('info').")] = None,
) -> None:
    """Add new, changed and removed images to the collection, incrementally."""
    if engine not in ("local", "ray"):
        raise typer.BadParameter("--engine must be local or ray")
    if shard_by not in (None, "hash", "folder"):
        raise typer.BadParameter("--shard-by must be hash or folder")
    if vectors not in (None, "centred", "raw"):
        raise typer.BadParameter("--vectors must be centred or raw")
    from ..sharding import is_sharded

    if shards is not None or shard_by is not None or is_sharded(db):
        if vectors == "centred":
            raise typer.BadParameter("a sharded collection's vectors are raw: its shards answer one query vector together")
        _index_sharded(paths, db, as_json, model, batch_size, workers, engine, address, shards, shard_by)
        return
    from ..images import IMAGE_EXTENSIONS

    with open_space(db, model=model) as space:
        progress = sys.stderr.isatty() or not as_json
        report = space.index(paths, batch_size=batch_size, workers=workers, progress=progress, engine=engine, address=address,
                             vectors=vectors)
        total = len(space)

    def human(r: dict) -> None:
        c = console()
        rate = f" ({r['images_per_second']:.1f} images/s)" if r["embedded"] else ""
        c.print(
            f"added {r['added']}, updated {r['updated']}, moved {r['moved']}, removed {r['removed']}, "
            f"unchanged {r['unchanged']}, failed {len(r['failed'])} in {r['seconds']:.1f}s{rate}; "
            f"the collection at {Path(db).resolve()} holds {total} images",
            highlight=False, markup=False,
        )
        if not r["found"]:
            c.print(f"no image files found in {', '.join(map(str, paths))} (looked for {' '.join(sorted(IMAGE_EXTENSIONS))})",
                    highlight=False, markup=False)
        for f in r["failed"]:
            again = " (unchanged since it failed: not retried)" if f.get("retried") is False else ""
            c.print(f"  failed {f['path']}: {f['error']}{again}", highlight=False, markup=False)

    emit(as_json, report.to_dict(), human)


def _index_sharded(paths, db, as_json, model, batch_size, workers, engine, address, shards, shard_by) -> None:
    """``index --shards N``: N ordinary collections under --db, each kept up to date (sharding.py)."""
    from ..collection import DB_FILE
    from ..sharding import ShardLayout, index_sharded

    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise Failure(f"no such file or folder: {', '.join(map(str, missing))} (nothing was indexed)")
    if ShardLayout.load(db) is None and (Path(db) / DB_FILE).exists():
        raise Failure(f"{Path(db).resolve()} holds an unsharded collection: give --shards a new --db")
    try:
        report = index_sharded(db, [str(p) for p in paths], model, shards=shards, by=shard_by, engine=engine,
                               address=address, batch_size=batch_size, workers=workers,
                               progress=sys.stderr.isatty() or not as_json)
    except ValueError as e:
        raise Failure(str(e)) from None
    payload = report.to_dict()

    def human(r: dict) -> None:
        console().print(
            f"added {r['added']}, updated {r['updated']}, moved {r['moved']}, removed {r['removed']}, "
            f"unchanged {r['unchanged']}, failed {len(r['failed'])} in {r['seconds']:.1f}s over {len(r['shards'])} shards "
            f"under {Path(db).resolve()} (" + ", ".join(f"{n}: {s['added'] + s['unchanged'] + s['updated'] + s['moved']}" for n, s in r["shards"].items()) + ")",
            highlight=False, markup=False,
        )
        for f in r["failed"]:
            console().print(f"  failed {f['path']}: {f['error']}", highlight=False, markup=False)

    emit(as_json, payload, human)


@app.command()
def search(
    image: Annotated[Optional[Path], typer.Argument(help="A query image file (need not be in the collection).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Search by words.")] = None,
    like: Annotated[Optional[Path], typer.Option("--like", help="Search by an image already in the collection.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=MAX_K, help=f"Number of results (at most {MAX_K}, as in the API).")] = 10,
    where: Annotated[Optional[str], typer.Option(help="Filter on stored fields. " + WHERE_HELP)] = None,
    min_score: Annotated[Optional[float], typer.Option(min=-1.0, max=1.0, help="Drop results scoring below this: a cosine (-1 to 1) for images, a probability (0 to 1) for --text.")] = None,
    text_model: Annotated[Optional[Path], typer.Option(help="A local CLIP model folder for open-vocabulary --text.")] = None,
    index_kind: Annotated[str, typer.Option("--index", help="auto (by size), hnsw (in memory) or ivfpq (compressed, on disk, re-ranked).")] = "auto",
    qe: Annotated[Optional[bool], typer.Option("--qe/--no-qe", help="Query expansion for IMAGE/--like: the query averaged with its top 2 neighbours orders the answer (scores stay plain cosines). Default: as the collection's pipeline says ('info'; on for centred collections).")] = None,
    dba: Annotated[bool, typer.Option("--dba/--no-dba", help="Database-side augmentation for IMAGE/--like (flowers12 mAP 0.72 -> 0.80, 0.84 with --qe); scores are then against augmented vectors.")] = False,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Images most like a query image, a stored image, or words."""
    given = [x is not None for x in (image, text, like)]
    if sum(given) != 1:
        raise typer.BadParameter("give exactly one of IMAGE, --text WORDS or --like PATH")
    from ..search import compile_where

    if where is not None:
        compile_where(where)  # a filter that cannot be read is a usage error: before any work

    with open_space(db, create=False, index_kind=index_kind) as space:
        searcher = space.searcher
        answer = searcher.query(
            image, like=like, text=text, text_model=text_model, qe=qe if text is None else False, dba=dba and text is None,
            k=k, where=where, min_score=min_score,
        )
        answer.extra["index"] = searcher.answered_by()
    payload = answer.to_dict()

    def human(p: dict) -> None:
        if p.get("understood_as"):
            say("understood as: " + ", ".join(
                c["concept"] + (f" ({_classes(c['classes'])})" if c.get("classes") else "") for c in p["understood_as"]))
        for reason in p.get("no_class", []):
            say(f"not answered: {reason}")
        print_results(p["results"], scores=p.get("scores"))
        for hint in p.get("hints", []):
            say(hint)

    emit(as_json, payload, human)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="File to write; its name says the format: .parquet, .csv (the vector as a JSON list), .jsonl, .npz (vectors with ids and paths).")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Write every row with its vector to a file: Parquet, CSV, JSON lines or NumPy .npz."""
    from ..export import ExportError, export_format

    try:
        export_format(out)
    except ExportError as e:
        raise typer.BadParameter(str(e), param_hint="--out") from None
    with open_space(db, create=False) as space:
        n = space.export(out)
    emit(as_json, {"out": str(out), "rows": n}, lambda p: console().print(f"wrote {p['rows']} rows to {p['out']}"))


@app.command()
def info(db: DbOption = DEFAULT_DB, as_json: JsonOption = False) -> None:
    """What the collection holds: folders, model, images, failures, size on disk, last run, the index and its measured recall."""
    from ..index import describe_index
    from ..index.tuning import summary as index_line

    with open_space(db, create=False) as space:
        coll = space.collection
        last = coll.last_indexed_at()
        payload = {
            "db": str(coll.root),
            "folders": coll.roots(),
            "images": len(coll),
            "model_id": coll.model_id,
            "model": coll.model_spec,
            "dim": coll.dim,
            "pipeline": {**{k: v for k, v in coll.pipeline.describe().items() if k != "mean"}, "name": coll.pipeline.name()},
            "failures": coll.failures(),
            "bytes_on_disk": coll.size_on_disk(),
            "last_indexed_at": None if last is None else datetime.fromtimestamp(last, timezone.utc).isoformat(timespec="seconds"),
            "index": describe_index(coll) if coll.dim is not None else None,
        }

    def human(p: dict) -> None:
        c = console()
        size = p["bytes_on_disk"]
        lines = [
            f"collection {p['db']}",
            f"  folders:      {', '.join(p['folders']) or 'none yet'}",
            f"  model:        {p['model']} ({p['model_id']}), {p['dim']} dimensions",
            f"  vectors:      {p['pipeline']['name']}",
            f"  images:       {p['images']}, failed files: {len(p['failures'])}",
            f"  on disk:      {_size(size['total'])} (database {_size(size['database'])})",
            f"  last indexed: {_when(p['last_indexed_at'])}",
        ]
        if p["index"]:
            lines.append(f"  index:        {index_line(p['index'])}")
        for line in lines:
            c.print(line, highlight=False, markup=False)
        for f in p["failures"]:
            c.print(f"  failed {f['path']}: {f['error']}", highlight=False, markup=False)

    emit(as_json, payload, human)


def _classes(n: int) -> str:
    return "1 class" if n == 1 else f"{n} classes"


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _when(iso: str | None) -> str:
    if iso is None:
        return "never"
    local = datetime.fromisoformat(iso).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")
