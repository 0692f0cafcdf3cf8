"""Words to ImageNet concepts through WordNet, and tags that hedge.

The network's 1,000 classes are WordNet 3.0 noun synsets, so a word means the classes its
synset covers: "dog" is the 118 breeds under dog, "bird" 59 classes, "car" ten. A word for a
thing ImageNet has no class for means the classes of its nearest classed ancestors
("kangaroo" -> wallaby, "deer" -> the ruminants, "sunflower" -> the flowers). An image is
then ranked by the probability the network gave that concept: the sum of its classes' stored
probabilities.

Everything comes from ``imagespace/data/wordnet-imagenet.json.gz``, derived once from WordNet 3.0 by
``tools/build_wordnet.py`` (see that script and ``imagespace/data/WORDNET-LICENSE``): the run time needs
no WordNet installation, no PyTorch and no sentence model, and loads in about 40 ms.

This module knows words and classes only; ranking rows is ``text.py``'s job.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources

DATA_FILE = "wordnet-imagenet.json.gz"
# A tag climbs from the top class to its ancestors until their summed probability reaches this.
HEDGE_CONFIDENCE = 0.5
# Ancestors this general say nothing a user would tag with ("entity", "object", "whole"...):
# a hedged tag never climbs above this many classes.
HEDGE_MAX_CLASSES = 150

# Words about the picture, not what it shows; dropped from the front of a query.
_LEADING = re.compile(
    r"^(?:(?:a|an|the|some|my|our)\s+)?(?:(?:photo|photograph|picture|image|pic|shot|snapshot)s?\s+of\s+)?",
    re.IGNORECASE,
)
_STOP = {"a", "an", "the", "some", "any", "my", "our", "your", "this", "that", "these", "those", "of"}
# Words that never name a concept alone inside a query ("vintage timepiece on a wrist").
_WITHIN_STOP = _STOP | {"on", "in", "at", "with", "by", "for", "to", "from", "near", "under", "over", "i", "it", "is"}
# "X or Y", "X, Y", "X / Y", "X and Y": each part is a concept and the query means any of them.
_SPLIT = re.compile(r"\s*(?:,|;|/|&|\bor\b|\band\b|\+)\s*", re.IGNORECASE)
# WordNet's morphy rules for nouns (after noun.exc): plural suffix -> singular suffix.
_SUFFIXES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"), ("s", ""))


@dataclass(frozen=True)
class Concept:
    """What one part of a query was understood as."""

    word: str  # the words as matched (after dropping articles, singular)
    name: str  # WordNet's name of the concept (or the user's label)
    classes: tuple[int, ...]  # ImageNet class indices it covers
    how: str  # "names" (the classes under it), "near" (its nearest classes), "user" (a label of the collection)
    synset: int | None = None  # WordNet offset of the sense used

    def to_dict(self, labels: list[str]) -> dict:
        d = {"concept": self.name, "word": self.word, "how": self.how, "classes": len(self.classes)}
        if self.how != "user":
            d["examples"] = [labels[i] for i in self.classes[:5]]
        return d


@dataclass(frozen=True)
class Understanding:
    concepts: list[Concept]
    unknown: list[str]  # query parts no concept matched
    # query parts whose usual sense no class covers: (word, what that sense is a kind of)
    without_class: list[tuple[str, str]] = field(default_factory=list)

    def without_class_text(self) -> list[str]:
        """Why those parts were not answered, one sentence each."""
        return [f"{word!r} usually means a kind of {kind}, and none of the 1,000 ImageNet classes this model "
                f"knows is one (its rarer senses, which classes are near, were not used)"
                for word, kind in self.without_class]


class WordNet:
    """The shipped WordNet extract: words -> synsets -> ImageNet classes, and back up."""

    def __init__(self, data: dict):
        self.offsets: list[int] = data["classes"]
        self.labels: list[str] = data["labels"]
        self.class_of_offset = {o: i for i, o in enumerate(self.offsets)}
        self.name = {int(k): v[0] for k, v in data["tree"].items()}
        self.parents = {int(k): v[1] for k, v in data["tree"].items()}
        self._words: str = data["words"]
        self.exceptions: dict[str, str] = data["exceptions"]

    @cached_property
    def _children(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for s, parents in self.parents.items():
            for p in parents:
                children.setdefault(p, []).append(s)
        return children

    def classes_under(self, synset: int) -> tuple[int, ...]:
        """Class indices of ``synset`` and every synset under it, in class order."""
        return self._classes_under(synset)

    @lru_cache(maxsize=4096)  # noqa: B019 - one WordNet per process (see wordnet())
    def _classes_under(self, synset: int) -> tuple[int, ...]:
        found, todo, seen = set(), [synset], set()
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            if s in self.class_of_offset:
                found.add(self.class_of_offset[s])
            todo.extend(self._children.get(s, ()))
        return tuple(sorted(found))

    def tree_ancestors(self, synset: int) -> set[int]:
        """``synset`` (if in the tree) and every ancestor of it."""
        seen, todo = set(), [synset]
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(self.parents.get(s, ()))
        return seen

    @cached_property
    def ancestors(self) -> list[list[int]]:
        """Per class index: its synset and every ancestor, nearest first (breadth first)."""
        out = []
        for o in self.offsets:
            order, seen, frontier = [], set(), [o]
            while frontier:
                nxt = []
                for s in frontier:
                    if s not in seen:
                        seen.add(s)
                        order.append(s)
                        nxt.extend(self.parents.get(s, ()))
                frontier = nxt
            out.append(order)
        return out

    # -- words ---------------------------------------------------------------------------

    def senses(self, word: str) -> list[tuple[int, tuple[int, ...]]]:
        """(synset, nearest tree synsets or ()) per sense of ``word`` exactly, most frequent first."""
        key = "\n" + word + "\t"
        at = self._words.find(key)
        if at < 0:
            return []
        line = self._words[at + len(key) : self._words.find("\n", at + 1)]
        out = []
        for sense in line.split():
            if sense.startswith("?"):
                continue  # the word's usual sense names no class (see usual_sense_without_class)
            synset, _, near = sense.partition(">")
            out.append((int(synset), tuple(int(x) for x in near.split(",")) if near else ()))
        return out

    def lemma(self, word: str) -> str | None:
        """``word`` as WordNet lists it: itself, its irregular singular, or a suffix-stripped singular."""
        word = word.lower().strip()
        candidates = [word, word.replace("-", " "), word.replace("-", ""), word.replace(" ", "")]
        for w in list(candidates):
            if w in self.exceptions:
                candidates.append(self.exceptions[w])
            for plural, singular in _SUFFIXES:
                if w.endswith(plural) and len(w) > len(plural) + 1:
                    candidates.append(w[: -len(plural)] + singular)
        for w in candidates:
            if self.senses(w):
                return w
        return None

    def usual_sense_without_class(self, word: str) -> str | None:
        """What ``word``'s most frequent sense is a kind of, when that sense is an animal or a
        part of a body that no ImageNet class is near ("brain": "neural structure"), while only
        rarer senses are (brain as food); else None. Marked by tools/build_wordnet.py."""
        key = "\n" + word + "\t"
        at = self._words.find(key)
        if at < 0 or self._words[at + len(key) : at + len(key) + 1] != "?":
            return None
        first = self._words[at + len(key) + 1 : self._words.find("\n", at + 1)].split()[0]
        return first.replace("_", " ")

    def concept(self, word: str) -> Concept | None:
        """The concept ``word`` names: its first sense that names classes, else its first near
        sense; a concept with no classes (``how`` "no class") when the word's usual sense has
        none, so that a rarer sense nobody meant is not answered."""
        lemma = self.lemma(word)
        if lemma is None:
            return None
        usual = self.usual_sense_without_class(lemma)
        if usual is not None:
            return Concept(lemma, usual, (), "no class")
        senses = self.senses(lemma)
        for synset, near in senses:
            if not near:
                return Concept(lemma, self.name[synset], self.classes_under(synset), "names", synset)
        synset, near = senses[0]
        classes = tuple(sorted({c for s in near for c in self.classes_under(s)}))
        return Concept(lemma, " or ".join(self.name[s] for s in near), classes, "near", synset)

    # -- hedged tags ---------------------------------------------------------------------

    def hedge(self, tags: list[tuple[str, float]], *, confidence: float = HEDGE_CONFIDENCE) -> tuple[str, float] | None:
        """The most specific concept whose classes' summed probability reaches ``confidence``.

        ``tags`` are an image's stored (label, probability) pairs (the top classes). The
        answer climbs from the top class to its ancestors, e.g. from a doubtful "daisy" to
        "flower", or from three terriers to "terrier" or "dog"; None when even the most
        general useful concept is unsure.
        """
        index = self._label_index
        probs = {index[t.lower()]: p for t, p in tags if t.lower() in index}
        if not probs:
            return None
        top = max(probs, key=probs.get)
        for synset in self.ancestors[top]:
            classes = self.classes_under(synset)
            if len(classes) > HEDGE_MAX_CLASSES:
                return None
            total = sum(p for c, p in probs.items() if c in set(classes))
            if total >= confidence:
                name = self.labels[top] if synset == self.offsets[top] else self.name[synset]
                return name, round(total, 4)
        return None

    @cached_property
    def lower_labels(self) -> set[str]:
        return {name.lower() for name in self.labels}

    @cached_property
    def _label_index(self) -> dict[str, int]:
        return {name.lower(): i for i, name in enumerate(self.labels)}


def hedged_tag(tags: list[tuple[str, float]]) -> tuple[str, float] | None:
    """An image's tag that hedges (see WordNet.hedge): (concept, summed probability) or None."""
    return wordnet().hedge(tags)


def tag_concept_labels(value: str) -> list[str] | None:
    """For ``--where "tag = flower"``: the class names under a general concept, lower case.

    None when ``value`` is itself a class name (the filter then keeps its exact meaning) or
    names no concept with classes under it.
    """
    net = wordnet()
    if value.strip().lower() in net.lower_labels:
        return None
    c = net.concept(value)
    if c is None or c.how != "names":
        return None
    return sorted({net.labels[i].lower() for i in c.classes})


@lru_cache(maxsize=1)
def wordnet() -> WordNet:
    raw = resources.files("imagespace").joinpath("data", DATA_FILE).read_bytes()
    return WordNet(json.loads(gzip.decompress(raw)))


def query_parts(text: str) -> list[str]:
    """The parts of a query that each name a concept: lower case, articles and "photo of" dropped."""
    parts = []
    for part in _SPLIT.split(text.lower().strip()):
        part = _LEADING.sub("", part.strip(" .!?\"'"))
        words = re.findall(r"[\w'-]+", part)
        while words and words[0] in _STOP:
            words = words[1:]
        if words:
            parts.append(" ".join(words))
    return parts


def understand_part(part: str, net: WordNet) -> Concept | None:
    """The concept of a query part: the whole part, else its longest known run of words, rightmost
    first (English puts the noun last: "red sports car" -> "sports car")."""
    words = part.split()
    classless = None
    for n in range(len(words), 0, -1):
        for start in range(len(words) - n, -1, -1):
            if n == 1 and words[start] in _WITHIN_STOP:
                continue  # "on a wrist": "a" is no noun here (WordNet's "a" is an angstrom, vitamin A...)
            c = net.concept(" ".join(words[start : start + n]))
            if c is not None and c.classes:
                return c
            if c is not None and c.how == "no class" and classless is None:
                classless = c
    return classless


def understand(text: str, *, user_labels: list[str] = ()) -> Understanding:
    """The concepts ``text`` names: the collection's own labels first, then WordNet's.

    A user label matches by its name ("lily-valley" for "lily valley"), by a shared WordNet
    synset ("anemone" for a "windflower" folder), or by lying under the query's concept
    ("flowers" for folders "sunflower" and "daisy").
    """
    net = wordnet()
    own = {_normal(label): label for label in user_labels}
    concepts, unknown, without_class = [], [], []
    for part in query_parts(text):
        label = own.get(_normal(part)) or own.get(_singular(_normal(part), own))
        if label is not None:
            concepts.append(Concept(part, label, (), "user"))
            continue
        c = understand_part(part, net)
        labels, senses = _labels_under(part, user_labels, net)
        if c is not None and c.how == "no class":
            if not labels:  # the user's own labels under the word answer it
                without_class.append((c.word, c.name))
            c = None
        concepts.extend(Concept(part, label, (), "user") for label in labels)
        if c is not None and labels and c.synset not in senses:
            c = None  # the user's labels matched another sense of the word ("anemone": not the sea anemone)
        if c is None:
            if not any(x.word == part for x in concepts):
                unknown.append(part)
        else:
            concepts.append(c)
    return Understanding(concepts, unknown, without_class)


def _labels_under(part: str, user_labels, net: WordNet) -> tuple[list[str], set[int]]:
    """User labels whose WordNet synset is, or lies under, a synset ``part`` names; and those synsets."""
    lemma = net.lemma(part)
    if lemma is None or not user_labels:
        return [], set()
    wanted = {s for s, _ in net.senses(lemma)}
    out, matched = [], set()
    for label in user_labels:
        own = net.lemma(" ".join(re.findall(r"[a-z0-9]+", label.lower().replace("_", " ").replace("-", " "))))
        if own is None:
            continue
        for synset, near in net.senses(own)[:1]:  # the label's most frequent sense
            above = {synset} | {a for t in (near or (synset,)) for a in net.tree_ancestors(t)}
            if above & wanted:
                out.append(label)
                matched |= above & wanted
    return out, matched


def _normal(label: str) -> str:
    """A label's key: its words without articles or spaces, so that a folder named "tigerlily"
    or "lily-valley" answers "tiger lily" and "lily of the valley"."""
    words = re.findall(r"[a-z0-9]+", label.lower().replace("'", "").replace("_", " ").replace("-", " "))
    return "".join(w for w in words if w not in _STOP) or "".join(words)


def _singular(word: str, known: dict[str, str]) -> str:
    for plural, singular in _SUFFIXES:
        if word.endswith(plural) and word[: -len(plural)] + singular in known:
            return word[: -len(plural)] + singular
    return word
