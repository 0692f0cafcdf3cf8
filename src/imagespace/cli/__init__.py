"""The command line: parse, call the library, print. Nothing else lives here.

With ``--json`` a command prints one JSON document on standard output and nothing else;
progress and messages go to standard error. Exit status: 0 when the command did its work
(even if some files failed, they are listed), 1 when it could not (an unreadable query, a
model mismatch, an empty collection), 2 for usage errors.

Each module of this package adds its commands to the one Typer ``app``.
"""

from __future__ import annotations

import logging
import sys

import typer

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
    """Entry point: known errors become one line on standard error and exit status 1; usage
    errors (bad options, a bad --where filter) one line and exit status 2."""
    from ..search import FilterError

    _show_library_messages()
    try:
        status = app(standalone_mode=False)
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help, as before
            e.ctx.info_name = "imagespace"
            print(e.ctx.get_help(), file=sys.stderr)
        else:
            print(f"imagespace: usage error: {_usage_message(e)}", file=sys.stderr)
        sys.exit(2)
    except _ClickException as e:
        print(f"imagespace: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("imagespace: aborted", file=sys.stderr)
        sys.exit(1)
    except FilterError as e:
        print(f"imagespace: usage error: {e}", file=sys.stderr)
        sys.exit(2)
    except _known_errors() as e:
        print(f"imagespace: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("imagespace: interrupted; the collection keeps what was committed", file=sys.stderr)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


def _show_library_messages() -> None:
    """The library reports through ``logging`` (loggers under "imagespace") and prints
    nothing itself; the command line shows those messages on standard error, one line each,
    as "imagespace: ..." (never on standard output: --json keeps it to one document)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("imagespace: %(message)s"))
    logger = logging.getLogger("imagespace")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# Typer vendors click and exports only BadParameter; its bases are the errors we catch.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_message(e) -> str:
    """One line: the problem, then where to read more (not click's three-line box)."""
    message = " ".join(e.format_message().split())
    command = e.ctx.command_path.split()[-1] if e.ctx is not None and e.ctx.parent is not None else None
    more = f"imagespace {command} --help" if command else "imagespace --help"
    return f"{message} (see '{more}')"
