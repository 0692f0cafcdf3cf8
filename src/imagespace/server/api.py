"""The REST API: each route parses, calls the library (through the Engine), and shapes JSON."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, field_validator

from ..collection import Row
from ..embed import digest_hex
from ..names import readable_path
from ..search import MAX_K, Hit
from ..search.word_concepts import hedged_tag
from .engine import Engine
from .files import CONTENT_TYPES, DEFAULT_THUMB, THUMB_SIZES, ThumbnailCache, original_bytes
from .security import COOKIE, token_matches

MAX_IDS = 1000  # MAX_K, the most results a query returns, is the library's: the same in the CLI


# -- response shapes ---------------------------------------------------------------------


class Item(BaseModel):
    id: int
    path: str
    score: float | None = None
    tags: list[str] = []
    tag: dict | None = Field(default=None, description="The most specific concept the network is confident of: {name, confidence}")
    width: int
    height: int
    size: int
    thumb: str = Field(description="URL of a 256 px thumbnail (add &size=128|512|1024)")
    weak: bool | None = Field(default=None, description="probably not what was asked for, by the answer's scores.weak_rule")

    _text_path = field_validator("path")(lambda v: readable_path(v))  # names need not be UTF-8


class Tag(BaseModel):
    label: str
    score: float


class Results(BaseModel):
    results: list[Item]
    k: int
    offset: int
    understood_as: list[dict] | None = None
    scores: dict | None = Field(default=None, description="what the scores mean: {kind, meaning, weak_rule, weak_below}")


class ImageDetails(BaseModel):
    id: int
    path: str
    size: int
    width: int
    height: int
    format: str
    tags: list[Tag]
    thumb: str
    file: str
    neighbours: list[Item]
    scores: dict | None = Field(default=None, description="what the neighbours' scores mean: {kind, meaning, weak_rule, weak_below}")

    _text_path = field_validator("path")(lambda v: readable_path(v))


class Cluster(BaseModel):
    id: int
    label: str
    size: int
    ids: list[int]
    sample: list[Item]


class Clusters(BaseModel):
    clusters: list[Cluster]
    outliers: list[int]


class DuplicateMember(BaseModel):
    id: int
    kept: bool
    reason: str = ""
    score: float | None = None
    similarity: float | None = None


class DuplicateGroup(BaseModel):
    tier: str  # copy | retake
    items: list[Item]  # the kept (or best) one first
    members: list[DuplicateMember]


class Duplicates(BaseModel):
    groups: list[list[Item]]  # copy groups, the one to keep first
    retakes: list[list[Item]] = []
    details: list[DuplicateGroup] = []


class MapPoint(BaseModel):
    id: int
    x: float
    y: float
    gx: int = Field(description="column of the image's cell in the grid (0 = left)")
    gy: int = Field(description="row of the image's cell in the grid (0 = top)")
    thumb: str


class MapRegion(BaseModel):
    label: str = Field(description="tags that tell the region's images apart")
    x: float = Field(description="where its label goes (the centre of one of its cells), in cells from the left")
    y: float = Field(description="where its label goes, in cells from the top")
    size: int
    ids: list[int] = Field([], description="the images of the region")


class MapOut(BaseModel):
    points: list[MapPoint]
    cols: int = Field(0, description="grid columns: every image has a cell of its own")
    rows: int = 0
    regions: list[MapRegion] = []


class Job(BaseModel):
    state: str
    done: int
    total: int | None
    roots: list[str]
    started_at: float | None
    finished_at: float | None
    report: dict | None
    error: str | None


class Health(BaseModel):
    status: str
    images: int
    indexing: str
    warm: bool = Field(description="models loaded and index open (serve warms them at start-up)")
    shards: dict | None = Field(default=None, description="a sharded collection (serve --engine ray): how many shards and replicas answer")


class Recommend(BaseModel):
    like: list[int] = Field(min_length=1, max_length=MAX_IDS)
    unlike: list[int] = Field(default=[], max_length=MAX_IDS)
    k: int = Field(default=24, ge=1, le=MAX_K)


class Session(BaseModel):
    token: str = Field(max_length=1000)


# -- shaping -----------------------------------------------------------------------------


def thumb_url(row: Row) -> str:
    return f"/api/images/{row.id}/thumb?v={digest_hex(row.digest)[:12]}"


def items(engine: Engine, hits: list[Hit]) -> list[Item]:
    rows = engine.rows([h.id for h in hits])
    return [
        Item(**h.to_dict(), thumb=thumb_url(rows[h.id])) for h in hits if h.id in rows
    ]


def _tag(tags) -> dict | None:
    tag = hedged_tag(tags)
    return None if tag is None else {"name": tag[0], "confidence": tag[1]}


def row_items(rows: dict[int, Row], ids) -> list[Item]:
    out = []
    for i in ids:
        r = rows.get(int(i))
        if r is not None:
            out.append(
                Item(id=r.id, path=r.path, tags=[t for t, _ in r.tags], tag=_tag(r.tags), width=r.width, height=r.height, size=r.size, thumb=thumb_url(r))
            )
    return out


def get_row(engine: Engine, row_id: int) -> Row:
    row = engine.row(row_id)
    if row is None:
        raise HTTPException(404, f"no image with id {row_id} in the collection")
    return row


# -- routes ------------------------------------------------------------------------------

K = Annotated[int, Query(ge=1, le=MAX_K, description="number of results")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="results to skip (paging)")]
Where = Annotated[str | None, Query(max_length=500, description="filter, e.g. \"tag = daisy and width > 500\"")]
MinScore = Annotated[float | None, Query(ge=-1, le=1, description="drop results scoring below this (a cosine; for words a probability)")]


def build_router(engine: Engine, thumbs: ThumbnailCache) -> APIRouter:
    r = APIRouter()

    @r.get("/health", response_model=Health, response_model_exclude_none=True)  # "shards" only when sharded
    def health() -> Health:
        sharded = engine.health() if hasattr(engine, "health") else None
        if sharded is None:
            return Health(status="ok", images=engine.info()["images"], indexing=engine.job().state, warm=engine.warmed)
        status = "ok" if sharded["shards_answering"] == sharded["shards"] else "degraded"
        return Health(status=status, images=sharded.pop("images"), indexing="idle", warm=engine.warmed, shards=sharded)

    @r.get("/info")
    def info() -> dict:
        return {**engine.info(), "indexing": engine.job().to_dict()}

    @r.get("/search", response_model=Results, summary="Search by words")
    def search_words(
        q: Annotated[str, Query(min_length=1, max_length=500, description="words")],
        k: K = 24, offset: Offset = 0, where: Where = None, min_score: MinScore = None,
    ) -> Results:
        answer = engine.query(text=q, k=k, offset=offset, where=where, min_score=min_score)
        return Results(results=items(engine, answer.hits), k=k, offset=offset, understood_as=answer.extra.get("understood_as"),
                       scores=answer.extra.get("scores"))

    @r.post("/search/image", response_model=Results, summary="Search by an uploaded image (multipart field 'file')")
    def search_image(
        file: Annotated[UploadFile, File(description="an image file")],
        k: K = 24, offset: Offset = 0, where: Where = None, min_score: MinScore = None,
    ) -> Results:
        vector = engine.embed_upload(file.file.read())
        answer = engine.query(vector=vector, k=k, offset=offset, where=where, min_score=min_score)
        return Results(results=items(engine, answer.hits), k=k, offset=offset, scores=answer.extra.get("scores"))

    @r.get("/images/{image_id}", response_model=ImageDetails, summary="An image's details and nearest neighbours")
    def image(image_id: int, k: K = 12) -> ImageDetails:
        row = get_row(engine, image_id)
        hits = engine.similar(row, k=k)
        return ImageDetails(
            id=row.id, path=row.path, size=row.size, width=row.width, height=row.height, format=row.format,
            tags=[Tag(label=t, score=s) for t, s in row.tags], thumb=thumb_url(row),
            file=f"/api/images/{row.id}/file", neighbours=items(engine, hits), scores=engine.cosine_meaning(by_image=True),
        )

    @r.get("/images/{image_id}/similar", response_model=Results, summary="Search by a stored image")
    def similar(image_id: int, k: K = 24, offset: Offset = 0, where: Where = None, min_score: MinScore = None) -> Results:
        hits = engine.similar(get_row(engine, image_id), k=k, offset=offset, where=where, min_score=min_score)
        return Results(results=items(engine, hits), k=k, offset=offset, scores=engine.cosine_meaning(by_image=True))

    @r.get("/images/{image_id}/thumb", response_class=FileResponse, summary="A JPEG thumbnail (cached)")
    def thumbnail(
        request: Request, image_id: int,
        size: Annotated[int, Query(description=f"one of {THUMB_SIZES}")] = DEFAULT_THUMB,
        v: Annotated[str | None, Query(max_length=64, description="content version, from the thumb URL")] = None,
    ):
        if size not in THUMB_SIZES:
            raise HTTPException(422, f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        row = get_row(engine, image_id)
        thumb = thumbs.get(row, size, engine.roots())
        versioned = v is not None and v == digest_hex(row.digest)[:12]
        headers = {
            "ETag": thumb.etag,
            "Cache-Control": "private, max-age=31536000, immutable" if versioned else "private, no-cache",
        }
        if thumb.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return FileResponse(thumb.path, media_type="image/jpeg", headers=headers)

    @r.get("/images/{image_id}/file", summary="The original image file, by id only")
    def original(request: Request, image_id: int) -> Response:
        row = get_row(engine, image_id)
        data = original_bytes(row, engine.roots())
        etag = f'"{row.id}-{digest_hex(row.digest)[:16]}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Content-Disposition": "inline"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=CONTENT_TYPES.get(row.format.upper(), "application/octet-stream"), headers=headers)

    @r.get("/images", response_model=list[Item], summary="Browse the collection's images, in the order they were added")
    def browse(limit: Annotated[int, Query(ge=1, le=MAX_K)] = 48, offset: Offset = 0) -> list[Item]:
        rows = engine.page_of_rows(offset, limit)
        return row_items({r.id: r for r in rows}, [r.id for r in rows])

    @r.get("/items", response_model=list[Item], summary="Several images by id")
    def some_items(ids: Annotated[str, Query(max_length=20_000, description="comma-separated ids")]) -> list[Item]:
        try:
            wanted = [int(x) for x in ids.split(",") if x.strip()][:MAX_IDS]
        except ValueError:
            raise HTTPException(422, "ids must be comma-separated integers") from None
        return row_items(engine.rows(wanted), wanted)

    @r.post("/recommend", response_model=Results, summary="More like these, less like those")
    def recommend(body: Recommend) -> Results:
        known = engine.rows(body.like + body.unlike)
        missing = [i for i in body.like + body.unlike if i not in known]
        if missing:
            raise HTTPException(404, f"no image with id {missing[0]} in the collection")
        hits = engine.recommend(body.like, body.unlike, body.k)
        return Results(results=items(engine, hits), k=body.k, offset=0, scores=engine.cosine_meaning())

    @r.get("/duplicates", response_model=Duplicates, summary="Groups of near-duplicate images")
    def duplicates(threshold: Annotated[float | None, Query(gt=0, le=1)] = None) -> Duplicates:
        explained = engine.duplicate_groups(threshold)
        rows = engine.rows([i for g in explained for i in g["ids"]])
        details = [DuplicateGroup(tier=g["tier"], items=row_items(rows, g["ids"]), members=[DuplicateMember(**m) for m in g["members"]])
                   for g in explained]
        return Duplicates(groups=[d.items for d in details if d.tier == "copy"], retakes=[d.items for d in details if d.tier == "retake"],
                          details=details)

    @r.get("/clusters", response_model=Clusters, summary="Clusters with readable labels")
    def clusters(k: Annotated[int | None, Query(ge=2, le=500)] = None) -> Clusters:
        result = engine.clusters(k)
        sample_ids = [i for c in result.clusters for i in list(c.ids)[:12]]
        rows = engine.rows(sample_ids)
        return Clusters(
            clusters=[
                Cluster(id=int(c.id), label=str(c.label), size=len(c.ids), ids=[int(i) for i in c.ids], sample=row_items(rows, list(c.ids)[:12]))
                for c in result.clusters
            ],
            outliers=[int(i) for i in result.outliers],
        )

    @r.get("/map", response_model=MapOut, summary="2-D map: coordinates scaled to [0, 1], a grid cell per image, labelled regions")
    def map_points(
        max_points: Annotated[int, Query(ge=10, le=100_000)] = 5000,
        aspect: Annotated[float, Query(ge=0.2, le=5, description="width / height of the grid (the window's)")] = 1.0,
    ) -> MapOut:
        ids, xy = engine.layout(max_points)
        if len(ids) == 0:
            return MapOut(points=[])
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        scaled = (xy - lo) / ((hi - lo).clip(min=1e-12))
        rows = engine.rows([int(i) for i in ids])
        keep = [k for k, i in enumerate(ids) if int(i) in rows]
        grid = engine.page_map(max_points, round(aspect, 1), [int(ids[k]) for k in keep], scaled[keep], [rows[int(ids[k])].tags for k in keep])
        return MapOut(
            points=[
                MapPoint(id=int(ids[k]), x=round(float(scaled[k][0]), 5), y=round(float(scaled[k][1]), 5),
                         gx=int(grid.cells[j][0]), gy=int(grid.cells[j][1]), thumb=thumb_url(rows[int(ids[k])]))
                for j, k in enumerate(keep)
            ],
            cols=grid.cols, rows=grid.rows,
            regions=[MapRegion(label=g.label, x=round(g.x, 3), y=round(g.y, 3), size=g.size,
                               ids=[int(ids[keep[j]]) for j in g.members]) for g in grid.regions],
        )

    @r.post("/index", response_model=Job, status_code=202, summary="Start indexing the collection's folders")
    def start_index() -> Job:
        return Job(**engine.start_indexing().to_dict())

    @r.get("/index", response_model=Job, summary="Progress of the indexing run")
    def index_progress() -> Job:
        return Job(**engine.job().to_dict())

    return r


def build_session_router(token: str | None) -> APIRouter:
    """Routes that work without the token: how the page learns of it and hands it over."""
    r = APIRouter()

    @r.get("/session", summary="Whether this server needs a token, and whether the caller has it")
    def session_state(request: Request) -> dict:
        ok = token is None or token_matches(request.cookies.get(COOKIE), token)
        return {"token_required": token is not None, "authenticated": ok}

    @r.post("/session", status_code=204, summary="Give the token once; the page then carries it in a cookie")
    def open_session(response: Response, body: Annotated[Session, Body()]) -> Response:
        if token is not None and not token_matches(body.token, token):
            raise HTTPException(401, "wrong token")
        response.status_code = 204
        if token is not None:
            response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", path="/")
        return response

    return r
