"""Every row of a collection with its vector, as a Parquet file for pandas, DuckDB & co."""

from __future__ import annotations

import os
from pathlib import Path

from .collection import Collection
from .names import readable_path

_CHUNK = 5_000


def export_parquet(collection: Collection, out: str | os.PathLike[str]) -> int:
    """Write the collection to ``out`` in row groups, never holding it all; returns rows written."""
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
            ("embedding", pa.list_(pa.float32(), dim)),
        ],
        metadata={b"imagespace.model_id": (collection.model_id or "").encode()},
    )
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
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
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
                },
                schema=schema,
            )
            writer.write_table(table)
            written += len(ids)
    os.replace(tmp, out)
    return written

