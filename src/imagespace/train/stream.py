"""Training batches decoded and augmented on the fly, in an order fixed by (seed, epoch).

A data set too large for memory is never held whole: :class:`StreamBatches` reads each
batch's images from the listing (folder, zip member, Parquet listing of local paths or
fsspec URLs), decodes and augments them in a few threads, and keeps at most ``prefetch``
batches in flight, so memory is bounded by the batch size, not by the data set.

Everything random is a pure function of where an image sits, never of a generator's
running state:

- the order of epoch ``e`` is ``permutation(seed, e)``;
- the image in slot ``j`` of global step ``s`` is augmented with ``rng(seed, e, s, j)``.

Hence a run restored at (epoch, step) continues exactly as the unbroken run would have
(nothing trains twice on the same epoch's data), :class:`ArrayBatches` (pixels already in
memory) yields the very same batches as streaming, and a global batch split over ``world``
data-parallel workers (worker ``rank`` takes slots ``rank, rank + world, ...``) is the same
global batch a single process takes.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..images import ImageError
from .data import ImageSet, ItemReader

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (n, H, W, 3) uint8 batch, rng -> batch


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def image_rng(seed: int, epoch: int, step: int, slot: int) -> np.random.Generator:
    # A separate stream from the order's: the trailing 1 keeps the two keys apart.
    return np.random.default_rng([seed, epoch, step, slot, 1])


@dataclass(frozen=True)
class BatchPlan:
    """Which training positions make up each step, and this worker's share of them.

    Full global batches only (BatchNorm dislikes a tiny last batch); ``batch_size`` is the
    global batch, split over ``world`` workers by slot.
    """

    n: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n // self.batch_size)

    def share(self, order: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, slots) of this worker's images in global step ``step``."""
        glob = order[step * self.batch_size:(step + 1) * self.batch_size]
        slots = np.arange(self.rank, len(glob), self.world)
        return glob[slots], slots


def augment_one(augment: Augment, img: np.ndarray, seed: int, epoch: int, step: int, slot: int) -> np.ndarray:
    return augment(img[None], image_rng(seed, epoch, step, int(slot)))[0]


class ArrayBatches:
    """Batches from pixels already decoded in memory: small data, and the reference that
    streaming must equal."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, plan: BatchPlan, augment: Augment):
        self.pixels, self.labels, self.plan, self.augment = pixels, labels, plan, augment
        self.failures: list[dict] = []

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        p = self.plan
        order = epoch_order(p.n, p.seed, epoch)
        for step in range(start_step, p.steps_per_epoch):
            pos, slots = p.share(order, step)
            x = np.stack([augment_one(self.augment, self.pixels[i], p.seed, epoch, step, j)
                          for i, j in zip(pos, slots)])
            yield x, np.asarray(self.labels[pos], dtype=np.int64)


class StreamBatches:
    """Batches decoded from ``ds`` (items ``index``) at ``size`` px as they are needed.

    Images that cannot be read are left out of their batch (listed in ``failures`` with the
    reason), as the in-memory path leaves them out before training.
    """

    def __init__(self, ds: ImageSet, index: np.ndarray, size: int, plan: BatchPlan, augment: Augment, *,
                 threads: int | None = None, prefetch: int = 2):
        if len(index) != plan.n:
            raise ValueError(f"the plan covers {plan.n} images, the index {len(index)}")
        self.ds, self.index, self.size, self.plan, self.augment = ds, np.asarray(index), size, plan, augment
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.prefetch = max(1, prefetch)
        self.failures: list[dict] = []
        self._failed: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._reader: ItemReader | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        p = self.plan
        order = epoch_order(p.n, p.seed, epoch)
        # The pool and the reader live as long as the source: opening a zip reads its whole
        # directory (about a second for cifar10's 60,000 members), once per thread.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="imagespace-stream")
            self._reader = ItemReader(self.ds)
        pool, reader = self._pool, self._reader
        pending: collections.deque[tuple[np.ndarray, list[Future]]] = collections.deque()
        steps = iter(range(start_step, p.steps_per_epoch))

        def one(item: int, step: int, slot: int) -> np.ndarray | None:
            try:
                img = reader.load(item, self.size)
            except ImageError as e:
                self._fail(reader.display(item), str(e))
                return None
            return augment_one(self.augment, img, p.seed, epoch, step, slot)

        def submit() -> bool:
            step = next(steps, None)
            if step is None:
                return False
            pos, slots = p.share(order, step)
            items = self.index[pos]
            pending.append((self.ds.labels[items], [pool.submit(one, int(i), step, int(j)) for i, j in zip(items, slots)]))
            return True

        try:
            while len(pending) < self.prefetch and submit():
                pass
            while pending:
                labels, futures = pending.popleft()
                images = [f.result() for f in futures]
                submit()  # keep ``prefetch`` batches decoding while this one trains
                keep = [k for k, im in enumerate(images) if im is not None]
                if not keep:
                    continue
                yield np.stack([images[k] for k in keep]), np.asarray(labels[keep], dtype=np.int64)
        finally:
            for _, futures in pending:  # an abandoned epoch (early stop, time limit)
                for f in futures:
                    f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._reader.close()
            self._pool = self._reader = None

    def _fail(self, path: str, error: str) -> None:
        if path not in self._failed:
            self._failed.add(path)
            self.failures.append({"path": path, "error": error})
