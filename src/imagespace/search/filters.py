"""The ``--where`` language: filters on stored fields, compiled to a parameterised condition.

``width >= 1000 and not tag ~ dog``: fields, operators, and/or/not and parentheses (see
:data:`WHERE_HELP`). Values are always bound parameters, never pasted into SQL; the
condition is run by :meth:`imagespace.collection.Collection.ids_where`, the one place
that asks "which rows pass this filter".
"""

from __future__ import annotations

import re

from ..collection import Collection
from .results import QueryError


def ids_passing(collection: Collection, where: str) -> list[int]:
    """Ids of the rows of the collection's current model that pass the filter ``where``.

    Example:
        >>> ids_passing(collection, "width > 1000 and tag ~ dog")  # doctest: +SKIP
        [3, 17, 42]
    """
    condition, params = compile_where(where)
    return collection.ids_where(condition, params)


_FIELDS = {"path": "path", "size": "size", "width": "width", "height": "height", "format": "format"}
_OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE", "glob": "GLOB", "~": "~"}
_TOKEN = re.compile(
    r"""\s*(?:(?P<op>==|!=|<=|>=|=|<|>|~)|(?P<paren>[()])|(?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*")"""
    r"""|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.]))|(?P<word>[^\s()=<>!~'"]+))"""
)

WHERE_HELP = (
    "FIELD OP VALUE joined by and/or/not and parentheses. Fields: path, size (bytes), width, "
    "height, format, tag (one of the image's top ImageNet labels). Ops: = != < <= > >= like glob "
    "~ (contains). Examples: \"tag = daisy\", \"path like '/photos/2020/%'\", \"width >= 1000 and not tag ~ dog\"."
)


def compile_where(expr: str) -> tuple[str, list]:
    """Turn a filter expression into a parameterised SQL condition over ``images``.

    Only the fields and operators above are accepted; values are always bound
    parameters, never pasted into SQL.
    """
    tokens = _tokenize(expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def take():
        nonlocal pos
        tok = peek()
        pos += 1
        return tok

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
        kind, value = take()
        if kind == "paren" and value == "(":
            sql, params = parse_or()
            if take() != ("paren", ")"):
                raise QueryError(f"filter {expr!r}: missing ')'")
            return sql, params
        if kind != "word" or value not in (*_FIELDS, "tag"):
            raise QueryError(f"filter {expr!r}: expected a field ({', '.join([*_FIELDS, 'tag'])}), got {value!r}")
        field = value
        op_kind, op = take()
        op = (op or "").lower()
        if op_kind not in ("op", "word") or op not in _OPS:
            raise QueryError(f"filter {expr!r}: expected an operator after {field!r}, got {op!r}")
        val_kind, val = take()
        if val_kind not in ("str", "num", "word"):
            raise QueryError(f"filter {expr!r}: expected a value after {field} {op}")
        if field in ("size", "width", "height") and _OPS[op] not in ("LIKE", "GLOB", "~"):
            try:  # SQLite would compare a number with text without complaint, matching nothing
                val = float(val)
            except ValueError:
                raise QueryError(f"filter {expr!r}: {field} is a number, got {val!r}") from None
        sql_op = _OPS[op]
        if field == "tag":
            inner = "json_extract(t.value,'$[0]')"
            if sql_op == "~":
                cond, param = f"instr(lower({inner}), lower(?)) > 0", str(val)
            elif sql_op in ("=", "!="):
                cond, param = f"lower({inner}) = lower(?)", str(val)
            else:
                cond, param = f"{inner} {sql_op} ?", str(val)
            exists = f"EXISTS (SELECT 1 FROM json_each(images.tags) AS t WHERE {cond})"
            return (f"(NOT {exists})" if sql_op == "!=" else exists), [param]
        column = _FIELDS[field]
        if sql_op == "~":
            return f"instr(lower({column}), lower(?)) > 0", [str(val)]
        if field == "format" and sql_op in ("=", "!="):  # stored as Pillow names it: "JPEG"
            return f"lower({column}) {sql_op} lower(?)", [str(val)]
        return f"{column} {sql_op} ?", [val]

    if not tokens:
        raise QueryError("empty filter")
    try:
        sql, params = parse_or()
    except RecursionError:
        raise QueryError(f"filter is nested too deeply ({expr[:40]!r}...)") from None
    if pos != len(tokens):
        raise QueryError(f"filter {expr!r}: unexpected {tokens[pos][1]!r}")
    return sql, params


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise QueryError(f"filter {expr!r}: cannot read it from {expr[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "str":
            quote = value[0]
            value = value[1:-1].replace(quote * 2, quote)
        elif kind == "word" and value.lower() in ("and", "or", "not", "like", "glob"):
            value = value.lower()
        tokens.append((kind, value))
    return tokens
