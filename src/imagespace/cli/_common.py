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
    from rich.console import Console

    return Console()


def open_collection(db: Path, create: bool = False):
    from ..collection import Collection

    return Collection(db, create=create)
