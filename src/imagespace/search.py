"""Queries over a collection: by image, by a stored image, by vector, with filters.

Scores are cosine similarities between L2-normalised vectors of one model, so they mean
the same thing across queries and a ``min_score`` cut-off is meaningful.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .collection import Collection, CollectionError, Row
from .concepts import HEDGE_CONFIDENCE, hedged_tag, tag_concept_labels
from .index import EXACT_LIMIT, VectorIndex


# The most results one query returns, in the CLI and the API alike. Beyond a thousand,
# ranks mean little and a page of results with thumbnails grows past what a browser
# holds comfortably; all rows with their vectors: `imagespace export`.
MAX_K = 1000
# Below this cosine, a neighbour is shown as a weak match. EfficientNet-Lite0's pooled
# features put unrelated photos at about 0.25-0.45 of each other (the demo's sample photos:
# 0.27-0.43 between a cat, a coffee cup and a rocket); on the flowers12 test photos 93% of
# the pairs of one kind score 0.5 or more (but so do 37% of pairs of two kinds of flower).
WEAK_MATCH = 0.5


class QueryError(Exception):
    """A query that cannot be answered as asked (unreadable image, bad filter...)."""


class FilterError(QueryError):
    """A ``where`` filter that cannot be read: a usage error."""


@dataclass
class Hit:
    id: int
    path: str
    score: float
    tags: list[tuple[str, float]]
    width: int
    height: int
    size: int

    def to_dict(self) -> dict:
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
        }


class Searcher:
    """Answers queries over one collection; the model is loaded only for image queries."""

    def __init__(self, collection: Collection, model=None, index_kind: str = "auto"):
        if collection.model_id is None or len(collection) == 0:
            raise CollectionError(f"the collection at {collection.root} is empty: index some images first")
        self.collection = collection
        self._model = model
        if model is not None:
            collection.check_model(model.model_id)
        self._index: VectorIndex | None = None
        self.index_kind = index_kind  # auto | hnsw | ivfpq: see large_index.open_index

    @property
    def model(self):
        if self._model is None:
            from .models import create_model

            self._model = create_model(self.collection.model_spec)
            self.collection.check_model(self._model.model_id)
        return self._model

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            from .large_index import open_index

            self._index = open_index(self.collection, self.index_kind)
        return self._index

    def answered_by(self) -> dict:
        """The index that answered this searcher's queries: kind, search settings and the
        recall it measured on the collection (``exact`` when none was opened)."""
        if self._index is None:
            return {"kind": "exact", "vectors": len(self.collection), "settings": {}, "recall_at_10": 1.0}
        return self._index.describe()

    def refresh(self) -> None:
        """Catch up with rows written since the index was opened (e.g. by an indexing run)."""
        if self._index is not None and self._index.seq != self.collection.seq and not self._index._catch_up():
            self._index = None  # no longer matches the rows: reopened (rebuilt) on next use

    # -- query vectors -------------------------------------------------------------------

    def embed_image(self, image: str | os.PathLike[str] | bytes) -> np.ndarray:
        from .images import ImageError, decode, read_bytes

        try:
            data = image if isinstance(image, bytes) else read_bytes(image)
            decoded = decode(data, size=self.model.input_size)
        except ImageError as e:
            name = "the uploaded image" if isinstance(image, bytes) else str(image)
            raise QueryError(f"cannot read query image {name}: {e}") from None
        return self.model.embed(decoded.pixels[None]).vectors[0]

    def stored_vector(self, path: str | os.PathLike[str]) -> tuple[int, np.ndarray]:
        row = self.collection.row_by_path(path)
        if row is None:
            raise QueryError(f"{path} is not in the collection (index it first, or search by the image file itself)")
        ids, vecs = self.collection.vectors([row.id])
        if not len(ids):
            raise QueryError(f"{path} has not been embedded with the collection's current model yet: re-run index")
        return row.id, vecs[0]

    # -- queries -------------------------------------------------------------------------

    def by_image(self, image, **kw) -> list[Hit]:
        return self.by_vector(self.embed_image(image), **kw)

    def by_path(self, path, **kw) -> list[Hit]:
        row_id, vec = self.stored_vector(path)
        exclude = set(kw.pop("exclude", ())) | {row_id}
        return self.by_vector(vec, exclude=exclude, **kw)

    def by_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        where: str | None = None,
        min_score: float | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
        offset: int = 0,
    ) -> list[Hit]:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.collection.dim:
            raise QueryError(f"query vector has {vector.shape[0]} dimensions, the collection {self.collection.dim}")
        want = k + offset + len(exclude)
        if where:
            ids, scores = self._filtered(vector, want, where)
        else:
            ids, scores = self._nearest(vector, want)
        pairs = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and int(i) not in exclude]
        if min_score is not None:
            pairs = [(i, s) for i, s in pairs if s >= min_score]
        pairs = pairs[offset : offset + k]
        rows = self.collection.rows(i for i, _ in pairs)
        return [_hit(rows[i], s) for i, s in pairs if i in rows]

    def _nearest(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = self.index.search(vector[None], k)
        return ids[0], scores[0]

    def _filtered(self, vector: np.ndarray, k: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        sql, params = compile_where(where)
        allowed = [
            r[0]
            for r in self.collection.conn.execute(
                f"SELECT id FROM images WHERE model=? AND ({sql})", [self.collection.model_id, *params]
            )
        ]
        if len(allowed) <= EXACT_LIMIT:
            return exact_search(vector, *self.collection.vectors(allowed), k)
        # Many rows pass the filter: ask the graph for more until enough of them pass.
        allowed_set = set(allowed)
        n = len(self.index)
        fetch = max(k * 4, 64)
        while True:
            ids, scores = self._nearest(vector, fetch)
            keep = np.array([int(i) in allowed_set for i in ids], dtype=bool)
            if keep.sum() >= k or fetch >= n:
                return ids[keep][:k], scores[keep][:k]
            fetch = min(n, fetch * 4)


def exact_search(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if not len(ids):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = vectors @ query
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return ids[top], scores[top]


def _hit(row: Row, score: float) -> Hit:
    return Hit(row.id, row.path, score, row.tags, row.width, row.height, row.size)


# -- filters -----------------------------------------------------------------------------

# The label a `classify` run gave the image (see Collection.save_labels); NULL if never classified.
_LABEL = "(SELECT label FROM labels WHERE labels.id = images.id)"
_FIELDS = {"path": "path", "size": "size", "width": "width", "height": "height", "format": "format", "label": _LABEL}
WHERE_FIELDS = (*_FIELDS, "tag")
_OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE", "glob": "GLOB", "~": "~"}
_TOKEN = re.compile(
    r"""\s*(?:(?P<op>==|!=|<=|>=|=|<|>|~)|(?P<paren>[()])|(?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")"""
    r"""|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.]))|(?P<word>[^\s()=<>!~'"]+))"""
)

WHERE_SYNTAX = (
    "A filter is FIELD OP VALUE, joined by and/or/not and parentheses; fields: path, size (bytes), "
    "width, height (pixels), format (jpeg, png...), tag (one of the image's top ImageNet labels; a "
    "general concept such as 'flower' or 'dog' matches images whose classes under it sum to a confident "
    "probability), label (given by 'imagespace classify'); ops: = != < <= > >= like glob ~ (contains)"
)
WHERE_HELP = (
    WHERE_SYNTAX + ". Examples: \"tag = daisy and width >= 1000\", \"path like '%/2020/%' and not tag ~ dog\"."
)


def compile_where(expr: str) -> tuple[str, list]:
    """Turn a filter expression into a parameterised SQL condition over ``images``.

    Only the fields and operators above are accepted; values are always bound
    parameters, never pasted into SQL. A filter that cannot be read raises
    :class:`FilterError` saying what is missing and where.
    """
    tokens = _tokenize(expr)
    pos = 0
    fields = ", ".join(WHERE_FIELDS)

    def peek():
        return tokens[pos][:2] if pos < len(tokens) else (None, None)

    def take():
        nonlocal pos
        tok = peek()
        pos += 1
        return tok

    def where_now() -> str:
        """Where the parser stands, for messages: after the last token read."""
        if pos - 1 < len(tokens) and pos >= 1:
            kind, value, at = tokens[pos - 1]
            if kind is not None:
                return f"at character {at + 1}"
        return "at the end"

    def fail(what: str) -> FilterError:
        return FilterError(f"filter {expr!r}: {what}. {WHERE_SYNTAX}")

    def parse_or():
        sql, params = parse_and()
        while peek() == ("word", "or"):
            take()
            s2, p2 = parse_and()
            sql, params = f"({sql} OR {s2})", params + p2
        return sql, params

    def parse_and():
        sql, params = parse_not()
        while peek() == ("word", "and"):
            take()
            s2, p2 = parse_not()
            sql, params = f"({sql} AND {s2})", params + p2
        return sql, params

    def parse_not():
        if peek() == ("word", "not"):
            take()
            sql, params = parse_not()
            return f"(NOT {sql})", params
        return parse_atom()

    def parse_atom():
        before = tokens[pos - 1][1] if 0 < pos <= len(tokens) else None
        kind, value = take()
        if kind == "paren" and value == "(":
            sql, params = parse_or()
            if take() != ("paren", ")"):
                raise fail("a '(' is never closed: add ')'")
            return sql, params
        if kind is None:
            raise fail(f"a condition is missing after {before!r} at the end" if before else "a condition is missing")
        if kind != "word" or value not in WHERE_FIELDS:
            raise fail(f"expected a field ({fields}) {where_now()}, got {value!r}")
        field = value
        op_kind, op = take()
        op = (op or "").lower()
        if op_kind not in ("op", "word") or op not in _OPS:
            got = "nothing" if op_kind is None else repr(op)
            raise fail(f"expected an operator ({' '.join(_OPS)}) after {field!r}, got {got}")
        val_kind, val = take()
        if val_kind not in ("str", "num", "word"):
            got = "nothing" if val_kind is None else repr(val)
            raise fail(f"expected a value after {field!r} {op}, got {got}")
        if field in ("size", "width", "height") and _OPS[op] not in ("LIKE", "GLOB", "~"):
            try:  # SQLite would compare a number with text without complaint, matching nothing
                val = float(val)
            except ValueError:
                raise fail(f"{field} is a number, got {val!r}") from None
        sql_op = _OPS[op]
        if field == "tag":
            inner = "json_extract(t.value,'$[0]')"
            if sql_op == "~":
                cond, param = f"instr(lower({inner}), lower(?)) > 0", str(val)
            elif sql_op in ("=", "!="):
                cond, param = f"lower({inner}) = lower(?)", str(val)
                under = tag_concept_labels(str(val))
                if under is not None:
                    # a concept ("flower", "dog"): the stored probabilities of its classes,
                    # summed, reach the confidence of a hedged tag
                    summed = (
                        f"(SELECT coalesce(sum(json_extract(t.value,'$[1]')), 0) FROM json_each(images.tags) AS t "
                        f"WHERE lower({inner}) IN ({','.join('?' * len(under))})) >= ?"
                    )
                    return (f"(NOT {summed})" if sql_op == "!=" else summed), [*under, HEDGE_CONFIDENCE]
            else:
                cond, param = f"{inner} {sql_op} ?", str(val)
            exists = f"EXISTS (SELECT 1 FROM json_each(images.tags) AS t WHERE {cond})"
            return (f"(NOT {exists})" if sql_op == "!=" else exists), [param]
        column = _FIELDS[field]
        text_like = field in ("format", "label")  # format as Pillow names it ("JPEG"); labels as typed
        if sql_op == "~":
            return f"instr(lower({column}), lower(?)) > 0", [str(val)]
        if text_like and sql_op in ("=", "!="):
            if field == "label" and sql_op == "!=":  # images never classified are "not daisy" too
                return f"coalesce(lower({column}), '') != lower(?)", [str(val)]
            return f"lower({column}) {sql_op} lower(?)", [str(val)]
        return f"{column} {sql_op} ?", [val]

    if not tokens:
        raise FilterError(f"empty filter. {WHERE_SYNTAX}")
    try:
        sql, params = parse_or()
    except RecursionError:
        raise FilterError(f"filter is nested too deeply ({expr[:40]!r}...)") from None
    if pos < len(tokens):
        kind, value, at = tokens[pos]
        hint = " (join conditions with 'and' or 'or')" if kind == "word" and value in WHERE_FIELDS else ""
        raise fail(f"unexpected {value!r} at character {at + 1}{hint}")
    return sql, params


def _tokenize(expr: str) -> list[tuple[str, str, int]]:
    """(kind, value, start) per token; start is the character where the token begins."""
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise FilterError(f"filter {expr!r}: cannot read it from character {pos + 1} ({expr[pos:]!r}). {WHERE_SYNTAX}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "str":
            quote = value[0]
            value = value[1:-1].replace(quote * 2, quote)
        elif kind == "word" and value.lower() in ("and", "or", "not", "like", "glob"):
            value = value.lower()
        tokens.append((kind, value, m.start(kind)))
    return tokens
