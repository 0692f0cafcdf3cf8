"""The ``--where`` language: filters on stored fields, compiled to a parameterised condition.

``width >= 1000 and not tag ~ dog``: fields, operators, and/or/not and parentheses (see
:data:`WHERE_HELP`). Values are always bound parameters, never pasted into SQL; the
condition is run by :meth:`imagespace.collection.Collection.ids_where`, the one place
that asks "which rows pass this filter".
"""

from __future__ import annotations

import re

from ..collection import Collection
from .word_concepts import HEDGE_CONFIDENCE, tag_concept_labels
from .results import QueryError


class FilterError(QueryError):
    """A ``where`` filter that cannot be read: a usage error."""


def ids_passing(collection: Collection, where: str) -> list[int]:
    """Ids of the rows of the collection's current model that pass the filter ``where``.

    Example:
        >>> ids_passing(collection, "width > 1000 and tag ~ dog")  # doctest: +SKIP
        [3, 17, 42]
    """
    condition, params = compile_where(where)
    return collection.ids_where(condition, params)


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
