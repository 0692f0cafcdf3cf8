"""Hints for a ``--where`` filter that matched nothing: a tag or label that no image has.

``--where "tag = dgo"`` is a valid filter that simply matches no image; answered with "no
results" alone, a typing error looks like an empty collection. When a ``tag =`` or ``label =``
condition matches no image by itself, the answer says so and names the closest tag or label
that images do have ("no image is tagged 'dgo'; did you mean 'dog'?"). Tags offered are the
collection's stored tags and the general concepts above them ("dog" above "beagle"), which
``tag =`` accepts too.
"""

from __future__ import annotations

from ..collection import Collection
from .word_concepts import HEDGE_MAX_CLASSES, wordnet
from .filters import _tokenize, ids_passing
from .tag_postings import tag_postings

MAX_DISTANCE = 2  # edits (a swap of two letters is one) for a "did you mean"


def where_hints(collection: Collection, where: str) -> list[str]:
    """One sentence per ``tag =`` / ``label =`` condition of ``where`` that no image passes."""
    hints = []
    for field, value in _equalities(where):
        quoted = "'" + value.replace("'", "''") + "'"
        if ids_passing(collection, f"{field} = {quoted}"):
            continue
        if field == "tag":
            known = _tag_words(collection)
            hint = f"no image is tagged {value!r}"
        else:
            known = sorted({label for label, _ in collection.saved_labels().values()})
            if not known:
                hints.append(f"no image has a label yet: 'imagespace classify --train DIR' gives them ({value!r} matched nothing)")
                continue
            hint = f"no image is labelled {value!r}"
        close = closest(value, known)
        hints.append(hint + (f"; did you mean {close!r}?" if close else ""))
    return hints


def closest(word: str, known: list[str]) -> str | None:
    """The known word fewest edits from ``word`` (at most ``MAX_DISTANCE``), else None."""
    w = word.lower()
    best, best_d = None, MAX_DISTANCE + 1
    for k in known:
        if abs(len(k) - len(w)) > MAX_DISTANCE:
            continue
        d = _edits(w, k.lower())
        if d < best_d or (d == best_d and best is not None and len(k) < len(best)):
            best, best_d = k, d
    return best if best_d <= min(MAX_DISTANCE, max(1, len(w) // 3)) else None


def _equalities(where: str) -> list[tuple[str, str]]:
    tokens = _tokenize(where)
    out = []
    for (k1, field, _), (k2, op, _), (k3, value, _) in zip(tokens, tokens[1:], tokens[2:]):
        if k1 == "word" and field in ("tag", "label") and k2 == "op" and op in ("=", "==") and k3 in ("word", "str", "num"):
            out.append((field, value))
    return out


def _tag_words(collection: Collection) -> list[str]:
    """The collection's tag names and the concepts above them (as ``tag =`` understands them)."""
    net = wordnet()
    names = [str(n) for n in tag_postings(collection).names.tolist()]
    index = {label.lower(): i for i, label in enumerate(net.labels)}
    words = set(names)
    for n in names:
        if n in index:
            for synset in net.ancestors[index[n]][1:]:
                if len(net.classes_under(synset)) > HEDGE_MAX_CLASSES:
                    break
                words.add(net.name[synset].lower())
    return sorted(words)


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]
