"""Indexing: bring a collection up to date with folders of images.

One run: scan the folders -> plan (what is new, changed, moved, unchanged or gone) ->
embed what must be (batch by batch, each batch committed) -> write -> bring the vector
index up to date, so the first query after a run does not pay for it. The collection
(:mod:`imagespace.collection`) only stores rows; this module decides what to store.
"""

from __future__ import annotations

import os
import stat as statmod
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .collection import Collection
from .embed import content_digest, embed_files, file_matches, legacy_digest
from .feature_store import FeatureStore, pack_grey
from .images import VERIFY_SIDE, is_image_path, read_bytes
from .index import open_index


@dataclass
class SyncReport:
    """What an indexing run did; ``to_dict`` is the ``index --json`` document."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    moved: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    embedded: int = 0
    found: int = 0  # image files found under the paths
    skipped_failures: int = 0  # failed before and unchanged since: listed in failed, not retried

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.embedded / self.seconds, 2) if self.seconds > 0 else 0.0,
            "embedded": self.embedded,
            "found": self.found,
            "failed_before_not_retried": self.skipped_failures,
        }


def sync(
    collection: Collection,
    paths: Sequence[str | os.PathLike[str]],
    model,
    *,
    model_spec: str,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    embedder=None,
    on_progress: Callable[[int, int], None] | None = None,
    only: Callable[[str], bool] | None = None,
    pipeline: str | None = None,
) -> SyncReport:
    """Bring ``collection`` up to date with ``paths`` (files or folders).

    New and changed files are embedded; files gone from a scanned folder leave the
    collection; a moved or renamed file keeps its row and vector. Results are committed
    batch by batch, so a killed run loses at most one batch of work.

    Args:
        collection: the collection to write (its run lock is taken for the whole run).
        paths: image files and folders, scanned recursively.
        model: the embedding model (``imagespace.create_model(...)``).
        model_spec: how to make ``model`` again (a registry name or a model folder), stored
            so that searches load the same model.
        embedder: replaces the embedding step only (the plan and the writes stay the same):
            a callable like :func:`imagespace.embed.embed_files`, e.g.
            ``distributed.ray_embedder()``.
        on_progress: ``on_progress(done, total)``, called before the first batch and after each.
        only: keep only the files (absolute paths) it accepts, as if the others were not
            there: a shard of a collection split by hash (``sharding``) scans the user's
            folders and keeps its own files, so files gone from those folders leave it too.
        pipeline: the vector pipeline of a new collection (or of one re-embedded with another
            model): ``centred`` (default) or ``raw`` (see :mod:`imagespace.vector_pipeline`).
            A collection keeps its own otherwise.

    Returns:
        A :class:`SyncReport`.

    Example:
        >>> with Collection("photos.imagespace") as coll:  # doctest: +SKIP
        ...     report = sync(coll, ["~/Pictures"], create_model(), model_spec="efficientnet-lite0")
    """
    started = time.perf_counter()
    report = SyncReport()
    with collection.lock():
        if collection.model_id != model.model_id:
            # A new collection, or re-indexing with another model: every row made by
            # another model counts as changed and is re-embedded in place, resumably.
            collection.bind_model(model.model_id, model_spec, model.dim, pipeline)
        scan = scan_paths(paths)
        if only is not None:
            scan.files = {p: st for p, st in scan.files.items() if only(p)}
            scan.failed = [f for f in scan.failed if only(f["path"])]
        report.failed.extend(scan.failed)
        report.found = len(scan.files)
        collection.remember_roots(scan.roots)
        plan = plan_changes(collection, scan, model.model_id)
        report.unchanged = plan.unchanged
        collection.write_file_changes(plan.moved, plan.touched, plan.gone)
        report.moved = len(plan.moved)
        report.removed = len(plan.gone)
        collection.forget_failures_under(scan.roots, scan.files)

        # A file that failed to decode and has not changed since (same size and mtime)
        # would fail again: it is listed, not retried, until it changes.
        remembered = collection.known_failures(scan.roots)
        skipped: list[dict] = []
        retry: list[str] = []
        for path in plan.changed + plan.added:
            known_failure = remembered.get(path)
            if known_failure is not None and _still_failing(known_failure, scan.files[path]):
                skipped.append({"path": path, "error": known_failure[2], "retried": False})
            else:
                retry.append(path)
        known = set(plan.changed)
        to_embed = sorted(retry)
        if on_progress is not None:
            on_progress(0, len(to_embed))
        # Large JPEGs decode for the model at the scale duplicate verification decodes them
        # at too: keep that grey image for the duplicate pass (its decode is most of its cost).
        store = FeatureStore(collection.root if embedder is None and to_embed else None)
        extra = {"grey_side": VERIFY_SIDE} if store.enabled else {}
        try:
            for batch in (embedder or embed_files)(
                to_embed, model, batch_size=batch_size, workers=workers, total=len(to_embed), progress=progress, **extra
            ):
                ok = [r for r in batch if not hasattr(r, "error")]
                bad = [r for r in batch if hasattr(r, "error")]
                collection.write_embedded(ok, bad)
                store.put("grey", [(r.file.digest, pack_grey(r.grey)) for r in ok if getattr(r, "grey", None) is not None])
                report.embedded += len(ok)
                for r in ok:
                    if r.file.path in known:
                        report.updated += 1
                    else:
                        report.added += 1
                report.failed.extend({"path": r.path, "error": r.error} for r in bad)
                if on_progress is not None:
                    on_progress(report.embedded + len(report.failed) - len(scan.failed), len(to_embed))
        finally:
            store.close()
        report.failed.extend(skipped)
        report.skipped_failures = len(skipped)
        # Files that fail now but were indexed before keep their old row: the photo is
        # still there on disk, even if we could not read it this time.
        # Learn the collection's mean again if it has doubled or halved since (one
        # transaction with the rewrite of every stored vector; the index then catches up).
        collection.refit_pipeline()
        # The index that searches will open (by size: in-memory graph or compressed on
        # disk), brought up to date now so that the first query does not pay for it.
        open_index(collection).save_if_changed()
        collection.set_meta("last_indexed_at", repr(time.time()))
    report.seconds = time.perf_counter() - started
    return report


# -- plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a run does to the rows under the scanned roots."""

    changed: list[str] = field(default_factory=list)  # in the collection, to embed again
    added: list[str] = field(default_factory=list)  # new files, to embed
    moved: list[tuple[int, str, int, int]] = field(default_factory=list)  # (id, new path, size, mtime_ns)
    touched: list[tuple[int, int]] = field(default_factory=list)  # (id, mtime_ns): same bytes, new mtime
    gone: list[int] = field(default_factory=list)  # ids of rows whose files are gone
    unchanged: int = 0


def plan_changes(collection: Collection, scan: Scan, model_id: str) -> Plan:
    """Compare the scanned files with the rows under the scanned roots."""
    plan = Plan()
    existing = collection.rows_under(scan.roots)
    # A folder we could not list is unreadable, not empty: its rows stay.
    existing = {p: r for p, r in existing.items() if not any(_is_under(p, u) for u in scan.unlisted)}
    new_paths: list[tuple[str, os.stat_result]] = []
    for path, st in scan.files.items():
        row = existing.pop(path, None)
        if row is None:
            new_paths.append((path, st))
            continue
        row_id, size, mtime_ns, digest, row_model = row
        if row_model == model_id and size == st.st_size and mtime_ns == st.st_mtime_ns:
            plan.unchanged += 1
        elif row_model == model_id and size == st.st_size and _same_digest(path, digest):
            plan.touched.append((row_id, st.st_mtime_ns))  # same bytes, new mtime: nothing to embed
            plan.unchanged += 1
        else:
            plan.changed.append(path)
    # What is left of `existing` is gone from disk. A new file with the same bytes as
    # a vanished row is that file moved: keep its row instead of embedding it again.
    vanished = {row[3]: (p, row) for p, row in existing.items() if row[4] == model_id}
    vanished_sizes = {row[1] for _, row in vanished.values()}
    for path, st in new_paths:
        if st.st_size in vanished_sizes:
            try:
                data = read_bytes(path)
            except Exception:  # noqa: BLE001 - unreadable now: the embed step reports it
                data = None
            # Rows of older collections hold the older kind of digest: try both.
            digest = None if data is None else next(
                (d for d in (content_digest(data), legacy_digest(data)) if d in vanished), None)
            if digest in vanished:
                old_path, row = vanished.pop(digest)
                existing.pop(old_path, None)
                plan.moved.append((row[0], path, st.st_size, st.st_mtime_ns))
                continue
        plan.added.append(path)
    plan.gone = [row[0] for row in existing.values()]
    return plan


def _still_failing(known: tuple[int | None, int | None, str], st: os.stat_result) -> bool:
    """A recorded failure still holds for the file: same size and mtime, and not a failure
    of the model (a batch that failed in the model may pass on the next run)."""
    size, mtime_ns, error = known
    return size == st.st_size and mtime_ns == st.st_mtime_ns and not error.startswith(_TRANSIENT_ERRORS)


# Failures that say nothing about the file's bytes, always retried: the model failing on a
# batch, and the file not readable now (permissions change without changing the mtime).
_TRANSIENT_ERRORS = ("model failed on this batch", "unexpected error", "permission denied", "no such file", "cannot read file")


def _same_digest(path: str, digest: str) -> bool:
    try:
        return file_matches(path, digest)
    except Exception:  # noqa: BLE001
        return False


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- scan ----------------------------------------------------------------------------------


@dataclass
class Scan:
    """The image files under some roots, and what could not be read."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)  # roots that exist: rows under them may be removed
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed: rows under them stay


def scan_paths(paths: Sequence[str | os.PathLike[str]]) -> Scan:
    """Every image file under ``paths``, with its stat; problems become ``failed`` entries.

    Symlinked folders are not followed (no loops); symlinked files are. Hidden files and
    folders (a leading dot) are skipped. A root that does not exist is reported and its
    rows are kept: an unmounted drive must not empty the collection.
    """
    scan = Scan()
    for raw in paths:
        root = os.path.abspath(os.fspath(raw))
        try:
            st = os.stat(root)
        except FileNotFoundError:
            scan.failed.append({"path": root, "error": "no such file or folder"})
            continue
        except OSError as e:
            scan.failed.append({"path": root, "error": f"cannot read: {e.strerror or e}"})
            continue
        if statmod.S_ISDIR(st.st_mode):
            scan.roots.append(root)
            _walk(root, scan)
        elif statmod.S_ISREG(st.st_mode):
            scan.roots.append(root)
            scan.files[root] = st
        else:
            scan.failed.append({"path": root, "error": "not a regular file or folder"})
    return scan


def _walk(root: str, scan: Scan) -> None:
    def onerror(e: OSError) -> None:
        scan.failed.append({"path": e.filename or root, "error": f"cannot list folder: {e.strerror or e}"})
        scan.unlisted.append(e.filename or root)

    for folder, dirs, files in os.walk(root, onerror=onerror, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if is_image_path(d):
                scan.failed.append({"path": os.path.join(folder, d), "error": "is a directory, not an image file"})
        for name in sorted(files):
            if name.startswith(".") or not is_image_path(name):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError as e:
                reason = "broken symbolic link" if os.path.islink(path) else f"cannot stat: {e.strerror or e}"
                scan.failed.append({"path": path, "error": reason})
                continue
            if not statmod.S_ISREG(st.st_mode):
                scan.failed.append({"path": path, "error": "not a regular file"})
                continue
            scan.files[path] = st
