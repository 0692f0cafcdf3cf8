"""The integrity check: ``imagespace check [--repair]``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import DEFAULT_DB, DbOption, JsonOption, app, console, emit, open_space


@app.command()
def check(
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
    repair: Annotated[bool, typer.Option("--repair", help="Rebuild the vector index from the rows first.")] = False,
) -> None:
    """Check the database, every row's vector and the vector index; exit 1 on errors."""
    from ..index.tuning import summary
    from ..integrity import check_collection

    with open_space(db, create=False) as space:
        report = check_collection(space.collection, repair=repair)

    def human(p: dict) -> None:
        c = console()
        for line in p["repaired"]:
            c.print(f"repaired: {line}", highlight=False, markup=False)
        for f in p["errors"]:
            c.print(f"[red]error[/red] {f['kind']}: {f['message']}", highlight=False)
            for ex in f["examples"]:
                c.print(f"    {ex}", highlight=False, markup=False)
        for f in p["notices"]:
            c.print(f"notice {f['kind']}: {f['message']}", highlight=False, markup=False)
        if p.get("index"):
            c.print(f"index: {summary(p['index'])}", highlight=False, markup=False)
        verdict = "ok" if p["ok"] else f"{len(p['errors'])} kinds of error"
        index = "no index file" if p["index_entries"] is None else f"index of {p['index_entries']} vectors"
        c.print(f"{p['db']}: {p['rows']} rows of {p['dim']} dimensions, {index}: {verdict}", highlight=False, markup=False)

    emit(as_json, report.to_dict(), human)
    if not report.ok:
        raise typer.Exit(1)
