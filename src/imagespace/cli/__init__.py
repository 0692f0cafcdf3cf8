"""The command line: parse, call the library, print. Nothing else lives here.

With ``--json`` a command prints one JSON document on standard output and nothing else;
progress and messages go to standard error. Exit status: 0 when the command did its work
(even if some files failed, they are listed), 1 when it could not (an unreadable query, a
model mismatch, an empty collection), 2 for usage errors.

Each module of this package adds its commands to the one Typer ``app``.
"""

from __future__ import annotations

import sys

from . import core  # noqa: F401 - registers the commands
from . import analysis  # noqa: F401
from . import train  # noqa: F401
from . import serve  # noqa: F401
from . import check  # noqa: F401
from . import models  # noqa: F401
from ._common import Failure, app


def _known_errors() -> tuple[type[Exception], ...]:
    from ..collection import CollectionError
    from ..images import ImageError
    from ..search import QueryError

    return (Failure, CollectionError, QueryError, ImageError, FileNotFoundError, ValueError)


def main() -> None:
    """Entry point: known errors become one line on standard error and exit status 1."""
    try:
        app()
    except _known_errors() as e:
        print(f"imagespace: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("imagespace: interrupted; the collection keeps what was committed", file=sys.stderr)
        sys.exit(130)
