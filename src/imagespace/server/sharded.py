"""A sharded collection behind the same API: one :class:`ShardService` per shard, and
:class:`ShardedEngine`, the Engine the API routes call, which fans each query out to every
shard and merges the answers by score.

Nothing here knows Ray: a shard is reached through a client whose ``submit(method, ...)``
returns something with ``.result()`` (``server.ray_serve`` gives Ray Serve handles with
retries; a test may give the services themselves). Each shard is an ordinary collection
opened as an :class:`~imagespace.ImageSpace`, so a shard answers exactly as that collection
would on one machine; with exact search in every shard the merged answer is the unsharded
one.

Ids: the API's image id packs the shard and its row, ``shard * SHARD_STRIDE + row`` (as
``index.shards`` does), so an id names one image of the whole collection and stays below
2**53 (safe in JavaScript) up to 8,192 shards.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..collection import Row
from ..index.shards import SHARD_STRIDE, shard_name
from ..search import Answer, Hit, QueryError
from .engine import UPLOAD_MAX_PIXELS, IndexJob

# The collection's folders are asked for by every image and thumbnail request: from the
# shards at most this often (a re-index that adds a folder shows within this time).
ROOTS_SECONDS = 10.0

WHOLE_COLLECTION = (
    "needs every vector of the collection in one place (all pairs, or one layout), which a "
    "sharded collection exists to avoid; run it on one shard with --db DIR/shard-NNN, or on an "
    "unsharded copy"
)


class ShardUnavailable(Exception):
    """A shard with no live replica: its part of the answer is missing, so none is given."""


class NotServedFromShards(Exception):
    """A feature that needs the whole collection in one place (the message says which and why)."""


class Pending(Protocol):
    def result(self) -> Any: ...


class ShardClient(Protocol):
    def submit(self, method: str, *args, **kwargs) -> Pending: ...


def global_id(shard: int, row_id: int) -> int:
    return shard * SHARD_STRIDE + int(row_id)


def split_id(image_id: int) -> tuple[int, int]:
    """(shard number, row id in the shard) of an API image id."""
    return divmod(int(image_id), SHARD_STRIDE)


class ShardService:
    """What one shard replica holds: its shard's collection and index, opened as an ImageSpace.

    Every method answers in the shard's own row ids; :class:`ShardedEngine` makes them global.
    """

    def __init__(self, root: str | Path):
        from ..space import ImageSpace  # on the replicas only: the one-process server never needs it

        self.space = ImageSpace(root, create=False)
        self._lock = threading.Lock()  # one Searcher and one SQLite connection per replica

    def close(self) -> None:
        self.space.close()

    def query(self, vector: np.ndarray, *, k: int, where: str | None = None, min_score: float | None = None,
              exclude: tuple[int, ...] = ()) -> tuple[list[Hit], dict[int, Row]]:
        """The shard's top ``k`` for a vector, with their rows (the API shows them next: one
        round trip to the shards instead of two)."""
        with self._lock:
            if len(self.space) == 0:
                return [], {}  # an empty shard holds nothing near anything
            hits = self.space.query(vector=vector, k=k, where=where, min_score=min_score, exclude=set(exclude)).hits
            return hits, self.space.rows([h.id for h in hits])

    def text(self, text: str, *, k: int, where: str | None = None, min_score: float | None = None) -> tuple[list[Hit], dict[int, Row], dict]:
        with self._lock:
            if len(self.space) == 0:
                return [], {}, {}
            answer = self.space.query(text=text, k=k, where=where, min_score=min_score)
            return answer.hits, self.space.rows([h.id for h in answer.hits]), answer.extra

    def cosine_meaning(self) -> dict | None:
        """What this shard's image scores mean, with its own weak line (None while empty)."""
        with self._lock:
            if len(self.space) == 0:
                return None
            return self.space.searcher.judge_cosines([]).to_dict()

    def vector(self, row_id: int) -> np.ndarray | None:
        with self._lock:
            ids, vectors = self.space.vectors([row_id])
            return vectors[0] if len(ids) else None

    def rows(self, ids: list[int]) -> dict[int, Row]:
        with self._lock:
            return self.space.rows(ids)

    def page(self, offset: int, limit: int) -> list[Row]:
        with self._lock:
            return list(itertools.islice(self.space.collection.all_rows(), offset, offset + limit))

    def info(self) -> dict:
        with self._lock:
            c = self.space.collection
            return {"images": len(c), "model_id": c.model_id, "model": c.model_spec, "dim": c.dim,
                    "roots": c.roots(), "failures": len(c.failures()), "seq": c.seq}

    def warm(self) -> int:
        """Open the index now rather than on the first query; the number of vectors."""
        with self._lock:
            return len(self.space.searcher.index) if len(self.space) else 0


class EmbedService:
    """The collection's model, for uploaded queries, loaded through the ImageSpace of the first
    shard of ``shard_roots`` that holds images (a shard may be empty: every shard shares the
    model, and the ingress checks that they agree)."""

    def __init__(self, shard_roots: list[str | Path], *, threads: int | None = None):
        from ..collection import EmptyCollectionError
        from ..space import ImageSpace

        for root in shard_roots:
            self.space = ImageSpace(root, create=False, readonly=True, threads=threads)
            try:
                self.model = self.space.model
                break
            except EmptyCollectionError:
                self.space.close()
        else:
            raise EmptyCollectionError(f"no shard of {Path(shard_roots[0]).parent} holds images yet: index some first")
        self.input_size = self.model.input_size

    def close(self) -> None:
        self.space.close()

    def decode_upload(self, data: bytes) -> np.ndarray:
        """Uploaded bytes as the model's input (``ImageError`` when they are not an image)."""
        from ..images import decode

        return decode(data, size=self.input_size, max_pixels=UPLOAD_MAX_PIXELS).pixels

    def embed(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """Vectors of a batch of decoded images (each ``input_size`` square, uint8 RGB)."""
        return list(self.model.embed(np.stack(pixels)).vectors)

    def embed_upload(self, data: bytes) -> np.ndarray:
        return self.embed([self.decode_upload(data)])[0]


class InProcess:
    """A shard client that calls a service in this process (tests, and one-machine use)."""

    def __init__(self, service):
        self.service = service

    def submit(self, method: str, *args, **kwargs) -> Pending:
        value = getattr(self.service, method)(*args, **kwargs)
        return _Done(value)


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class ShardedEngine:
    """The server Engine's interface over shards: what ``server.api`` routes call.

    ``shards``: shard number -> client. ``embed``: uploaded bytes -> query vector (the model
    deployment). ``topology``: replicas per deployment for ``/api/health`` (optional).
    """

    def __init__(self, root: str | Path, shards: dict[int, ShardClient], embed: Callable[[bytes], np.ndarray], *,
                 topology: Callable[[], dict] | None = None, on_close: Callable[[], None] | None = None):
        self.root = self.db_path = Path(root)
        self._on_close = on_close
        self.shards = dict(shards)
        self._embed = embed
        self._topology = topology
        self._roots: tuple[float, list[str]] | None = None
        self._answered = threading.local()  # rows that came with this thread's last answer
        self.warmed = False

    def thumbnail_folder(self) -> Path:
        """Thumbnails are kept in the sharded collection's folder, beside its shards."""
        return self.root

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    # -- fan-out -------------------------------------------------------------------------

    def _fan(self, method: str, per_shard: dict[int, tuple[tuple, dict]] | None = None, *args, **kwargs) -> dict[int, Any]:
        """``method`` on every shard (or the shards in ``per_shard``, with their own arguments),
        all in flight at once; :class:`ShardUnavailable` if any shard has no live replica."""
        calls = per_shard if per_shard is not None else {n: (args, kwargs) for n in self.shards}
        pending = {n: self.shards[n].submit(method, *a, **kw) for n, (a, kw) in calls.items()}
        out, down = {}, []
        for n, p in pending.items():
            try:
                out[n] = p.result()
            except ShardUnavailable:
                down.append(n)
        if down:
            names = ", ".join(shard_name(n) for n in down)
            raise ShardUnavailable(
                f"{names} has no live replica ({len(self.shards) - len(down)} of {len(self.shards)} shards answer); "
                "an answer without it would be silently short, so none is given: retry shortly (Ray restarts replicas)"
            )
        return out

    def _merge(self, answers: dict[int, tuple[list[Hit], dict[int, Row]]], k: int, offset: int) -> list[Hit]:
        hits = [dataclasses.replace(h, id=global_id(n, h.id)) for n, (shard_hits, _) in answers.items() for h in shard_hits]
        hits.sort(key=lambda h: -h.score)  # stable: equal scores keep shard order
        # The routes ask for these hits' rows right after (to show them): kept for this
        # thread until its next answer, so that asking costs no second round trip.
        self._answered.rows = {global_id(n, r.id): dataclasses.replace(r, id=global_id(n, r.id))
                               for n, (_, rows) in answers.items() for r in rows.values()}
        return hits[offset: offset + k]

    # -- what the routes ask -------------------------------------------------------------

    def warm(self) -> None:
        try:
            self._fan("warm")  # the model replicas warm themselves as they start
        except Exception:  # noqa: BLE001 - warming is an optimisation; queries report real errors
            pass
        self.warmed = True

    def info(self) -> dict:
        infos = self._fan("info")
        model_ids = {i["model_id"] for i in infos.values() if i["model_id"]}
        if len(model_ids) > 1:
            raise QueryError(f"the shards were made with different models ({', '.join(sorted(model_ids))}): re-index them")
        first = next((i for i in infos.values() if i["model_id"]), next(iter(infos.values())))
        return {
            "images": sum(i["images"] for i in infos.values()),
            "model_id": first["model_id"], "model": first["model"], "dim": first["dim"],
            "roots": sorted({r for i in infos.values() for r in i["roots"]}),
            "failures": sum(i["failures"] for i in infos.values()),
            "seq": sum(i["seq"] for i in infos.values()),
            "shards": len(self.shards),
        }

    def health(self) -> dict:
        """How many shards answer (each asked once, briefly) and, from Ray Serve, how many
        replicas of each deployment run; ``images`` counts the answering shards only."""
        pending = {n: c.submit("info") for n, c in self.shards.items()}
        images, answering = 0, []
        for n, p in pending.items():
            try:
                images += p.result()["images"]
                answering.append(shard_name(n))
            except ShardUnavailable:
                pass
        topology = self._topology() if self._topology else {}
        return {"images": images, "shards": len(self.shards), "shards_answering": len(answering),
                "answering": answering, **topology}

    def seq(self) -> int:
        return self.info()["seq"]

    def roots(self) -> list[str]:
        now = time.monotonic()
        if self._roots is None or now - self._roots[0] > ROOTS_SECONDS:
            self._roots = (now, self.info()["roots"])
        return self._roots[1]

    def rows(self, ids: list[int]) -> dict[int, Row]:
        answered = getattr(self._answered, "rows", None)
        if answered is not None and all(int(i) in answered for i in ids):
            self._answered.rows = None
            return {int(i): answered[int(i)] for i in ids}
        by_shard: dict[int, list[int]] = {}
        for i in ids:
            n, local = split_id(i)
            if n in self.shards:
                by_shard.setdefault(n, []).append(local)
        if not by_shard:
            return {}
        answers = self._fan("rows", {n: ((local,), {}) for n, local in by_shard.items()})
        return {global_id(n, r.id): dataclasses.replace(r, id=global_id(n, r.id)) for n, rows in answers.items() for r in rows.values()}

    def row(self, row_id: int) -> Row | None:
        return self.rows([row_id]).get(int(row_id))

    def page_of_rows(self, offset: int, limit: int) -> list[Row]:
        """Shard after shard, each in the order its rows were added."""
        out: list[Row] = []
        for n in sorted(self.shards):
            if len(out) >= limit:
                break
            images = self._fan("info", {n: ((), {})})[n]["images"]
            if offset >= images:
                offset -= images
                continue
            page = self._fan("page", {n: ((offset, limit - len(out)), {})})[n]
            out += [dataclasses.replace(r, id=global_id(n, r.id)) for r in page]
            offset = 0
        return out

    def embed_upload(self, data: bytes) -> np.ndarray:
        return self._embed(data)

    def by_vector(self, vector: np.ndarray, *, k: int, offset: int = 0, where: str | None = None,
                  min_score: float | None = None, exclude: frozenset[int] = frozenset()) -> list[Hit]:
        local: dict[int, list[int]] = {n: [] for n in self.shards}
        for i in exclude:
            n, row = split_id(i)
            if n in local:
                local[n].append(row)
        vector = np.asarray(vector, dtype=np.float32)
        answers = self._fan("query", {n: ((vector,), {"k": k + offset, "where": where, "min_score": min_score,
                                                      "exclude": tuple(local[n])}) for n in self.shards})
        return self._merge(answers, k, offset)

    def similar(self, row: Row, **opts) -> list[Hit]:
        n, local = split_id(row.id)
        vector = self._fan("vector", {n: ((local,), {})})[n]
        if vector is None:
            raise QueryError(f"image {row.id} has not been embedded with the collection's current model yet: re-run index")
        return self.by_vector(vector, exclude=frozenset({row.id}), **opts)

    def query(self, *, vector: np.ndarray | None = None, text: str | None = None, k: int = 10, offset: int = 0,
              where: str | None = None, min_score: float | None = None) -> Answer:
        """A query by vector or by words, as the one-process Engine answers it."""
        if (vector is None) == (text is None):
            raise QueryError("give exactly one of a vector or words (text)")
        if text is not None:
            return Answer(*self.by_text(text, k=k, offset=offset, where=where, min_score=min_score))
        return Answer(self.by_vector(vector, k=k, offset=offset, where=where, min_score=min_score))

    def by_text(self, text: str, *, k: int, offset: int, where: str | None, min_score: float | None) -> tuple[list[Hit], dict]:
        """Words: each shard ranks its images by their stored concept probabilities (the same
        scale everywhere), merged by score; how the words were understood, from the first shard."""
        answers = self._fan("text", None, text, k=k + offset, where=where, min_score=min_score)
        extra = next((e for _, _, e in answers.values() if e), {})
        return self._merge({n: (hits, rows) for n, (hits, rows, _) in answers.items()}, k, offset), extra

    def cosine_meaning(self, *, by_image: bool = False) -> dict | None:
        """What image scores mean, as the first shard that holds images measures it (each shard
        marks its own hits weak by its own line). Shards are raw, so nothing is expanded
        (``by_image`` changes nothing here)."""
        meanings = self._fan("cosine_meaning")
        return next((m for _, m in sorted(meanings.items()) if m), None)

    # -- not served from shards, and why -------------------------------------------------

    def recommend(self, like: list[int], unlike: list[int], k: int) -> list[Hit]:
        raise NotServedFromShards("recommendations are not served from a sharded collection yet: they re-rank the liked "
                          "images' neighbourhoods for diversity over one index; search by a liked image instead")

    def duplicates(self, threshold: float | None):
        raise NotServedFromShards(f"duplicate detection {WHOLE_COLLECTION}")

    def duplicate_groups(self, threshold: float | None):
        raise NotServedFromShards(f"duplicate detection {WHOLE_COLLECTION}")

    def clusters(self, k: int | None):
        raise NotServedFromShards(f"clustering {WHOLE_COLLECTION}")

    def layout(self, max_points: int):
        raise NotServedFromShards(f"the map {WHOLE_COLLECTION}")

    def map_grid(self, *args, **kwargs):
        raise NotServedFromShards(f"the map {WHOLE_COLLECTION}")

    page_map = map_grid

    def job(self) -> IndexJob:
        return IndexJob()

    def start_indexing(self) -> IndexJob:
        raise NotServedFromShards("a sharded collection is indexed from the command line (imagespace index PATH --db DIR); "
                          "the shard replicas take the new rows in on their next query")


def in_process_engine(root: str | Path) -> ShardedEngine:
    """Every shard of the sharded collection at ``root`` opened in this process (``serve
    --db DIR`` without Ray): the same answers, one machine, no replicas."""
    from ..sharding import shard_folders

    folders = [f for f in shard_folders(root) if f.is_dir()]
    if not folders:
        raise ValueError(f"{root} holds no shards yet: index some images first")
    services = {int(f.name.rpartition("-")[2]): ShardService(f) for f in folders}
    embedder = EmbedService(folders)
    def close() -> None:
        for service in (*services.values(), embedder):
            service.close()

    return ShardedEngine(root, {n: InProcess(s) for n, s in services.items()}, embedder.embed_upload, on_close=close)


__all__ = ["EmbedService", "InProcess", "NotServedFromShards", "ShardService", "ShardUnavailable", "ShardedEngine", "global_id", "in_process_engine", "split_id"]
