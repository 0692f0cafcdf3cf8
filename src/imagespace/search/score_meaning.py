"""What a score means and when a result is weak: one sentence each, for every kind of score.

The command line, the JSON answer and the web page show these same sentences, so a user reads
one explanation everywhere. Two kinds of score come out of a search:

- ``cosine`` (by image, by stored image, by vector; ``recommend``): the cosine similarity of
  two images' vectors. Weak below the collection's chance line (chance.py): no closer than two
  of its images picked at random often are.
- ``probability`` (by words): the probability the network, or the user's classifier, gave the
  concept. Weak when the network finds another class more probable in that image than the
  whole concept (or gave it nothing at all): the image probably shows something else.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..vector_pipeline import CENTRED_QE_NEIGHBOURS
from .chance import ChanceLine

COSINE = "cosine"
PROBABILITY = "probability"


@dataclass(frozen=True)
class ScoreMeaning:
    kind: str  # COSINE or PROBABILITY
    meaning: str  # what the number is
    weak_rule: str | None  # when a result is marked weak; None when none is judged
    weak_below: float | None = None  # the cosine line, when the rule is one

    def to_dict(self) -> dict:
        return {"kind": self.kind, "meaning": self.meaning, "weak_rule": self.weak_rule,
                "weak_below": None if self.weak_below is None else round(self.weak_below, 4)}


def cosine_meaning(line: ChanceLine | None, *, augmented: bool = False, expanded: bool = False) -> ScoreMeaning:
    """The meaning of a cosine score in a collection whose chance line is ``line``;
    ``expanded``: the answer was ordered by an expanded query (QE), its scores still plain."""
    meaning = "cosine similarity of the two images' vectors: 1 is the same picture, higher is closer"
    if expanded and not augmented:
        meaning += (f"; ordered by the query together with its {CENTRED_QE_NEIGHBOURS} nearest images (query "
                    "expansion, --no-qe for plain order), so a score can exceed the one above it")
    if augmented:
        return ScoreMeaning(COSINE, meaning + " (here against vectors averaged with their neighbours, --dba)",
                            "not judged with --dba: its scores are higher than plain cosines")
    if line is None:
        return ScoreMeaning(COSINE, meaning, "not judged: the collection has too few images to tell what chance is")
    return ScoreMeaning(
        COSINE, meaning,
        f"weak below {line.value:.2f}: no closer than two images of this collection picked at random often are "
        f"({100 - line.percentile}% of random pairs score {line.value:.2f} or more with this model)",
        line.value,
    )


def probability_meaning() -> ScoreMeaning:
    return ScoreMeaning(
        PROBABILITY,
        "probability, 0 to 1, that the image shows the concept: the network's classes under it summed "
        "(or the probability your classify --train examples gave your label)",
        "weak when the network finds one other class more probable in that image than the whole concept: "
        "it probably shows something else",
    )


def weak_remark(weak: int, total: int, scores: dict) -> str:
    """The line printed under results, e.g. '3 of 10 results are weak: weak below 0.54: ...'."""
    return f"{weak} of {total} results are weak matches ({scores['kind']} scores; {scores['weak_rule']})"
