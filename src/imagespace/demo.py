"""``make demo``: index the sample photos that scikit-image ships, then show what search finds.

Needs no network and no data beside the installed packages.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

QUERIES = ("chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


SCORES = (
    "Scores are {meaning}; about 0.9 is an edited copy. Marked {rule}. The sample photos hold one "
    "picture of most things, so most of their neighbours are weak: they are the least unlike, not matches."
)


def command_prefix() -> str:
    """How to run imagespace from here, as a person would type it: the console script beside
    this Python (relative when it is under the current folder, as `make demo`'s .venv is)."""
    script = Path(sys.executable).parent / "imagespace"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m imagespace"
    try:
        rel = script.relative_to(Path.cwd())
        return shlex.quote(str(rel) if str(rel).startswith(".") else f"./{rel}")
    except ValueError:
        return shlex.quote(str(script))


def try_commands(db: str | os.PathLike[str], images: Path) -> list[str]:
    """Commands to paste next: each one line, every path quoted for the shell."""
    run, at = command_prefix(), shlex.quote(str(db))
    return [
        f"{run} search {shlex.quote(str(images / 'astronaut.png'))} --db {at}",
        f"{run} search --like {shlex.quote(str(images / 'horse.png'))} --db {at} --json",
        f"{run} info --db {at}",
    ]


def main(db: str = ".imagespace-demo") -> None:
    import skimage.data

    from .collection import Collection
    from .indexing import sync
    from .models import DEFAULT_MODEL, create_model
    from .search import Searcher

    out = Console(soft_wrap=True)  # lines are never hard-wrapped: paths and commands paste whole
    images = Path(skimage.data.data_dir)
    out.print(f"[bold]imagespace demo[/bold]: indexing the sample photos in {images}")
    model = create_model(DEFAULT_MODEL)
    with Collection(db) as coll:
        report = sync(coll, [str(images)], model, model_spec=DEFAULT_MODEL, progress=True).to_dict()
        rate = f" ({report['images_per_second']:.0f} images/s)" if report["embedded"] else ""
        out.print(
            f"added {report['added']}, unchanged {report['unchanged']}, failed {len(report['failed'])} "
            f"in {report['seconds']:.1f}s{rate}", highlight=False,
        )
        for f in report["failed"]:
            again = " (unchanged since it failed: not retried)" if f.get("retried") is False else ""
            out.print(f"  skipped {Path(f['path']).name}: {f['error']}{again}", highlight=False, markup=False)
        searcher = Searcher(coll, model)
        meaning = searcher.judge_cosines([])
        out.print("\n" + SCORES.format(meaning=meaning.meaning, rule=meaning.weak_rule), highlight=False)
        for name in QUERIES:
            query = images / name
            row = coll.row_by_path(query)
            tags = ", ".join(f"{t} {s:.2f}" for t, s in (row.tags[:3] if row else []))
            out.print(f"\n[bold]{name}[/bold]  (tags: {tags})", highlight=False)
            table = Table(show_edge=False)
            table.add_column("score", justify="right", no_wrap=True)
            table.add_column("neighbour", no_wrap=True)
            table.add_column("its tags", no_wrap=True, overflow="ellipsis")
            for hit in searcher.query(like=query, k=3).hits:
                mark = " weak" if hit.weak else ""
                table.add_row(f"{hit.score:.3f}{mark}", Path(hit.path).name, ", ".join(t for t, _ in hit.tags[:3]))
            out.print(table)
        # A query that is not in the collection: a mirrored, shrunk, recompressed copy.
        import io

        from PIL import Image, ImageOps

        edited = ImageOps.mirror(Image.open(images / "chelsea.png").convert("RGB")).resize((200, 132))
        buf = io.BytesIO()
        edited.save(buf, "JPEG", quality=60)
        hit = searcher.query(buf.getvalue(), k=1).hits[0]
        out.print(f"\nA mirrored, shrunk JPEG copy of chelsea.png, not in the collection, finds "
                  f"[bold]{Path(hit.path).name}[/bold] at cosine {hit.score:.3f}.")
        out.print(f"\nThe collection is in {coll.root} ({len(coll)} images). Try:", highlight=False)
        for command in try_commands(db, images):
            out.print(f"  {command}", highlight=False, markup=False)


if __name__ == "__main__":
    main(*sys.argv[1:2])
