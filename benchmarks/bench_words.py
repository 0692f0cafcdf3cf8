"""Search by words: precision@10 of everyday words on cifar10 and flowers12, and its speed.

``python -m benchmarks --only bench_words [--quick]``; ``BENCH_MODEL=efficientnet-lite0`` measures
another network than the default.

Collections: 50 test images of each cifar10 class (500) and flowers12's test split (240).
Each folder is answered by several words; half of them (DEV) were looked at while the rules
of word_concepts.py were chosen, the other half (HELD_OUT) were written down at the same time and
only measured. flowers12 is measured twice: with ImageNet's classes only (its species are
mostly not ImageNet classes, so this shows what the hierarchy alone gives) and after
``classify --train`` on flowers12's train split, whose folder names become the collection's
words. Times: the CLI from a cold process, and the library call in a warm process.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from ._common import CIFAR10_ZIP, FLOWERS12, IMAGESPACE, ROOT, need

CIFAR_DEV = {
    "airplane": ["airplane", "aircraft"], "automobile": ["car", "automobile"], "bird": ["bird", "birds"],
    "cat": ["cat", "cats"], "deer": ["deer", "a deer"], "dog": ["dog", "dogs"], "frog": ["frog", "frogs"],
    "horse": ["horse", "horses"], "ship": ["ship", "boat"], "truck": ["truck", "trucks"],
}
CIFAR_HELD_OUT = {
    "airplane": ["a photo of an aeroplane", "plane"], "automobile": ["a photo of a car", "auto"],
    "bird": ["songbird", "a small bird"], "cat": ["kitten", "kitty"], "deer": ["stag", "a photo of deer"],
    "dog": ["puppy", "hound"], "frog": ["toad", "a photo of a frog"], "horse": ["pony", "stallion"],
    "ship": ["vessel", "a photo of a ship"], "truck": ["lorry", "a photo of a truck"],
}
FLOWERS_DEV = {
    "bluebell": ["bluebell"], "buttercup": ["buttercup"], "colts-foot": ["colts-foot"], "daisy": ["daisy"],
    "dandelion": ["dandelion"], "fritillary": ["fritillary"], "iris": ["iris"], "lily-valley": ["lily-valley"],
    "pansy": ["pansy"], "sunflower": ["sunflower"], "tigerlily": ["tigerlily"], "windflower": ["windflower"],
}
FLOWERS_HELD_OUT = {
    "bluebell": ["bluebells"], "buttercup": ["buttercups"], "colts-foot": ["coltsfoot"], "daisy": ["daisies"],
    "dandelion": ["a dandelion"], "fritillary": ["fritillaries"], "iris": ["irises"], "lily-valley": ["lily of the valley"],
    "pansy": ["pansies"], "sunflower": ["a sunflower"], "tigerlily": ["tiger lily"], "windflower": ["anemone"],
}
PER_CIFAR_CLASS = 50


def run(quick: bool = False) -> dict:
    need(CIFAR10_ZIP), need(FLOWERS12)
    work = Path(tempfile.mkdtemp(prefix="imagespace-words-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        cifar = _cifar_folder(work / "cifar", 20 if quick else PER_CIFAR_CLASS)
        out = {}
        for name, folder in (("cifar10", cifar), ("flowers12", FLOWERS12 / "test")):
            db = work / f"db-{name}"
            model = ["--model", os.environ["BENCH_MODEL"]] if os.environ.get("BENCH_MODEL") else []
            subprocess.run([*IMAGESPACE, "index", str(folder), "--db", str(db), "--json", *model], check=True, env=env,
                           capture_output=True)
            out[name] = db
        report = {
            "cifar10": _precision(out["cifar10"], CIFAR_DEV, CIFAR_HELD_OUT),
            "flowers12 (ImageNet classes only)": _precision(out["flowers12"], FLOWERS_DEV, FLOWERS_HELD_OUT),
        }
        subprocess.run([*IMAGESPACE, "classify", "--train", str(FLOWERS12 / "train"), "--db", str(out["flowers12"]), "--json"],
                       check=True, env=env, capture_output=True)
        report["flowers12 (after classify --train)"] = _precision(out["flowers12"], FLOWERS_DEV, FLOWERS_HELD_OUT)
        report["seconds"] = _times(out["cifar10"], env, runs=2 if quick else 5)
        print(json.dumps(report, indent=1))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cifar_folder(folder: Path, per_class: int) -> Path:
    with zipfile.ZipFile(CIFAR10_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        taken: dict[str, int] = {}
        for n in names:
            cls = n.split("/")[1]
            if taken.get(cls, 0) < per_class:
                taken[cls] = taken.get(cls, 0) + 1
                (folder / cls).mkdir(parents=True, exist_ok=True)
                (folder / cls / Path(n).name).write_bytes(z.read(n))
    return folder


def _precision(db: Path, dev: dict, held_out: dict) -> dict:
    from imagespace.collection import Collection
    from imagespace.search import QueryError, Searcher

    result = {}
    with Collection(db, create=False) as coll:
        searcher = Searcher(coll)
        for half, words in (("dev", dev), ("held_out", held_out)):
            per_word, failures = {}, []
            for folder, ws in words.items():
                for w in ws:
                    try:
                        answer = searcher.query(text=w, k=10)
                        hits, extra = answer.hits, answer.extra
                    except QueryError as e:
                        hits, extra = [], {"error": str(e)[:80]}
                    p = sum(Path(h.path).parent.name == folder for h in hits) / 10
                    per_word[w] = p
                    if p < 0.8:
                        failures.append({"word": w, "folder": folder, "p@10": p,
                                         "understood_as": [c.get("concept") for c in extra.get("understood_as", [])] or extra.get("error")})
            result[half] = {"precision@10": round(statistics.mean(per_word.values()), 3), "words": len(per_word), "below_0.8": failures}
    return result


def _times(db: Path, env: dict, runs: int) -> dict:
    from imagespace.collection import Collection
    from imagespace.search import Searcher

    # Cold: a new process each time, interleaved with the baseline of a search by a stored
    # image (the same start-up, index and rows, no words), so a busy machine shifts both.
    with Collection(db, create=False) as coll:
        stored = next(coll.all_rows()).path
    cold, baseline = [], []
    for i in range(runs):
        for argv, out in ((["--like", stored], baseline), (["--text", ["dog", "a sunflower", "cat or dog", "truck", "deer"][i % 5]], cold)):
            t = time.perf_counter()
            subprocess.run([*IMAGESPACE, "search", "--db", str(db), *argv, "--json"], check=True, env=env, capture_output=True)
            out.append(time.perf_counter() - t)
    warm = []
    with Collection(db, create=False) as coll:
        s = Searcher(coll)
        s.query(text="dog", k=10)
        for w in ["dog", "a sunflower", "cat or dog", "truck", "deer", "musical instrument"] * 3:
            t = time.perf_counter()
            s.query(text=w, k=10)
            warm.append(time.perf_counter() - t)
    return {"cli_cold_median": round(statistics.median(cold), 3), "cli_cold_max": round(max(cold), 3),
            "cli_cold_baseline_like_median": round(statistics.median(baseline), 3),
            "warm_median_ms": round(1000 * statistics.median(warm), 2), "warm_max_ms": round(1000 * max(warm), 2)}


if __name__ == "__main__":
    run()
