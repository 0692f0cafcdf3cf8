"""A sharded collection served from Ray Serve: ``imagespace serve --db DIR --engine ray``.

Three kinds of deployment, all reusing the one-machine pieces:

- ``ingress``: the same FastAPI app as ``serve`` (``server.app.create_app``), with a
  :class:`~imagespace.server.sharded.ShardedEngine` in place of the one-process Engine; the
  routes, page, errors and token checks are the same code.
- ``model``: the collection's model (through an ImageSpace), decoding uploads and embedding
  them; concurrent queries are batched across requests (``serve.batch``).
- ``shard-NNN``: one deployment per shard, ``--replicas`` replicas each; a replica opens only
  its shard's collection and index, as an ImageSpace (``sharded.ShardService``).

A query is embedded once, sent to every shard at once, and the top k merged by score.

Faults: a call whose replica dies (SIGKILL, a lost node) is sent again, to another replica
of the same deployment (Serve's router drops the dead one and Ray starts a new one), for up
to :data:`RETRY_SECONDS`; a shard with no live replica by then makes the request fail with
503 and a message naming the shard, never a silently shorter list.

Ray is imported only here, and only inside functions: ``serve`` without ``--engine ray``
never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..index.shards import shard_name
from ..sharding import shard_folders
from .sharded import EmbedService, ShardedEngine, ShardService, ShardUnavailable

APP_NAME = "imagespace"
# How long a call keeps trying other replicas after its replica died or stopped answering:
# long enough for Serve to notice a dead replica and start another (its health checks run
# every HEALTH_CHECK_SECONDS).
RETRY_SECONDS = 30.0
HEALTH_CHECK_SECONDS = 2.0
# Ray's logical CPUs per replica. Fractions, because on a small machine whole CPUs per
# replica make Ray wait forever for CPUs it has not got (DESIGN.md, pitfalls); a shard
# search takes a millisecond or so of one thread, the model the rest.
SHARD_CPUS = 0.1
MODEL_CPUS = 0.25
INGRESS_CPUS = 0.25
# ONNX Runtime threads per model replica: one query image is small work; more queries are
# answered by more replicas and by batching, not by more threads per image.
MODEL_THREADS = 1
BATCH_SIZE = 16
BATCH_WAIT_SECONDS = 0.004

log = logging.getLogger("imagespace.server")


# -- calls with retries -------------------------------------------------------------------


class ServeClient:
    """A deployment handle whose calls go to another replica when theirs dies."""

    def __init__(self, handle, name: str, retry_seconds: float = RETRY_SECONDS):
        self.handle = handle
        self.name = name
        self.retry_seconds = retry_seconds
        self.retried = 0  # calls sent again after their replica died (shown in /api/health)

    def submit(self, method: str, *args, **kwargs) -> _Pending:
        return _Pending(self, method, args, kwargs)

    def call(self, method: str, *args, **kwargs):
        return self.submit(method, *args, **kwargs).result()


class _Pending:
    def __init__(self, client: ServeClient, method: str, args: tuple, kwargs: dict):
        self.client, self.method, self.args, self.kwargs = client, method, args, kwargs
        self.retries = 0
        self._send()

    def _send(self) -> None:
        self.response = getattr(self.client.handle, self.method).remote(*self.args, **self.kwargs)

    def result(self):
        from ray import exceptions as ray_errors
        from ray.serve import exceptions as serve_errors

        retryable = (ray_errors.RayActorError, ray_errors.ObjectLostError, ray_errors.WorkerCrashedError,
                     ray_errors.NodeDiedError, serve_errors.DeploymentUnavailableError,
                     serve_errors.ReplicaUnavailableError, serve_errors.BackPressureError, TimeoutError)
        deadline = time.monotonic() + self.client.retry_seconds
        while True:
            try:
                return self.response.result(timeout_s=max(0.5, deadline - time.monotonic()))
            except ray_errors.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, retryable):
                    error: Exception = cause
                elif isinstance(cause, Exception):
                    raise cause from None  # the replica's own answer (a bad filter...), as it raised it
                else:
                    raise
            except retryable as e:
                error = e
            if time.monotonic() >= deadline:
                raise ShardUnavailable(f"{self.client.name}: no replica answered within {self.client.retry_seconds:.0f}s "
                                       f"({type(error).__name__})") from None
            self.retries += 1
            self.client.retried += 1
            log.warning("%s.%s: %s; trying another replica", self.client.name, self.method, type(error).__name__)
            time.sleep(min(0.05 * 2 ** min(self.retries, 5), 1.0))
            self._send()


# -- the deployments (classes made on demand, so that importing this module needs no Ray) --


def _deployments(replicas: int, model_replicas: int):
    from ray import serve

    common = {"health_check_period_s": HEALTH_CHECK_SECONDS, "health_check_timeout_s": 30.0,
              "graceful_shutdown_timeout_s": 2.0}

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": SHARD_CPUS}, max_ongoing_requests=32, **common)
    class Shard(ShardService):
        def pid(self) -> int:
            return os.getpid()

    @serve.deployment(num_replicas=model_replicas, ray_actor_options={"num_cpus": MODEL_CPUS}, max_ongoing_requests=32, **common)
    class Model:
        def __init__(self, shard_roots: list[str]):
            self.service = EmbedService(shard_roots, threads=MODEL_THREADS)
            self.service.embed([np.zeros((self.service.input_size,) * 2 + (3,), dtype=np.uint8)])  # ONNX Runtime's first run

        async def embed_upload(self, data: bytes) -> np.ndarray:
            pixels = await asyncio.to_thread(self.service.decode_upload, data)
            return await self._embed(pixels)

        @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_SECONDS)
        async def _embed(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
            return await asyncio.to_thread(self.service.embed, pixels)

        def pid(self) -> int:
            return os.getpid()

    class Ingress:
        def __init__(self, root: str, shards: list, model, token: str | None, max_upload_bytes: int):
            self.root, self.token, self.max_upload_bytes = root, token, max_upload_bytes
            self.shards = {n: ServeClient(h, shard_name(n)) for n, h in enumerate(shards)}
            self.model = ServeClient(model, "model")

        def __serve_build_asgi_app__(self):
            from .app import create_app

            def serving() -> dict:
                clients = [*self.shards.values(), self.model]
                return {**topology(), "retried_calls": {c.name: c.retried for c in clients}}

            engine = ShardedEngine(self.root, self.shards, lambda data: self.model.call("embed_upload", data), topology=serving)
            return create_app(self.root, token=self.token, max_upload_bytes=self.max_upload_bytes, warm=True, engine=engine)

    ingress = serve.deployment(serve.ingress(None)(Ingress), name="ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": INGRESS_CPUS}, max_ongoing_requests=256, **common)
    return Shard, Model, ingress


def topology() -> dict:
    """Replicas of each deployment, by state, as Ray Serve's controller sees them."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    out: dict = {"replicas": {}}
    if app is None:
        return out
    for name, d in app.deployments.items():
        states = {getattr(k, "value", str(k)).lower(): int(v) for k, v in d.replica_states.items() if v}
        out["replicas"][name] = {"running": states.get("running", 0), "states": states}
    return out


def build_app(db: str | Path, *, replicas: int = 1, model_replicas: int | None = None, token: str | None = None,
              max_upload_bytes: int = 20 * 1024 * 1024):
    """The Serve application for the sharded collection at ``db`` (``index --shards``)."""
    folders = shard_folders(db)
    if not folders:
        raise ValueError(f"{db} holds no shards: make them with 'imagespace index PATH... --db {db} --shards N'")
    missing = [f.name for f in folders if not f.is_dir()]
    if missing:
        raise ValueError(f"{db} lacks {', '.join(missing)}: index it again ('imagespace index PATH... --db {db}')")
    shard, model, ingress = _deployments(replicas, model_replicas or replicas)
    shards = [shard.options(name=f.name).bind(str(f.resolve())) for f in folders]
    return ingress.bind(str(Path(db).resolve()), shards, model.options(name="model").bind([str(f.resolve()) for f in folders]),
                        token, max_upload_bytes)


def logical_cpus(shards: int, replicas: int, model_replicas: int) -> float:
    """Ray's logical CPUs that the deployments ask for."""
    return INGRESS_CPUS + model_replicas * MODEL_CPUS + shards * replicas * SHARD_CPUS


def serve_sharded(db: str | Path, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  replicas: int = 1, model_replicas: int | None = None, token: str | None = None,
                  max_upload_bytes: int = 20 * 1024 * 1024, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM: a local Ray (or the cluster at ``address``), Serve's
    HTTP proxy on ``host:port``, the application :func:`build_app` makes."""
    import ray
    from ray import serve

    model_replicas = model_replicas or replicas
    app = build_app(db, replicas=replicas, model_replicas=model_replicas, token=token, max_upload_bytes=max_upload_bytes)
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray counts CPUs for placement only: a replica mostly waits. Enough logical CPUs that
        # every replica is placed, however many shards one machine holds.
        need = logical_cpus(len(shard_folders(db)), replicas, model_replicas)
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), **kwargs)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING", "enable_access_log": False})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        if on_ready is not None:
            on_ready()
        stop.wait()
    finally:
        try:
            serve.delete(APP_NAME) if address else serve.shutdown()
        finally:
            ray.shutdown()


__all__ = ["APP_NAME", "ServeClient", "build_app", "serve_sharded", "topology"]
