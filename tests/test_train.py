"""train/: data, augmentations, losses, metrics, and each mode for a few steps on tiny data.

The quality figures (flowers12, cifar10) live in benchmarks/bench_train.py, not here.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import make_photo

from imagespace.models import create_model
from imagespace.train import augment, losses, metrics
from imagespace.train.data import DataError, check_supervised, decode_all, open_image_set, split_validation
from imagespace.train.pipeline import TrainConfig, run_training
from imagespace.train.workdir import RunError


def make_classes(root: Path, n_classes: int = 3, per_class: int = 4, size=(40, 32), broken: bool = False) -> Path:
    """Class folders of small synthetic photos; each class shares a dominant colour."""
    for c in range(n_classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.asarray(make_photo(100 * c + i, size)).astype(np.int16)
            img[..., c % 3] = np.clip(img[..., c % 3] + 90, 0, 255)  # learnable: a class colour
            from PIL import Image

            Image.fromarray(img.astype(np.uint8)).save(folder / f"img_{i}.jpg", quality=90)
    if broken:
        (root / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


# -- data ----------------------------------------------------------------------------------


def test_labelled_folder_split_and_decode_failures(tmp_path):
    root = make_classes(tmp_path / "data", n_classes=3, per_class=5, broken=True)
    ds = check_supervised(open_image_set(root))
    assert ds.classes == ["class_0", "class_1", "class_2"]
    assert len(ds) == 16 and np.bincount(ds.labels).tolist() == [6, 5, 5]
    train, val = split_validation(ds.labels, 0.2, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(ds)
    assert set(ds.labels[val]) == {0, 1, 2}  # stratified: every class on both sides
    assert (split_validation(ds.labels, 0.2, seed=0)[1] == val).all()  # same seed, same split
    pixels, kept, failures = decode_all(ds, 24)
    assert pixels.shape == (15, 24, 24, 3) and pixels.dtype == np.uint8
    assert len(failures) == 1 and failures[0]["path"].endswith("broken.jpg")
    assert "corrupt" in failures[0]["error"]  # the reason from imagespace.images


def test_supervised_needs_two_classes_and_drops_single_image_classes(tmp_path):
    one = make_classes(tmp_path / "one", n_classes=1, per_class=4)
    with pytest.raises(DataError, match="at least 2 classes"):
        check_supervised(open_image_set(one))
    flat = tmp_path / "flat"
    flat.mkdir()
    make_photo(1).save(flat / "a.jpg")
    make_photo(2).save(flat / "b.jpg")
    with pytest.raises(DataError, match="no class subfolders"):
        check_supervised(open_image_set(flat))
    root = make_classes(tmp_path / "three", n_classes=3, per_class=3)
    for f in list((root / "class_2").iterdir())[1:]:
        f.unlink()
    ds = check_supervised(open_image_set(root))
    assert ds.classes == ["class_0", "class_1"]
    assert any("'class_2' has only 1 image" in s["error"] for s in ds.skipped)
    with pytest.raises(DataError, match="not found"):
        open_image_set(tmp_path / "missing")


def test_zip_read_without_unpacking(tmp_path):
    path = tmp_path / "tiny.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 3), ("test", 2)):
            for c in ("cat", "dog"):
                for i in range(n):
                    from io import BytesIO

                    buf = BytesIO()
                    make_photo(i + (10 if c == "dog" else 0), (32, 32)).save(buf, "JPEG")
                    zf.writestr(f"{split}/{c}/{i}.jpg", buf.getvalue())
        zf.writestr("train/dog/bad.jpg", b"garbage")
    ds = open_image_set(path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 7
    assert all(item.startswith("train/") for item in ds.items)
    test = open_image_set(path, zip_split="test")
    assert len(test) == 4 and all(item.startswith("test/") for item in test.items)
    pixels, kept, failures = decode_all(ds, 32)
    assert pixels.shape == (6, 32, 32, 3)
    assert len(failures) == 1 and "bad.jpg" in failures[0]["path"]
    assert not list(tmp_path.glob("train"))  # nothing unpacked


# -- augmentations, losses, metrics ---------------------------------------------------------


def test_augmentations_shapes_and_effects():
    rng = np.random.default_rng(0)
    img = np.asarray(make_photo(3, (80, 60)))
    crop = augment.random_resized_crop(img, 48, rng)
    assert crop.shape == (48, 48, 3) and crop.dtype == np.uint8
    assert (augment.hflip(img)[:, 0] == img[:, -1]).all()
    jittered = augment.color_jitter(img, rng, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)
    assert jittered.shape == img.shape and not np.array_equal(jittered, img)
    same = augment.color_jitter(img, rng, 0, 0, 0, 0)
    assert np.array_equal(same, img)
    grey = augment.grayscale(img)
    assert (grey[..., 0] == grey[..., 1]).all()
    batch = augment.augment_batch(np.stack([img, img]), 32, np.random.default_rng(1), augment.AugmentConfig.strong())
    assert batch.shape == (2, 32, 32, 3) and not np.array_equal(batch[0], batch[1])
    again = augment.augment_batch(np.stack([img, img]), 32, np.random.default_rng(1), augment.AugmentConfig.strong())
    assert np.array_equal(batch, again)  # reproducible from the seed


def test_losses_prefer_embeddings_that_match_labels():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    good = torch.nn.functional.normalize(torch.eye(3)[labels] + 0.05 * torch.randn(6, 3), dim=1)
    bad = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    assert losses.supcon_loss(good, labels) < losses.supcon_loss(bad, labels)
    z1 = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert losses.nt_xent_loss(z1, z1) < losses.nt_xent_loss(z1, torch.nn.functional.normalize(torch.randn(8, 16), dim=1))
    for name in ("proxy-anchor", "arcface"):
        loss = losses.make_loss(name, 3, 3)
        with torch.no_grad():
            loss.proxies.copy_(torch.eye(3))
        assert loss(good, labels) < loss(bad, labels)
        loss(bad, labels).backward()
        assert loss.proxies.grad is not None
    with pytest.raises(ValueError, match="unknown loss"):
        losses.make_loss("triplet-ish", 3, 3)


def test_retrieval_metrics():
    labels = np.array([0, 0, 1, 1])
    perfect = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    m = metrics.retrieval_metrics(perfect, labels)
    assert m["precision_at_1"] == 1.0 and m["map"] == 1.0 and m["queries"] == 4
    swapped = metrics.retrieval_metrics(perfect, np.array([0, 1, 0, 1]))
    assert swapped["precision_at_1"] == 0.0 and swapped["map"] < 1.0
    assert metrics.knn_accuracy(perfect, labels, perfect[[0, 2]], np.array([0, 1]), k=1) == 1.0
    tiny = metrics.split_metrics(perfect[[0, 2]], np.array([0, 1]), perfect[[1, 3]], np.array([0, 1]))
    assert tiny["map"] == 1.0 and "training" in tiny["protocol"]


# -- the modes, a few steps each --------------------------------------------------------------


def _onnx_io(model_dir: Path) -> tuple[list[str], int, list[str]]:
    graph = onnx.load(str(model_dir / "model.onnx")).graph
    return [i.name for i in graph.input], graph.input[0].type.tensor_type.elem_type, [o.name for o in graph.output]


def test_self_supervised_on_unlabelled_images(tmp_path, photo_folder):
    data = photo_folder(8, name="unlabelled", size=(48, 40))
    out = tmp_path / "ssl"
    result = run_training(TrainConfig(data=str(data), out=str(out), mode="self-supervised", epochs=2, views=3,
                                      batch_size=4, dim=32))
    m = result["metrics"]
    assert m["mode"] == "self-supervised" and m["epochs"] == 2 and m["classes"] == 0
    assert "note" in m["validation"]  # no labels: no mAP, but the label-free view check
    assert set(m["view_retrieval"]["new"]) == {"view_top1", "view_mean_rank"}
    names, dtype, outputs = _onnx_io(out)
    assert names == ["pixels"] and dtype == onnx.TensorProto.UINT8 and outputs == ["features", "logits"]
    model = create_model(str(out))
    side = model.input_size  # the base network's (the default's)
    vecs = model.embed(np.stack([np.asarray(make_photo(1, (side, side)))] * 2))
    assert vecs.vectors.shape == (2, 32) and vecs.tags[0]  # ImageNet tags still there
    card = json.loads((out / "imagespace-model.json").read_text())
    assert card["model_id"].startswith("imagespace-train/self-supervised/") and card["imagenet_labels"]


def test_finetune_one_step_on_real_network(tmp_path):
    data = make_classes(tmp_path / "data", n_classes=2, per_class=3)
    out = tmp_path / "ft"
    result = run_training(TrainConfig(data=str(data), out=str(out), mode="finetune", epochs=1, image_size=64,
                                      batch_size=2, max_steps=1, val_fraction=0.3))
    m = result["metrics"]
    assert m["mode"] == "finetune" and m["epochs"] == 1 and m["stopped"] in ("max-steps", "epochs")
    assert m["validation"]["new"]["map"] is not None and m["validation"]["pretrained"]["map"] is not None
    names, dtype, outputs = _onnx_io(out)
    assert outputs[0] == "features" and dtype == onnx.TensorProto.UINT8
    model = create_model(str(out))
    assert model.input_size == 64 and model.labels == ["class_0", "class_1"]
    out_vec = model.embed(np.zeros((2, 64, 64, 3), np.uint8))
    assert out_vec.vectors.shape == (2, 1280) and out_vec.tags[0][0][0] in ("class_0", "class_1")


def test_scratch_trains_resumes_after_a_kill_and_exports(tmp_path, monkeypatch):
    data = make_classes(tmp_path / "data", n_classes=3, per_class=6, size=(32, 32))
    out = tmp_path / "scratch"
    config = dict(data=str(data), out=str(out), mode="scratch", epochs=3, batch_size=4, width=4, image_size=16,
                  compare=False)
    # Kill the run in the middle of its second epoch, after the first epoch's checkpoint.
    from imagespace.train import trainer

    calls = {"n": 0}
    real_set_lr = trainer._set_lr

    def dying_set_lr(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 steps per epoch (12 training images / batch 4): inside epoch 2
            raise KeyboardInterrupt
        return real_set_lr(*args, **kwargs)

    monkeypatch.setattr(trainer, "_set_lr", dying_set_lr)
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig(**config))
    assert (out / "checkpoint.pt").is_file() and not (out / "model.onnx").exists()
    monkeypatch.setattr(trainer, "_set_lr", real_set_lr)
    with pytest.raises(RunError, match="already exists"):
        run_training(TrainConfig(**config))
    result = run_training(TrainConfig(**{**config, "resume": True}))
    m = result["metrics"]
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]  # epoch 1 from before the kill
    assert m["epochs"] == 3 and "pretrained" not in m["validation"]
    model = create_model(str(out))
    assert model.input_size == 16 and model.dim == 32 and model.labels == ["class_0", "class_1", "class_2"]
    assert json.loads((out / "metrics.json").read_text())["model_id"] == model.model_id


def test_resume_and_overwrite_rules(tmp_path):
    data = make_classes(tmp_path / "data", n_classes=2, per_class=3)
    with pytest.raises(RunError, match="nothing to resume"):
        run_training(TrainConfig(data=str(data), out=str(tmp_path / "none"), resume=True))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a model folder"):
        run_training(TrainConfig(data=str(data), out=str(stranger), overwrite=True))
    assert (stranger / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="unknown mode"):
        run_training(TrainConfig(data=str(data), out=str(tmp_path / "x"), mode="magic"))
    with pytest.raises(DataError, match="not found"):
        run_training(TrainConfig(data=str(tmp_path / "nowhere"), out=str(tmp_path / "y")))
    # Every image of one class unreadable: one class is left, and the message says why.
    for f in (data / "class_1").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(DataError, match="2 classes.*could not be read"):
        run_training(TrainConfig(data=str(data), out=str(tmp_path / "z"), mode="scratch", image_size=16, width=4))
