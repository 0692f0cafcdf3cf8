"""The model registry, the ONNX graph against PyTorch, batch-size independence, tags."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FLOWERS12, make_photo

from imagespace.images import decode, load_image
from imagespace.models import DEFAULT_MODEL, EmbeddingModel, create_model, list_models, register_model
from imagespace.models.labels import imagenet_labels
from imagespace.models.model_dir import write_model_card
from imagespace.models.networks import NETWORKS


def sample_photos() -> list[Path]:
    """Real photos where the installed packages or ../shared have them."""
    paths: list[Path] = []
    try:
        import skimage.data

        base = Path(skimage.data.data_dir)
        paths += [base / n for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")]
    except ImportError:
        pass
    if (FLOWERS12 / "test").is_dir():
        paths += sorted((FLOWERS12 / "test").glob("*/*.jpg"))[::40][:3]
    return [p for p in paths if p.is_file()]


@pytest.fixture(scope="module")
def pixels(model) -> np.ndarray:
    """A batch of 8 real-ish images: real photos when present, synthetic ones to fill up."""
    batch = [load_image(p, size=model.input_size).pixels for p in sample_photos()[:8]]
    seed = 0
    while len(batch) < 8:
        batch.append(np.asarray(make_photo(seed, (224, 224))))
        seed += 1
    return np.stack(batch)


# -- registry ------------------------------------------------------------------------------


def test_registry_lists_the_default_model():
    assert DEFAULT_MODEL in list_models()
    assert list_models() == sorted(list_models())


def test_create_model_default(model):
    assert isinstance(model, EmbeddingModel)
    assert model.name == DEFAULT_MODEL
    assert create_model().model_id == model.model_id == create_model(DEFAULT_MODEL).model_id
    assert model.dim == 1280 and model.input_size == NETWORKS[DEFAULT_MODEL].input_size
    assert Path(model.onnx_path).is_file()


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError) as err:
        create_model("resnet-9000")
    assert "unknown model 'resnet-9000'" in str(err.value)
    assert DEFAULT_MODEL in str(err.value)  # it says what there is


def test_register_a_model(model):
    @register_model("test-copy-of-default")
    def factory(**kwargs):
        return EmbeddingModel(name="test-copy-of-default", model_id="test-copy/1", onnx_path=model.onnx_path, **kwargs)

    try:
        assert "test-copy-of-default" in list_models()
        m = create_model("test-copy-of-default")
        assert m.model_id == "test-copy/1" and m.dim == model.dim
    finally:
        from imagespace.models import registry

        registry._model_entrypoints.pop("test-copy-of-default", None)


def test_model_folder(tmp_path, model, pixels):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(model.onnx_path, folder / "model.onnx")
    write_model_card(folder, name="mine", model_id="mine/1", input_size=model.input_size, imagenet_labels=True)
    m = create_model(str(folder))
    assert (m.name, m.model_id) == ("mine", "mine/1")
    assert np.allclose(m.embed(pixels[:2]).vectors, model.embed(pixels[:2]).vectors, atol=1e-6)
    (folder / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        create_model(str(folder))


def test_wrong_input_shape_is_refused(model):
    with pytest.raises(ValueError, match="expected"):
        model.embed(np.zeros((2, 100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        model.embed(np.zeros((224, 224, 3), np.uint8))


# -- the ONNX graph ------------------------------------------------------------------------------


def test_embeddings_are_unit_float32(model, pixels):
    out = model.embed(pixels)
    assert out.vectors.dtype == np.float32 and out.vectors.shape == (len(pixels), 1280)
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(out.vectors))
    # different images, different vectors
    sims = out.vectors @ out.vectors.T
    assert sims[~np.eye(len(pixels), dtype=bool)].max() < 0.99


def test_onnx_matches_pytorch(model, pixels):
    torch = pytest.importorskip("torch")
    from imagespace.models.efficientnet import default_weights_path
    from imagespace.models.torch_nets import build_embedding_net

    net = build_embedding_net(default_weights_path(model.name), arch=model.name)
    with torch.no_grad():
        features, logits = net(torch.from_numpy(pixels))
    features, logits = features.numpy(), logits.numpy()
    onnx_features, onnx_logits = model.session.run(None, {"pixels": pixels})

    def cosines(a, b):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    assert cosines(features, onnx_features).min() >= 0.9999
    assert cosines(logits, onnx_logits).min() >= 0.9999
    assert np.array_equal(logits.argmax(1), onnx_logits.argmax(1))
    # and the model's normalised vectors are those features, normalised
    ref = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert cosines(ref, model.embed(pixels).vectors).min() >= 0.9999


def test_batch_size_does_not_change_the_vectors(model, pixels):
    five = pixels[:5]
    together = model.embed(five)
    one_by_one = np.stack([model.embed(five[i : i + 1]).vectors[0] for i in range(5)])
    assert np.abs(together.vectors - one_by_one).max() < 1e-4
    assert ((together.vectors * one_by_one).sum(1)).min() > 0.99999
    # and the tags do not depend on the batch either
    assert [t[0][0] for t in together.tags] == [model.embed(five[i : i + 1]).tags[0][0][0] for i in range(5)]
    # a batch larger than the export example (2) and an odd size both run
    assert model.embed(np.concatenate([pixels, pixels[:3]])).vectors.shape == (11, 1280)


# -- tags ------------------------------------------------------------------------------------


def test_imagenet_labels_are_readable_names():
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    for name in labels:
        assert name == name.strip() and 2 <= len(name) <= 40, name
        assert not re.fullmatch(r"n\d{8}", name), name  # not a WordNet id
        assert not name.lower().startswith(("a ", "an ")), name  # not a description
        assert "," not in name, name  # one name, not a list of synonyms
    assert labels[1] == "goldfish"
    assert labels[967] == "espresso"
    assert "cat" in labels[281].lower()


def test_tags_of_an_image(model, pixels):
    out = model.embed(pixels)
    labels = set(imagenet_labels())
    for tags in out.tags:
        assert 3 <= len(tags) <= 10
        assert all(t in labels for t, _ in tags)
        scores = [s for _, s in tags]
        assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)


def test_tags_name_what_is_in_a_real_photo(model):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image's sample photos are not installed")
    base = Path(skimage_data.data_dir)
    cat = decode((base / "chelsea.png").read_bytes(), size=model.input_size)
    coffee = decode((base / "coffee.png").read_bytes(), size=model.input_size)
    out = model.embed(np.stack([cat.pixels, coffee.pixels]))
    cat_tags = [t.lower() for t, _ in out.tags[0][:3]]
    coffee_tags = [t.lower() for t, _ in out.tags[1][:3]]
    assert any("cat" in t or t in ("egyptian mau", "lynx") for t in cat_tags), cat_tags
    assert any(t in ("espresso", "coffee mug", "cup", "eggnog", "cappuccino") for t in coffee_tags), coffee_tags
