"""What every command shares: the Typer app, the --db and --json options, output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="imagespace",
    help="Turn folders of images into a searchable space of vectors, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("imagespace")
        except PackageNotFoundError:  # run from a source tree that was never installed
            v = "unknown (not installed)"
        print(f"imagespace {v}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Turn folders of images into a searchable space of vectors, offline."""


DbOption = Annotated[Path, typer.Option("--db", help="Collection folder.", envvar="IMAGESPACE_DB")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on standard output.")]
DEFAULT_DB = Path(".imagespace")


class Failure(Exception):
    """An error to report to the user as one line, exit status 1."""


def emit(as_json: bool, payload: dict, human) -> None:
    """One JSON document on standard output with --json, else ``human(payload)``."""
    if as_json:
        sys.stdout.write(json_text(payload) + "\n")
    else:
        human(payload)


def json_text(payload: dict) -> str:
    """Readable UTF-8 JSON; with file names that are not UTF-8, \\udcXX escapes instead.

    Such names are held as surrogate escapes; written raw they would make the document
    invalid UTF-8. Escaped, the document stays valid and ``os.fsencode(json.loads(...))``
    gives back the exact bytes of the name.
    """
    text = json.dumps(payload, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload)
    return text


def console():
    """Rich output that never hard-wraps a line: a path or a command stays whole to paste."""
    from rich.console import Console

    return Console(soft_wrap=True)


def tags_text(r: dict) -> str:
    """The tags cell of a result: its hedged tag when search gave one, else its top guesses."""
    if r.get("tag"):
        return f"{r['tag']['name']} {r['tag']['confidence']:.0%}"
    guesses = ", ".join(r.get("tags", [])[:3])
    return f"unsure: {guesses}" if "tag" in r else guesses


def print_results(results: list[dict], *, scores: dict | None = None, note: str | None = None) -> None:
    """Ranked results for people: a table on a terminal wide enough for every path whole;
    otherwise (piped, or too narrow) one plain line per result: path, score, tags, tab-separated.

    ``scores``: the answer's ``scores`` (what they mean, the weak rule); results whose
    ``weak`` is true are marked, and one line under them says by which rule.
    """
    from ..search.score_meaning import weak_remark

    c = console()
    weak = [r for r in results if r.get("weak")]
    if not results:
        c.print("no results")
        return
    longest = max(len(r["path"]) for r in results)
    if sys.stdout.isatty() and longest + 40 <= c.width:
        from rich.table import Table

        table = Table(show_edge=False)
        table.add_column("#", justify="right")
        table.add_column("score", justify="right", no_wrap=True)
        table.add_column("path", no_wrap=True, min_width=longest)
        table.add_column("tags", overflow="ellipsis", no_wrap=True)
        for i, r in enumerate(results, 1):
            mark = " weak" if r.get("weak") else ""
            table.add_row(str(i), f"{r['score']:.3f}{mark}", r["path"], tags_text(r))
        c.print(table, highlight=False, markup=False)
    else:
        sys.stdout.write("path\tscore\ttags\n")
        for r in results:
            sys.stdout.write(f"{r['path']}\t{r['score']:.3f}\t{tags_text(r)}\n")
        sys.stdout.flush()
    if note:
        say(note)
    if weak and scores:
        say(weak_remark(len(weak), len(results), scores))


def say(message: str) -> None:
    """A remark for people: beside a table on a terminal, on standard error when the output is
    piped (where standard output holds only the plain result lines)."""
    print(message, file=sys.stdout if sys.stdout.isatty() else sys.stderr, flush=True)


def open_space(db: Path, *, create: bool = True, **options):
    """The collection at ``--db`` as an :class:`imagespace.ImageSpace` (``create=False``: it must exist)."""
    from ..collection import DB_FILE
    from ..space import ImageSpace

    if not create and Path(db) == DEFAULT_DB and not (Path(db) / DB_FILE).exists():
        # the default: the user may well have a collection, just not in this folder
        raise Failure(
            f"no collection in this folder ({Path(db).resolve()}, the default when neither --db nor "
            f"IMAGESPACE_DB is given): give --db DIR for a collection elsewhere, or set IMAGESPACE_DB=DIR "
            f"(e.g. in your shell profile) to use it by default; to make one here, run 'imagespace index PATH'"
        )
    return ImageSpace(db, create=create, **options)
