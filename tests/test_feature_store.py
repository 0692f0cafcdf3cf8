"""The per-image store beside a collection (grey images from indexing, features from the
duplicate pass): bounded in bytes, oldest out first; and a pass's own scratch file."""

from __future__ import annotations

import numpy as np

from imagespace.feature_store import FILE_NAME, FeatureStore, ScratchFile, pack_grey, unpack_grey


def test_oldest_entries_leave_first_once_over_the_limit(tmp_path):
    store = FeatureStore(tmp_path, limit_bytes=3000)
    store.put("grey", [(f"d{i}", bytes([i]) * 1000) for i in range(5)])
    assert store.total <= 3000
    assert [store.get("grey", f"d{i}") is not None for i in range(5)] == [False, False, True, True, True]
    store.close()
    again = FeatureStore(tmp_path, limit_bytes=3000)
    assert again.total == 3000 and again.get("grey", "d4") == bytes([4]) * 1000
    again.close()


def test_a_pass_scratch_file_reads_back_by_digest_and_leaves_nothing(tmp_path):
    scratch = ScratchFile(tmp_path)
    scratch.put([(f"d{i}", bytes([i]) * 1000) for i in range(4)])
    scratch.put([("d1", b"z" * 1000)])  # computed again: the newer wins
    assert scratch.get("d0") == bytes([0]) * 1000 and scratch.get("d1") == b"z" * 1000 and scratch.get("x") is None
    assert [d for d, _ in scratch.newest(2500)] == ["d2", "d3"]  # the newest that fit, oldest of them first
    assert list(tmp_path.iterdir()) == []  # an unnamed file: a killed pass leaves nothing either
    scratch.close()
    assert scratch.get("d0") is None and scratch.newest(2500) == []
    scratch.put([("d9", b"x")])  # after closing (or a full disk): keeps nothing, raises nothing
    assert scratch.get("d9") is None


def test_the_store_stays_within_its_limit_whatever_is_put(tmp_path):
    old = FeatureStore(tmp_path, limit_bytes=2500)
    old.put("grey", [("old", b"x" * 1000)])
    old.put("features", [(f"d{i}", b"y" * 1000) for i in range(4)], replaces="grey")
    assert old.get("grey", "old") is None and old.total <= 2500  # oldest first
    assert old.get("features", "d3") is not None and old.get("features", "d0") is None
    old.close()


def test_features_replace_the_grey_image_and_a_broken_file_is_no_store(tmp_path):
    store = FeatureStore(tmp_path)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    store.put("grey", [("d", pack_grey(grey))])
    assert np.array_equal(unpack_grey(store.get("grey", "d")), grey)
    store.put("features", [("d", b"f")], replaces="grey")
    assert store.get("grey", "d") is None and store.get("features", "d") == b"f" and store.total == 1
    store.close()
    (tmp_path / FILE_NAME).write_bytes(b"not a database")
    broken = FeatureStore(tmp_path)
    assert not broken.enabled and broken.get("grey", "d") is None
    broken.put("grey", [("d", b"x")])  # nothing happens, nothing raises
    broken.close()


def test_a_full_disk_leaves_the_pass_to_its_memory(tmp_path, monkeypatch):
    import imagespace.feature_store as feature_store

    scratch = ScratchFile(tmp_path)
    scratch.put([("a", b"1" * 10)])

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feature_store.os, "pwrite", full)
    scratch.put([("b", b"2" * 10)])  # nothing raises: what leaves memory is computed again
    assert scratch.get("a") is None and scratch.get("b") is None and scratch.newest(100) == []
