"""Files written whole or not at all.

Every file the package writes for later (indexes, caches, checkpoints, exports, maps) is
written to a temporary file beside it and then renamed over it: a reader, another process,
or the next run after a crash sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: str | os.PathLike[str], *, suffix: str = "", per_thread: bool = False) -> Path:
    """``NAME.PID.tmpSUFFIX`` beside ``path``: the process id tells ``check --repair`` whether
    the writer is still alive; ``per_thread`` for files written from several threads at once."""
    path = Path(path)
    writer = f"{os.getpid()}.{threading.get_ident()}" if per_thread else str(os.getpid())
    return path.with_name(f"{path.name}.{writer}.tmp{suffix}")


@contextmanager
def atomic_write(path: str | os.PathLike[str], *, suffix: str = "", per_thread: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; ``path`` is replaced by it when the
    block ends, and it is removed if the block fails.

    Args:
        path: the file to write.
        suffix: an ending the writer insists on (``np.save`` adds ``.npy`` to a name without it).
        per_thread: a temporary name of this thread's own (writers in several threads).

    Example:
        >>> with atomic_write("vectors.npy", suffix=".npy") as tmp:  # doctest: +SKIP
        ...     np.save(tmp, vectors)
    """
    tmp = temporary_name(path, suffix=suffix, per_thread=per_thread)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the replace; a failed write's leftovers


def write_text_atomic(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path``'s content with ``text`` in one step (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
