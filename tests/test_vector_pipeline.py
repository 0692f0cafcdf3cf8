"""The collection's vector pipeline (centring on a frozen mean): stored vectors are always
the raw ones under the mean the collection names, through refits and SIGKILLs; older (raw)
collections answer as before; exports say what their vectors are."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from imagespace.collection import Collection
from imagespace.embed import Embedded, FileInfo
from imagespace.vector_pipeline import MIN_ROWS_TO_FIT, VectorPipeline, unit


def _rows(start: int, n: int, seed: int) -> list[Embedded]:
    rng = np.random.default_rng(seed)
    # a common direction plus noise, as network vectors are (they share a large mean)
    vecs = unit(rng.normal(0, 0.3, (n, 64)) + np.r_[1.0, np.zeros(63)])
    return [Embedded(FileInfo(f"/p/{start + i}.jpg", 1, 1, f"d{start + i}"), v, [], 1, 1, "JPEG") for i, v in enumerate(vecs)]


def _consistent(root: Path) -> VectorPipeline:
    """Every stored vector is the pipeline (as the meta table names it) applied to its raw one."""
    with Collection(root) as coll:
        pipe = coll.pipeline
        ids, stored = coll.vectors()
        _, raw = coll.raw_vectors(ids.tolist())
        assert np.allclose(stored, pipe.apply(raw), atol=1e-5)
        return pipe


def test_centred_mean_is_frozen_until_the_collection_doubles(tmp_path):
    root = tmp_path / "c"
    with Collection(root) as coll:
        coll.bind_model("m", "m", 64)
        coll.write_embedded(_rows(0, MIN_ROWS_TO_FIT - 1, 1), [])
        assert not coll.refit_pipeline() and coll.pipeline.mean is None  # too few: raw vectors
        coll.write_embedded(_rows(MIN_ROWS_TO_FIT, 60, 2), [])
        seq = coll.seq
        assert coll.refit_pipeline() and coll.pipeline.version == 1 and coll.seq == seq + 1
        fitted = coll.pipeline.fitted_on
        coll.write_embedded(_rows(1000, 30, 3), [])  # centred on the frozen mean, no refit
        assert not coll.refit_pipeline() and coll.pipeline.fitted_on == fitted
        # the query side goes through the same mean
        q = _rows(5000, 1, 4)[0].vector
        assert np.allclose(coll.post_process(q), unit(q - coll.pipeline.mean))
    pipe = _consistent(root)
    assert pipe.kind == "centred" and pipe.query_expansion is not None and pipe.expands_by_default


def test_raw_collections_keep_their_vectors(tmp_path):
    root = tmp_path / "c"
    with Collection(root) as coll:
        coll.bind_model("m", "m", 64, "raw")
        rows = _rows(0, 300, 1)
        coll.write_embedded(rows, [])
        assert not coll.refit_pipeline()
        _, stored = coll.vectors()
        assert np.allclose(stored, np.stack([r.vector for r in rows]))
        assert coll.pipeline.query_expansion is None
    # a collection older than the pipeline (no meta row) reads as raw
    with Collection(root) as coll:
        coll.conn.execute("DELETE FROM meta WHERE key='pipeline'")
        assert coll.pipeline.kind == "raw" and coll.pipeline.identity


_REFIT = """
import sys
import numpy as np
from imagespace.collection import Collection
sys.path.insert(0, {tests!r})
from test_vector_pipeline import _rows
with Collection({root!r}) as coll:
    for r in range(1, 1000):
        coll.write_embedded(_rows(r * 1000, 50, r), [])
        coll.refit_pipeline(force=r % 2 == 0)
"""


def test_sigkill_during_refits_leaves_one_mean(tmp_path):
    root = tmp_path / "c"
    with Collection(root) as coll:
        coll.bind_model("m", "m", 64)
        coll.write_embedded(_rows(0, 150, 0), [])
        coll.refit_pipeline()
    code = _REFIT.format(tests=str(Path(__file__).parent), root=str(root))
    for delay in (0.3, 0.7, 1.1, 1.6):
        proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _consistent(root)


def test_export_says_what_the_vectors_are(tmp_path):
    from imagespace.export import export_collection

    root = tmp_path / "c"
    with Collection(root) as coll:
        coll.bind_model("m", "m", 64)
        coll.write_embedded(_rows(0, 150, 0), [])
        coll.refit_pipeline()
        assert export_collection(coll, tmp_path / "v.npz") == 150
        assert export_collection(coll, tmp_path / "v.jsonl") == 150
        _, raw = coll.raw_vectors(coll.ids())
    npz = np.load(tmp_path / "v.npz")
    info = json.loads(str(npz["pipeline"]))
    assert info["vectors"] == "centred-v1" and info["post_processed"]
    assert np.allclose(npz["embedding"], unit(raw - npz["mean"]), atol=1e-5)  # reproducible
    line = json.loads((tmp_path / "v.jsonl").read_text().splitlines()[0])
    assert line["vectors"] == "centred-v1"
    side = json.loads((tmp_path / "v.jsonl.pipeline.json").read_text())
    assert side["vectors"] == "centred-v1" and len(side["mean"]) == 64


def test_weak_line_is_measured_again_after_a_refit(tmp_path):
    from imagespace.search.chance import MIN_IMAGES, chance_line

    root = tmp_path / "c"
    with Collection(root) as coll:
        coll.bind_model("m", "m", 64)
        coll.write_embedded(_rows(0, max(MIN_IMAGES, MIN_ROWS_TO_FIT), 0), [])  # raw until the run's end refits
        before = chance_line(coll)
        assert coll.refit_pipeline()  # as many images as before: only the mean tells the line is stale
        after = chance_line(coll)
        assert before is not None and after is not None
        assert after.value < before.value - 0.1  # centred vectors: unrelated pairs score lower
