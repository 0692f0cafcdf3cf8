"""Streamed training batches: the same as in memory, shardable, restartable; Parquet listings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from test_train import make_classes

from imagespace.train.data import decode_all, open_image_set
from imagespace.train.finetune import make_augment
from imagespace.train.scratch import shift_flip_augment
from imagespace.train.stream import ArrayBatches, BatchPlan, StreamBatches


def _epochs(source, epochs=(0, 1), start_step=0):
    return [(e, x, y) for e in epochs for x, y in source.batches(e, start_step)]


def test_streaming_equals_in_memory_and_shards_make_the_same_global_batch(tmp_path):
    root = make_classes(tmp_path / "data", n_classes=3, per_class=4, size=(40, 32))
    ds = open_image_set(root)
    pixels, kept, failures = decode_all(ds, 24)
    assert len(kept) == 12 and not failures
    idx = np.arange(len(ds))
    for augment in (make_augment(24), shift_flip_augment(3)):
        plan = BatchPlan(len(idx), batch_size=4, seed=7)
        memory = _epochs(ArrayBatches(pixels, ds.labels, plan, augment))
        streamed = _epochs(StreamBatches(ds, idx, 24, plan, augment, threads=2, prefetch=2))
        assert len(memory) == len(streamed) == 6  # 3 full batches an epoch, 2 epochs
        for (e1, x1, y1), (e2, x2, y2) in zip(memory, streamed):
            assert e1 == e2 and x1.shape == (4, 24, 24, 3) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
        # Two data-parallel workers take complementary slots of the very same global batch.
        halves = [_epochs(StreamBatches(ds, idx, 24, BatchPlan(12, 4, 7, rank, 2), augment)) for rank in (0, 1)]
        for (_, x, y), (_, x0, y0), (_, x1, y1) in zip(memory, *halves):
            assert len(x0) == len(x1) == 2
            assert np.array_equal(x[0::2], x0) and np.array_equal(x[1::2], x1) and np.array_equal(y[1::2], y1)
        # Restarting at step 2 of epoch 1 continues exactly where the unbroken run was.
        tail = _epochs(ArrayBatches(pixels, ds.labels, plan, augment), epochs=(1,), start_step=2)
        assert len(tail) == 1 and np.array_equal(tail[0][1], memory[-1][1])
    # Each epoch has its own order, and the seed changes it.
    order0 = [y.tolist() for _, _, y in memory[:3]]
    order1 = [y.tolist() for _, _, y in memory[3:]]
    other_seed = [y.tolist() for _, _, y in _epochs(ArrayBatches(pixels, ds.labels, BatchPlan(12, 4, 8), augment))[:3]]
    assert order0 != order1 and order0 != other_seed


def test_stream_leaves_out_unreadable_images_with_reasons(tmp_path):
    root = make_classes(tmp_path / "data", n_classes=2, per_class=4, size=(32, 32), broken=True)
    ds = open_image_set(root)
    source = StreamBatches(ds, np.arange(len(ds)), 16, BatchPlan(len(ds), 3, 0), shift_flip_augment(2))
    seen = sum(len(x) for _, x, _ in _epochs(source, epochs=(0,)))
    assert seen == 8  # 3 batches of 3 slots, one of them the broken file
    assert len(source.failures) == 1 and source.failures[0]["path"].endswith("broken.jpg")


def test_parquet_listing_labels_from_folders_or_a_column(tmp_path):
    root = make_classes(tmp_path / "data", n_classes=2, per_class=3, size=(32, 32))
    folder = open_image_set(root)
    listing = tmp_path / "listing.parquet"
    # One local path, the rest as file:// URLs: read through fsspec like s3:// would be.
    paths = [folder.items[0]] + [f"file://{p}" for p in folder.items[1:]]
    pq.write_table(pa.table({"path": paths}), listing)
    ds = open_image_set(listing)
    assert ds.classes == folder.classes and ds.labels.tolist() == folder.labels.tolist()
    pixels, kept, failures = decode_all(ds, 16)
    assert pixels.shape == (6, 16, 16, 3) and not failures
    assert np.array_equal(pixels, decode_all(folder, 16)[0])
    labelled = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"path": [p.split("/")[-2] + "/" + p.split("/")[-1] for p in folder.items],
                             "label": ["b", "a", "b", "a", "b", "a"]}), labelled)
    ds2 = open_image_set(labelled)  # relative paths: read from the listing's folder
    assert ds2.classes == ["a", "b"] and ds2.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert ds2.items[0] == str(tmp_path / "class_0" / "img_0.jpg")
