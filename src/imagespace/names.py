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


# Characters that some reader takes for the end of a field or a line: tab, the ASCII line
# breaks and every other control character, and the Unicode line separators that Python's
# str.splitlines() splits on. With the backslash itself they are written as escapes, so a
# line of a tab-separated list always holds exactly its fields.
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNICODE_BREAKS = ("\x85", "\u2028", "\u2029")


def tsv_field(text: str) -> bytes:
    """``text`` (a file name, maybe not UTF-8) as one field of a tab-separated line: its exact
    bytes, except ``\\`` ``\\t`` ``\\n`` ``\\r`` written as those two-character escapes, other
    control bytes as ``\\xHH`` and U+0085, U+2028, U+2029 as ``\\uHHHH``.
    :func:`from_tsv_field` (or bash's ``printf '%b'``) gives back the exact name."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        elif ch in _UNICODE_BREAKS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out).encode("utf-8", "surrogateescape")


def from_tsv_field(field: bytes) -> str:
    """The name :func:`tsv_field` wrote (as ``os.fsdecode`` would hold it)."""
    import re

    simple = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r"}

    def one(m: re.Match) -> bytes:
        s = m.group(1)
        if s in simple:
            return simple[s]
        if s[:1] == b"x":
            return bytes([int(s[1:], 16)])
        return chr(int(s[1:], 16)).encode("utf-8")

    return re.sub(rb"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[\\tnr])", one, field).decode("utf-8", "surrogateescape")
