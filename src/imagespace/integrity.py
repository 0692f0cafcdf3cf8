"""Integrity check of a collection: the database, every row's vector, and the ANN index.

The rows are the truth; the index file is derived from them. ``check_collection`` reads
everything in one snapshot of the database and reports *errors* (something is wrong: a
damaged database, a vector of the wrong size or not finite, an index that disagrees with
the rows) and *notices* (normal states that the next run settles by itself: an index that
is behind or missing, rows waiting to be re-embedded with a new model, files left by a
killed run). ``repair_index`` rebuilds the index from the rows.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .collection import Collection
from .index import describe_index
from .index.hnsw import INDEX_FILE, INDEX_FORMAT, INDEX_META, IndexSettings, VectorIndex, file_checksum, load_projection
from .index.rescore import RescoreStore

# How many examples of one kind of problem a report lists (the count is always exact).
MAX_EXAMPLES = 10
# An index entry whose vector is further than this from its row's vector is wrong.
MIN_COSINE = 0.999
MIN_COSINE_INT8 = 0.99
# also search by words' file beside the index: tag-postings.npz (user-labels.json: older collections)
_TMP_NAME = re.compile(r"^(?:vectors\.(?:usearch|json|projection\.npy|rescore\.f32)|tag-postings\.npz|user-labels\.json)\.(\d+)\.tmp(?:\.npy|\.npz)?$")


@dataclass
class Finding:
    kind: str  # a short stable name, e.g. "bad-vector", "index-orphans"
    message: str  # what a person reads
    count: int = 1
    examples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "count": self.count, "examples": self.examples}


@dataclass
class CheckReport:
    db: str
    rows: int = 0
    dim: int | None = None
    model_id: str | None = None
    index_entries: int | None = None
    index: dict | None = None  # the index searches use: kind, knobs, measured recall
    errors: list[Finding] = field(default_factory=list)
    notices: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "db": self.db,
            "rows": self.rows,
            "dim": self.dim,
            "model_id": self.model_id,
            "index_entries": self.index_entries,
            "index": self.index,
            "errors": [f.to_dict() for f in self.errors],
            "notices": [f.to_dict() for f in self.notices],
            "repaired": self.repaired,
        }


def check_collection(collection: Collection, *, repair: bool = False) -> CheckReport:
    """Check ``collection``; with ``repair`` rebuild the index and tidy leftovers first."""
    report = CheckReport(db=str(collection.root))
    if repair:
        report.repaired = repair_index(collection)
    with collection.read_snapshot():  # a run writing meanwhile cannot tear the check
        _check_database(collection, report)
        if report.errors:  # a damaged database: the rest would only repeat it
            return report
        report.rows = len(collection)
        report.dim = collection.dim
        report.model_id = collection.model_id
        _check_meta(collection, report)
        good_ids = _check_vectors(collection, report)
        _check_index(collection, report, good_ids)
        _check_recall(collection, report)
    _check_leftovers(collection, report)
    return report


def repair_index(collection: Collection) -> list[str]:
    """Rebuild the index file from the rows and remove files left by killed runs."""
    done: list[str] = []
    with collection.lock():  # no indexing run may save its index meanwhile
        for path in _dead_temp_files(collection):
            path_str = str(path)
            try:
                os.unlink(path)
                done.append(f"removed {path_str}, left by a run that was killed")
            except FileNotFoundError:
                pass
        if collection.dim is not None:
            index = VectorIndex.build(collection)
            index.save_if_changed()
            done.append(f"rebuilt the vector index from the rows ({len(index)} vectors)")
    return done


# -- the parts -------------------------------------------------------------------------------


def _check_database(collection: Collection, report: CheckReport) -> None:
    lines = collection.integrity_problems()
    if lines:
        report.errors.append(
            Finding("database", "SQLite integrity_check failed: the database file is damaged", len(lines), lines[:MAX_EXAMPLES])
        )


def _check_meta(collection: Collection, report: CheckReport) -> None:
    if report.rows and (collection.model_id is None or collection.dim is None):
        report.errors.append(Finding("meta", "the collection holds rows but records no model or dimension"))
    stale = report.rows - collection.count(collection.model_id) if collection.model_id else 0
    if stale:
        report.notices.append(
            Finding("other-model", f"{stale} rows were made by another model and wait to be re-embedded (run index)", stale)
        )
    failures = collection.failure_count()
    if failures:
        report.notices.append(Finding("failures", f"{failures} files could not be read at the last runs (see info)", failures))


def _check_vectors(collection: Collection, report: CheckReport) -> set[int]:
    """Every current row's vector: present, ``dim`` float32 values, finite, unit length."""
    dim = collection.dim or 0
    good: set[int] = set()
    bad = Finding("bad-vector", "", 0)
    for rows in collection.iter_raw_vectors():
        for row_id, path, blob in rows:
            reason = _vector_problem(blob, dim)
            if reason is None:
                good.add(row_id)
                continue
            bad.count += 1
            if len(bad.examples) < MAX_EXAMPLES:
                bad.examples.append({"id": row_id, "path": path, "problem": reason})
    if bad.count:
        bad.message = f"{bad.count} rows have a missing or damaged vector (re-index those files)"
        report.errors.append(bad)
    return good


def _vector_problem(blob: bytes | None, dim: int) -> str | None:
    if not isinstance(blob, bytes) or not blob:
        return "no vector"
    if len(blob) != dim * 4:
        return f"vector of {len(blob)} bytes, expected {dim} float32 values ({dim * 4} bytes)"
    vec = np.frombuffer(blob, dtype=np.float32)
    if not np.isfinite(vec).all():
        return "vector holds NaN or infinite values"
    norm = float(np.linalg.norm(vec))
    if abs(norm - 1.0) > 1e-3:
        return f"vector is not unit length (norm {norm:.4f})"
    return None


def _check_index(collection: Collection, report: CheckReport, good_ids: set[int]) -> None:
    """The index file, brought up to date as a search would, must hold exactly the rows."""
    if collection.dim is None:
        return
    loaded = _load_index(collection, report)
    if loaded is None:
        return
    index, recorded_seq = loaded
    behind = collection.seq - recorded_seq
    if behind > 0:
        report.notices.append(
            Finding("index-behind", f"the index file is {behind} changes behind the rows; they are replayed when it is opened", behind)
        )
        index.refresh()
    report.index_entries = len(index)
    keys = set(int(k) for k in np.asarray(index.index.keys, dtype=np.int64)) if len(index) else set()
    row_ids = set(collection.ids())
    orphans = sorted(keys - row_ids)
    missing = sorted(row_ids - keys)
    if orphans:
        report.errors.append(
            Finding("index-orphans", f"the index holds {len(orphans)} keys with no row (run check --repair)", len(orphans), orphans[:MAX_EXAMPLES])
        )
    if missing:
        report.errors.append(
            Finding("index-missing", f"{len(missing)} rows are missing from the index (run check --repair)", len(missing), missing[:MAX_EXAMPLES])
        )
    wrong = _wrong_index_vectors(collection, index, sorted(good_ids & keys))
    if wrong:
        report.errors.append(
            Finding("index-vectors", f"{len(wrong)} index vectors differ from their rows (run check --repair)", len(wrong), wrong[:MAX_EXAMPLES])
        )
    if index.projection is not None:
        _check_snapshot(collection, report)


def _check_recall(collection: Collection, report: CheckReport) -> None:
    """The recall the index measured on the collection's own vectors, against its target."""
    if collection.dim is None:
        return
    report.index = desc = describe_index(collection)
    if not desc.get("kind") or desc["kind"] == "exact":
        return
    recall, target = desc.get("recall_at_10"), desc.get("recall_target")
    if recall is None:
        report.notices.append(Finding("recall-unmeasured", "the index's recall has not been measured on this collection "
                                      "yet: the next indexing run (or check --repair) measures it and tunes its settings"))
    elif recall < target:
        report.notices.append(Finding(
            "recall-below-target", f"the index finds {recall:.3f} of the true 10 nearest neighbours on a sample of the "
            f"collection's own vectors, below the target {target:.2f}, even at its largest search settings", 1,
            [desc.get("settings")]))


def _check_snapshot(collection: Collection, report: CheckReport) -> None:
    """A reduced index's re-scoring snapshot must hold each row's vector as of its stamp."""
    stamp = json.loads((collection.root / INDEX_META).read_text()).get("rescore")
    store = RescoreStore.open(collection.root, stamp)
    if store is None:
        report.notices.append(Finding("snapshot-absent", "the index has no usable re-scoring snapshot: searches read "
                                      "the rows instead until the next indexing run writes one"))
        return
    try:
        newer = collection.ids_written_since(store.seq)
        wrong: list[int] = []
        for ids, vecs in collection.iter_vectors():
            keep = (ids < store.stamp["rows"]) & ~np.isin(ids, list(newer))
            if keep.any():
                got = store.read(ids[keep].tolist())
                wrong.extend(int(i) for i in ids[keep][~np.all(got == vecs[keep], axis=1)])
    finally:
        store.close()
    if wrong:
        report.errors.append(Finding(
            "index-snapshot", f"{len(wrong)} vectors in the re-scoring snapshot differ from their rows (run check --repair)",
            len(wrong), wrong[:MAX_EXAMPLES]))


def _load_index(collection: Collection, report: CheckReport) -> tuple[VectorIndex, int] | None:
    """The saved index as ``VectorIndex.open`` would trust it, or None with the reason reported."""
    path, meta_path = collection.root / INDEX_FILE, collection.root / INDEX_META
    if not path.exists() or not meta_path.exists():
        report.notices.append(Finding("index-absent", "no index file yet: it is built from the rows when first needed"))
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != INDEX_FORMAT or meta.get("model_id") != collection.model_id or meta.get("dim") != collection.dim:
            report.notices.append(Finding("index-other-model", "the index file was made for another model or format; it is rebuilt when opened"))
            return None
        if "collection_id" not in meta or "digest" not in meta:
            report.notices.append(Finding("index-old", "the index file was made by an older version; it is rebuilt when opened"))
            return None
        problem = None
        if meta.get("collection_id") != collection.collection_id:
            problem = "the index file belongs to another collection"
        elif int(meta["seq"]) > collection.seq:
            problem = "the index file is newer than the rows (a database restored from a backup?)"
        elif meta.get("digest") != file_checksum(path):
            problem = "the index file does not match its checksum: it is damaged"
        if problem:
            report.errors.append(Finding("index-damaged", f"{problem} (searches rebuild it; check --repair saves the rebuilt one)"))
            return None
        settings = IndexSettings(**meta.get("settings", {}))
        raw = VectorIndex._load(path)
        projection = load_projection(collection, meta, settings)
        if raw is None or raw.ndim != (settings.reduce_dim or collection.dim):
            raise ValueError("not a usearch index of the expected dimension")
        index = VectorIndex(collection, raw, int(meta["seq"]), settings, dirty=False, projection=projection)
        return index, int(meta["seq"])
    except (ValueError, OSError, RuntimeError, TypeError, KeyError) as e:
        report.errors.append(Finding("index-unreadable", f"the index file is unreadable ({e}); run check --repair to rebuild it"))
        return None


def _wrong_index_vectors(collection: Collection, index: VectorIndex, ids: list[int], chunk: int = 2000) -> list[int]:
    """Ids whose vector in the graph is not their row's (or its projection, for a reduced index)."""
    wrong: list[int] = []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        row_ids, row_vecs = collection.vectors(part)
        want = index._to_index(row_vecs)
        got = np.asarray(index.index.get(row_ids), dtype=np.float32) if len(row_ids) else want
        if got.shape != want.shape:
            return [int(i) for i in row_ids]
        with np.errstate(all="ignore"):
            norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
            cos = np.einsum("ij,ij->i", got, want) / np.maximum(norms, 1e-12)
        # an int8 graph holds each projection rounded to 1/127 of its length: cosine 0.9986
        # to 0.9990 with the exact projection (20,000 of the search benchmark's vectors)
        floor = MIN_COSINE_INT8 if index.settings.dtype == "i8" else MIN_COSINE
        wrong.extend(int(i) for i in row_ids[~(cos >= floor)])
    return wrong


def _dead_temp_files(collection: Collection) -> list:
    """Temporary index files whose writing process no longer exists (killed mid-save)."""
    out = []
    for path in collection.root.iterdir():
        m = _TMP_NAME.match(path.name)
        if m and not _pid_alive(int(m.group(1))):
            out.append(path)
    return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_leftovers(collection: Collection, report: CheckReport) -> None:
    dead = _dead_temp_files(collection)
    if dead:
        report.notices.append(
            Finding("leftovers", f"{len(dead)} temporary index files left by killed runs (check --repair removes them)", len(dead), [p.name for p in dead[:MAX_EXAMPLES]])
        )
