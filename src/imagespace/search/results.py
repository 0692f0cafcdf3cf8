"""What a query returns (:class:`Hit`), how it fails (:class:`QueryError`), and its last
step: exclude, cut at a minimum score, take a page, fetch the rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..collection import Collection, Row
from .word_concepts import hedged_tag

# The most results one query returns, in the CLI and the API alike. Beyond a thousand,
# ranks mean little and a page of results with thumbnails grows past what a browser
# holds comfortably; all rows with their vectors: `imagespace export`.
MAX_K = 1000


class QueryError(Exception):
    """A query that cannot be answered as asked (unreadable image, bad filter...)."""


@dataclass
class Hit:
    """One result: a row of the collection and its score.

    Attributes:
        id: the row's id in the collection.
        path: the image file.
        score: cosine similarity to the query (higher is closer, at most 1), or for words the
            probability of the concept (0 to 1); the answer's ``scores`` says which.
        tags: ``[(ImageNet label, probability), ...]``, best first.
        width, height: pixels.
        size: bytes.
        weak: True when the score says the image is probably not what was asked for (the
            answer's ``scores["weak_rule"]`` says by which rule); None when not judged.
    """

    id: int
    path: str
    score: float
    tags: list[tuple[str, float]]
    width: int
    height: int
    size: int
    weak: bool | None = None

    @classmethod
    def of(cls, row: Row, score: float) -> Hit:
        """The hit for ``row`` scored ``score``."""
        return cls(row.id, row.path, float(score), row.tags, row.width, row.height, row.size)

    def to_dict(self) -> dict:
        """The JSON form of ``search --json``: tags without their probabilities."""
        tag = hedged_tag(self.tags)
        return {
            "id": self.id,
            "path": self.path,
            "score": round(float(self.score), 6),
            "tags": [t for t, _ in self.tags],
            # the most specific concept the network is confident of ("flower" rather than a
            # doubtful "daisy"), or None when it is unsure of anything
            "tag": None if tag is None else {"name": tag[0], "confidence": tag[1]},
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "weak": self.weak,
        }


def finish(
    collection: Collection,
    scored: Iterable[tuple[int, float]],
    *,
    k: int,
    offset: int = 0,
    min_score: float | None = None,
    exclude: Iterable[int] = (),
) -> list[Hit]:
    """The end of every query: ranked (id, score) pairs -> hits ``offset .. offset + k``.

    Padding ids (-1) and ``exclude`` are dropped, then scores below ``min_score``; rows
    removed meanwhile are skipped.
    """
    exclude = set(exclude)
    pairs = [(int(i), float(s)) for i, s in scored if i >= 0 and int(i) not in exclude]
    if min_score is not None:
        pairs = [(i, s) for i, s in pairs if s >= min_score]
    pairs = pairs[offset : offset + k]
    rows = collection.rows(i for i, _ in pairs)
    return [Hit.of(rows[i], s) for i, s in pairs if i in rows]
