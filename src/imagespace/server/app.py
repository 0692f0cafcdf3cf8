"""The FastAPI application: ``create_app(db_path, token=None)``.

The page (``/``, ``/static/app.js``, ``/static/style.css``) is three fixed files read from
the package; nothing else on disk is reachable by URL. The API lives under ``/api``; its
schema is at ``/openapi.json``. Errors are JSON ``{"detail": message}``, never a trace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..collection import CollectionError
from ..images import ImageError
from ..search import QueryError
from .api import build_router, build_session_router
from .engine import Busy, Engine
from .files import SourceRefused, ThumbnailCache
from .sharded import NotServedFromShards, ShardUnavailable
from .security import LOCAL_HOSTS, GuardMiddleware, require_token

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024

log = logging.getLogger("imagespace.server")

# Library errors and what they mean over HTTP.
ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (ImageError, 415),  # an upload that is not a readable image
    (QueryError, 422),  # a bad filter, a query that cannot be answered as asked
    (Busy, 409),
    (CollectionError, 409),  # empty (EmptyCollectionError), locked by another run, wrong model
    (SourceRefused, 404),
    (NotServedFromShards, 501),  # needs the whole collection in one place (server.sharded says why)
    (ShardUnavailable, 503),  # a shard with no live replica (server.ray_serve): retry shortly
]


def create_app(
    db_path: str | os.PathLike[str],
    token: str | None = None,
    *,
    allowed_hosts: tuple[str, ...] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    warm: bool = False,
    engine: Engine | None = None,
) -> FastAPI:
    """The app over the collection at ``db_path``.

    ``token``: required on every ``/api`` route when given. ``allowed_hosts``: the host names
    requests may address; by default only loopback names when there is no token (a server
    without a token must be local), any host when there is one. ``warm``: open the index
    and load the model in the background at start-up, so that the first query is fast.
    ``engine``: what answers, if not one process's :class:`Engine` over ``db_path`` (the
    sharded collection on Ray Serve gives a ``sharded.ShardedEngine``).
    """
    engine = engine if engine is not None else Engine(db_path)
    thumbs = ThumbnailCache(engine.thumbnail_folder())
    if allowed_hosts is None and token is None:
        allowed_hosts = LOCAL_HOSTS

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if warm:
            threading.Thread(target=engine.warm, name="imagespace-warm", daemon=True).start()
        yield
        engine.close()

    app = FastAPI(
        title="imagespace",
        version=__version__,
        description="Search a collection of images by words, by image and by example; duplicates, clusters, a map.",
        docs_url=None,  # the interactive docs load scripts from a CDN: not on an offline tool
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(
        GuardMiddleware,
        max_body=max_upload_bytes,
        allowed_hosts=tuple(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None,
    )
    app.include_router(build_session_router(token), prefix="/api", tags=["session"])
    app.include_router(build_router(engine, thumbs), prefix="/api", tags=["api"], dependencies=[Depends(require_token(token))])
    _add_error_handlers(app)
    _add_static(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "not found"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return JSONResponse({"detail": message, "errors": errors}, status_code=422)

    for exc_type, status in ERROR_STATUS:
        app.add_exception_handler(exc_type, _library_error(status))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("error while answering %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; the server's log has the details"}, status_code=500)


def _library_error(status: int):
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        message = str(exc)
        if isinstance(exc, ImageError):
            message = f"the upload is not an image this server can read: {exc}"
        return JSONResponse({"detail": message}, status_code=status)

    return handler


def _add_static(app: FastAPI) -> None:
    """The page's three files, from memory, revalidated by ETag; no other path is served."""
    files: dict[str, tuple[bytes, str, str]] = {}
    for name, media_type in STATIC_FILES.items():
        data = (STATIC_DIR / name).read_bytes()
        files[name] = (data, media_type, '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"')

    def serve(name: str, request: Request) -> Response:
        data, media_type, etag = files[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        return serve("index.html", request)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, request: Request) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404, "not found")
        return serve(name, request)
