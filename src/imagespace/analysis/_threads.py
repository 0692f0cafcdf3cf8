"""One thread for the numeric libraries inside analysis calls.

The problems here are small (thousands of vectors); BLAS and OpenMP thread pools cost more
than they give on them, and on a busy machine they thrash: training the classifier on
flowers12 took 47 s with the default pools and 2.2 s with one thread, on 2 loaded cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def worker_threads() -> int:
    """Threads for work that releases the GIL (image decoding, OpenCV): one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


@contextmanager
def single_threaded() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # sklearn depends on it; without it, run as configured
        yield
        return
    with threadpool_limits(limits=1):
        yield
