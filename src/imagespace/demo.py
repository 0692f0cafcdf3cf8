"""``make demo``: index the sample photos that scikit-image ships, then show what search finds.

Needs no network and no data beside the installed packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

QUERIES = ("chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def main(db: str = ".imagespace-demo") -> None:
    import skimage.data

    from .collection import Collection
    from .indexing import sync
    from .models import DEFAULT_MODEL, create_model
    from .search import Searcher

    out = Console()
    images = Path(skimage.data.data_dir)
    out.print(f"[bold]imagespace demo[/bold]: indexing the sample photos in {images}")
    model = create_model(DEFAULT_MODEL)
    with Collection(db) as coll:
        report = sync(coll, [str(images)], model, model_spec=DEFAULT_MODEL, progress=True).to_dict()
        out.print(
            f"added {report['added']}, unchanged {report['unchanged']}, failed {len(report['failed'])} "
            f"in {report['seconds']:.1f}s ({report['images_per_second']:.0f} images/s)"
        )
        for f in report["failed"]:
            out.print(f"  skipped {Path(f['path']).name}: {f['error']}", highlight=False)
        searcher = Searcher(coll, model)
        for name in QUERIES:
            query = images / name
            row = coll.row_by_path(query)
            tags = ", ".join(f"{t} {s:.2f}" for t, s in (row.tags[:3] if row else []))
            table = Table(title=f"{name}  (tags: {tags})", title_justify="left", show_edge=False)
            table.add_column("score", justify="right")
            table.add_column("neighbour")
            table.add_column("its tags")
            for hit in searcher.by_path(query, k=3):
                table.add_row(f"{hit.score:.3f}", Path(hit.path).name, ", ".join(t for t, _ in hit.tags[:3]))
            out.print(table)
        # A query that is not in the collection: a mirrored, shrunk, recompressed copy.
        import io

        from PIL import Image, ImageOps

        edited = ImageOps.mirror(Image.open(images / "chelsea.png").convert("RGB")).resize((200, 132))
        buf = io.BytesIO()
        edited.save(buf, "JPEG", quality=60)
        hit = searcher.by_image(buf.getvalue(), k=1)[0]
        out.print(f"\nA mirrored, shrunk JPEG copy of chelsea.png, not in the collection, finds "
                  f"[bold]{Path(hit.path).name}[/bold] at cosine {hit.score:.3f}.")
        out.print(f"\nThe collection is in {coll.root} ({len(coll)} images). Try:")
        out.print(f"  .venv/bin/imagespace search {images / 'astronaut.png'} --db {db}")
        out.print(f"  .venv/bin/imagespace search --like {images / 'horse.png'} --db {db} --json")


if __name__ == "__main__":
    main(*sys.argv[1:2])
