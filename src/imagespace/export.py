"""Every row of a collection with its vector, in the format the file name says.

``.parquet`` (pandas, DuckDB, Spark: every field, the vector as a fixed-size list), ``.csv``
(every field, the vector as a JSON list in one cell), ``.jsonl`` (one JSON object a row),
``.npz`` (NumPy: ``embedding`` (n, dim) float32 with ``id`` and ``path`` beside). Each file
is written to a temporary name and renamed, so a reader never sees half of one.

The vectors are the ones the collection searches: after its pipeline
(:mod:`imagespace.vector_pipeline`). Every format says which: a ``vectors`` column/field
(``raw``, or ``centred-v3``: centred on version 3 of the collection's mean), and the
pipeline with its mean vector (``unit(raw - mean)`` makes the exported vectors again from
the network's own) in the Parquet schema's metadata (``imagespace.pipeline``), in the .npz
(``pipeline``, JSON, and ``mean``), and for CSV and JSON lines in ``NAME.pipeline.json``
beside the file.
"""

from __future__ import annotations

import os
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .collection import Collection
from .names import readable_path

_CHUNK = 5_000

EXPORT_FORMATS = {".parquet": "Parquet", ".csv": "CSV", ".jsonl": "JSON lines", ".npz": "NumPy .npz"}


class ExportError(ValueError):
    """An export that cannot be written as asked (a file name of no known format)."""


def export_format(out: str | os.PathLike[str]) -> str:
    """The suffix of ``out`` if it names a format we write, else :class:`ExportError`."""
    suffix = Path(out).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        known = ", ".join(f"{s} ({n})" for s, n in EXPORT_FORMATS.items())
        why = " (a .npy file holds one array: use .npz for the vectors with their ids and paths)" if suffix == ".npy" else ""
        raise ExportError(f"cannot tell the format of {Path(out).name!r}{why}; the name must end in {known}")
    return suffix


def export_collection(collection: Collection, out: str | os.PathLike[str]) -> int:
    """Write the collection to ``out`` in the format its suffix names; returns rows written."""
    writer = {".parquet": export_parquet, ".csv": export_csv, ".jsonl": export_jsonl, ".npz": export_npz}
    return writer[export_format(out)](collection, out)


def pipeline_tag(collection: Collection) -> str:
    """``raw`` or ``centred-v{version}``: what the exported vectors are."""
    p = collection.pipeline
    return "raw" if p.identity else f"{p.kind}-v{p.version}"


def _pipeline_json(collection: Collection) -> str:
    return json.dumps({"vectors": pipeline_tag(collection), "model_id": collection.model_id,
                       **collection.pipeline.describe()})


def _write_sidecar(collection: Collection, out: Path) -> None:
    with atomic_write(out.with_name(out.name + ".pipeline.json")) as tmp:
        Path(tmp).write_text(_pipeline_json(collection))


def _chunks(collection: Collection) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
    """(ids, vectors, rows in id order) a chunk at a time."""
    for ids, vecs in collection.iter_vectors(_CHUNK):
        rows = collection.rows(ids.tolist())
        yield ids, vecs, [rows[int(i)] for i in ids]


def _labels(collection: Collection) -> dict[str, tuple[str, float]]:
    """path -> (label, probability) that the last ``classify`` run saved; empty when none did.
    Exported beside the tags, so that a table of the collection carries the user's own classes
    ("unknown" where none fitted)."""
    return collection.saved_labels()


def _fields(r, labels: dict[str, tuple[str, float]]) -> dict:
    label, score = labels.get(r.path, (None, None))
    return {
        "path": readable_path(r.path), "size": r.size, "width": r.width, "height": r.height, "format": r.format,
        "tags": [t for t, _ in r.tags], "tag_scores": [round(s, 6) for _, s in r.tags], "model": r.model,
        "label": label, "label_score": None if score is None else round(score, 6),
    }


def _snapshot(collection: Collection):
    """Rows and pipeline as of one moment (an indexing run may refit the mean meanwhile)."""
    return collection.read_snapshot()


def export_csv(collection: Collection, out: str | os.PathLike[str]) -> int:
    out = Path(out)
    with _snapshot(collection), atomic_write(out) as tmp:
        written = 0
        tag = pipeline_tag(collection)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "path", "size", "width", "height", "format", "tags", "tag_scores", "model", "label",
                        "label_score", "vectors", "embedding"])
            labels = _labels(collection)
            for ids, vecs, rows in _chunks(collection):
                for i, v, r in zip(ids.tolist(), vecs, rows):
                    d = _fields(r, labels)
                    w.writerow([i, d["path"], d["size"], d["width"], d["height"], d["format"], json.dumps(d["tags"]),
                                json.dumps(d["tag_scores"]), d["model"], d["label"] or "",
                                "" if d["label_score"] is None else d["label_score"], tag,
                                json.dumps([float(x) for x in v])])
                    written += 1
        _write_sidecar(collection, out)
    return written


def export_jsonl(collection: Collection, out: str | os.PathLike[str]) -> int:
    out = Path(out)
    with _snapshot(collection), atomic_write(out) as tmp:
        written = 0
        tag = pipeline_tag(collection)
        with open(tmp, "w", encoding="utf-8") as f:
            labels = _labels(collection)
            for ids, vecs, rows in _chunks(collection):
                for i, v, r in zip(ids.tolist(), vecs, rows):
                    f.write(json.dumps({"id": i, **_fields(r, labels), "vectors": tag,
                                        "embedding": [float(x) for x in v]}) + "\n")
                    written += 1
        _write_sidecar(collection, out)
    return written


def export_npz(collection: Collection, out: str | os.PathLike[str]) -> int:
    """The vectors as one (n, dim) float32 array, with ids and paths in the same order.

    An array in memory: 1,280 floats a row is 5 KB, 5 GB for a million rows.
    """
    with _snapshot(collection):
        ids, vecs = collection.vectors()
        rows = collection.rows(ids.tolist())
        pipeline, info = collection.pipeline, _pipeline_json(collection)
    paths = np.array([readable_path(rows[int(i)].path) for i in ids], dtype=str)
    mean = pipeline.mean if pipeline.mean is not None else np.zeros(0, dtype=np.float32)
    labels = _labels(collection)
    found = [labels.get(rows[int(i)].path, ("", np.nan)) for i in ids]
    out = Path(out)
    with atomic_write(out, suffix=".npz") as tmp:  # np.savez adds .npz to a name without it
        np.savez(tmp, id=ids, path=paths, embedding=vecs, label=np.array([f[0] for f in found], dtype=str),
                 label_score=np.array([f[1] for f in found], dtype=np.float32), pipeline=np.array(info), mean=mean)
    return len(ids)


def export_parquet(collection: Collection, out: str | os.PathLike[str]) -> int:
    """Write the collection to ``out`` in row groups, never holding it all; returns rows written."""
    with _snapshot(collection):
        return _export_parquet(collection, out)


def _export_parquet(collection: Collection, out: str | os.PathLike[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = collection.dim or 0
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("path", pa.string()),  # names that are not UTF-8 show their odd bytes as \xNN
            ("path_bytes", pa.binary()),  # the exact bytes of every name
            ("size", pa.int64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("format", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("tag_scores", pa.list_(pa.float32())),
            ("model", pa.string()),
            ("label", pa.string()),  # classify's label (null where it never ran)
            ("label_score", pa.float32()),
            ("vectors", pa.string()),  # raw, or centred-v{version} (see imagespace.pipeline below)
            ("embedding", pa.list_(pa.float32(), dim)),
        ],
        metadata={b"imagespace.model_id": (collection.model_id or "").encode(),
                  b"imagespace.pipeline": _pipeline_json(collection).encode()},
    )
    out = Path(out)
    tag = pipeline_tag(collection)
    labels = _labels(collection)
    with atomic_write(out) as tmp:
        written = 0
        with pq.ParquetWriter(tmp, schema) as writer:
            for ids, vecs in collection.iter_vectors(_CHUNK):
                rows = collection.rows(ids.tolist())
                ordered = [rows[int(i)] for i in ids]
                table = pa.table(
                    {
                        "id": ids,
                        "path": [readable_path(r.path) for r in ordered],
                        "path_bytes": [os.fsencode(r.path) for r in ordered],
                        "size": [r.size for r in ordered],
                        "width": [r.width for r in ordered],
                        "height": [r.height for r in ordered],
                        "format": [r.format for r in ordered],
                        "tags": [[t for t, _ in r.tags] for r in ordered],
                        "tag_scores": [[s for _, s in r.tags] for r in ordered],
                        "model": [r.model for r in ordered],
                        "label": [labels.get(r.path, (None, None))[0] for r in ordered],
                        "label_score": [labels.get(r.path, (None, None))[1] for r in ordered],
                        "vectors": [tag] * len(ordered),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
                    },
                    schema=schema,
                )
                writer.write_table(table)
                written += len(ids)
    return written

