"""Where exported models live: a per-user cache, never inside a collection."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..atomic import write_text_atomic


def cache_dir() -> Path:
    root = os.environ.get("IMAGESPACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imagespace"
    )
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: str | os.PathLike[str], length: int = 16) -> str:
    """sha256 of a file, remembered in the cache by (path, size, mtime): hashing the 18 MB
    of weights took a third of a query's cold start."""
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir() / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return memo[key][:length]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if not isinstance(memo, dict) or len(memo) > 1000:
        memo = {}
    memo[key] = digest
    try:  # atomic: concurrent processes see a whole file or none
        write_text_atomic(memo_path, json.dumps(memo))
    except OSError:
        pass
    return digest[:length]


def text_digest(*parts: str, length: int = 16) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:length]
