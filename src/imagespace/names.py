"""File names as text. On Linux a name is bytes and need not be UTF-8; Python holds the bytes
that are not as surrogate escapes (``os.fsdecode``), which UTF-8 encoders refuse.

``readable_path`` gives valid UTF-8 text for showing a name (JSON over HTTP, Parquet
strings): the odd bytes appear as ``\\xNN``. The exact bytes are ``os.fsencode(path)``.
"""

from __future__ import annotations


def is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def readable_path(path: str) -> str:
    """``path`` as valid UTF-8 text; bytes that are not UTF-8 become ``\\xNN``."""
    if is_utf8(path):
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
