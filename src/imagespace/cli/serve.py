"""The serve command: the REST API and the web page over one collection."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ._common import DEFAULT_DB, DbOption, Failure, app


@app.command()
def serve(
    db: DbOption = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(envvar="IMAGESPACE_TOKEN", help="Required on every API call when given (env IMAGESPACE_TOKEN)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, max=1024, help="Largest accepted upload, in MB.")] = 20.0,
    engine: Annotated[str, typer.Option(help="local (one process) or ray (a sharded collection on Ray Serve).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --engine ray: an existing Ray cluster, e.g. auto (default: start a local Ray).")] = None,
    replicas: Annotated[int, typer.Option(min=1, max=256, help="With --engine ray: replicas of each shard and of the model.")] = 1,
) -> None:
    """Serve the REST API and the web page (runs until stopped)."""
    from ..server.security import is_loopback

    if engine not in ("local", "ray"):
        raise typer.BadParameter("--engine must be local or ray")
    if not is_loopback(host) and not token:
        raise Failure(
            f"refusing to listen on {host} without a token: anyone who can reach it could read the "
            "collection. Give --token TOKEN (or set IMAGESPACE_TOKEN), or keep the default --host 127.0.0.1"
        )
    if engine == "ray":
        _serve_on_ray(db, host, port, token, max_upload_mb, address, replicas)
        return
    import uvicorn

    from ..server import create_app
    from ..sharding import is_sharded

    engine_in_process = None
    if is_sharded(db):  # every shard opened in this process: the same API, one machine
        from ..server.sharded import in_process_engine

        engine_in_process = in_process_engine(db)
    application = create_app(db, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024), warm=True,
                             engine=engine_in_process)
    shown = f"[{host}]" if ":" in host else host
    where = f"http://{shown}:{port}/" + (" (open it with /#token=TOKEN, or enter the token on the page)" if token else "")
    print(f"imagespace: serving {application.state.engine.root} at {where}; Ctrl+C stops", file=sys.stderr, flush=True)
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False, server_header=False)


def _serve_on_ray(db, host: str, port: int, token, max_upload_mb: float, address, replicas: int) -> None:
    """The sharded collection at --db on Ray Serve (server/ray_serve.py); Ray loads only here."""
    from ..sharding import is_sharded

    if not is_sharded(db):
        raise Failure(f"{db} is not a sharded collection: make one with 'imagespace index PATH... --db DIR --shards N', "
                      "or serve it without --engine ray")
    from ..server.ray_serve import serve_sharded

    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        print(f"imagespace: serving the sharded collection {db} from Ray Serve at http://{shown}:{port}/ "
              f"({replicas} replica(s) per shard); Ctrl+C stops", file=sys.stderr, flush=True)

    try:
        serve_sharded(db, host=host, port=port, address=address, replicas=replicas, token=token,
                      max_upload_bytes=int(max_upload_mb * 1024 * 1024), on_ready=ready)
    except ValueError as e:
        raise Failure(str(e)) from None
