"""EfficientNet-Lite1 and -Lite2 beside Lite0: registered, exported with a dynamic batch axis,
the ONNX graph agreeing with PyTorch, each with its own model id; and a collection keeping
the model it was made with whatever the default is."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_photo
from typer.testing import CliRunner

import imagespace.models
from imagespace.collection import Collection
from imagespace.models import create_model, list_models, model_info
from imagespace.models.networks import NETWORKS
from imagespace.search.text import classifier_rows

NEW = ("efficientnet-lite1", "efficientnet-lite2")


def _pixels(size: int, n: int) -> np.ndarray:
    return np.stack([np.asarray(make_photo(seed, (size, size))) for seed in range(n)])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_network_is_registered_with_its_input_size():
    for arch, net in NETWORKS.items():
        assert arch in list_models()
        info = model_info(arch)
        assert info["input_size"] == net.input_size and info["dim"] == 1280
    assert (NETWORKS["efficientnet-lite1"].input_size, NETWORKS["efficientnet-lite2"].input_size) == (240, 260)


@pytest.mark.parametrize("arch", NEW)
def test_network_loads_and_matches_pytorch(arch):
    torch = pytest.importorskip("torch")
    from imagespace.models.torch_nets import build_embedding_net

    model = create_model(arch)
    size = NETWORKS[arch].input_size
    assert model.name == arch and model.input_size == size and model.dim == 1280
    # a dynamic batch axis: the graph takes 1 and 3 images, and the batch changes nothing
    assert not isinstance(model.session.get_inputs()[0].shape[0], int)
    pixels = _pixels(size, 3)
    together = model.embed(pixels)
    alone = model.embed(pixels[:1])
    assert together.vectors.shape == (3, 1280) and alone.vectors.shape == (1, 1280)
    assert _cosines(together.vectors[:1], alone.vectors).min() > 0.99999
    assert len(together.tags[0]) == 5  # the ImageNet head comes along
    with pytest.raises(ValueError):
        model.embed(_pixels(224, 1))  # another network's input size is refused
    net = build_embedding_net(NETWORKS[arch].weights_path(), arch=arch)
    with torch.no_grad():
        features, _ = net(torch.from_numpy(pixels))
    assert _cosines(features.numpy(), together.vectors).min() >= 0.9999


def test_each_network_has_its_own_model_id():
    ids = {arch: create_model(arch).model_id for arch in NETWORKS}
    assert len(set(ids.values())) == len(ids)
    for arch, model_id in ids.items():
        assert model_id.startswith(arch + "/")
    # Lite0's id is the one its collections were made with before Lite1/Lite2 existed
    assert ids["efficientnet-lite0"].startswith("efficientnet-lite0/gem3-tf-resize224-v1/")


def test_models_command_lists_each_network():
    from imagespace.cli import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by_name = {m["name"]: m for m in doc["models"]}
    assert doc["default"] == imagespace.models.DEFAULT_MODEL and by_name[doc["default"]]["default"]
    for arch in NETWORKS:
        assert by_name[arch]["input_size"] == NETWORKS[arch].input_size and by_name[arch]["dim"] == 1280


def test_a_collection_keeps_its_model_when_the_default_changes(tmp_path, monkeypatch):
    """A Lite0 collection is searched and updated with Lite0 whatever the default is; naming
    another network re-embeds it in place."""
    from imagespace.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        make_photo(i, (96, 72)).save(photos / f"img_{i}.jpg", quality=90)
    db = tmp_path / "db"
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [*map(str, args), "--db", str(db), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert cli("index", photos, "--model", "efficientnet-lite0")["added"] == 4
    with Collection(db) as coll:
        lite0_id = coll.model_id
        ids_before = sorted(coll.conn.execute("SELECT id, path FROM images").fetchall())
    assert lite0_id.startswith("efficientnet-lite0/")

    other = "efficientnet-lite2" if imagespace.models.DEFAULT_MODEL != "efficientnet-lite2" else "efficientnet-lite1"
    monkeypatch.setattr(imagespace.models, "DEFAULT_MODEL", other)
    monkeypatch.setattr(imagespace.models.registry, "DEFAULT_MODEL", other)
    make_photo(9, (96, 72)).save(photos / "img_new.jpg", quality=90)
    report = cli("index", photos)  # no --model: the collection's model, not the default
    assert (report["added"], report["updated"], report["unchanged"]) == (1, 0, 4)
    hits = cli("search", photos / "img_2.jpg", "-k", "1")["results"]
    assert hits[0]["path"].endswith("img_2.jpg") and hits[0]["score"] > 0.999
    with Collection(db) as coll:
        assert coll.model_id == lite0_id

    report = cli("index", photos, "--model", "efficientnet-lite2")  # re-embeds in place
    assert (report["added"], report["updated"]) == (0, 5)
    with Collection(db) as coll:
        assert coll.model_id.startswith("efficientnet-lite2/") and coll.model_spec == "efficientnet-lite2"
        rows = sorted(coll.conn.execute("SELECT id, path FROM images").fetchall())
        assert set(ids_before) <= set(rows) and len(rows) == 5  # same rows, new vectors
        assert coll.count(coll.model_id) == 5
        # words still reach the image vectors through this network's own ImageNet classifier
        rows = classifier_rows(coll)
        assert rows is not None and rows.shape == (1000, 1280)
    hits = cli("search", photos / "img_2.jpg", "-k", "1")["results"]
    assert hits[0]["path"].endswith("img_2.jpg") and hits[0]["score"] > 0.999


def test_a_collection_without_a_recorded_spec_keeps_the_network_its_ids_name(tmp_path):
    """Collections from before the spec was kept have only a model id: they must keep the
    network it names (Lite0) now that the default is another, not be re-embedded with it."""
    from imagespace.space import ImageSpace

    lite0 = NETWORKS["efficientnet-lite0"]
    with Collection(tmp_path / "old") as coll:
        coll.bind_model("efficientnet-lite0/gem3-tf-resize224-v1/0123456789ab", "efficientnet-lite0", lite0.feature_dim)
        coll.conn.execute("DELETE FROM meta WHERE key='model_spec'")
        assert coll.get_meta("model_spec") is None
        assert coll.model_spec == "efficientnet-lite0"
        coll.set_meta("model_id", "my-trained-net/v3")  # not a network's id: no guess
        assert coll.model_spec is None
    assert imagespace.models.DEFAULT_MODEL != "efficientnet-lite0"
    with Collection(tmp_path / "old2") as coll:
        coll.bind_model("efficientnet-lite0/gem3-tf-resize224-v1/0123456789ab", "efficientnet-lite0", lite0.feature_dim)
        coll.conn.execute("DELETE FROM meta WHERE key='model_spec'")
    with ImageSpace(tmp_path / "old2") as space:
        assert space.collection.get_meta("model_spec") is None and space.model_spec == "efficientnet-lite0"


def test_training_starts_from_the_named_network(tmp_path):
    pytest.importorskip("torch")
    from test_train import make_classes

    from imagespace.train.data import DataError
    from imagespace.train.pipeline import TrainConfig, run_training

    data = make_classes(tmp_path / "data", n_classes=2, per_class=3)
    out = tmp_path / "adapter-lite1"
    result = run_training(TrainConfig(data=str(data), out=str(out), epochs=1, views=1, dim=16, val_fraction=0.3,
                                      base_model="efficientnet-lite1"))
    card = json.loads((out / "imagespace-model.json").read_text())
    assert card["input_size"] == 240 and card["architecture"]["backbone"] == "efficientnet-lite1"
    assert result["metrics"]["validation"]["pretrained"]["map"] is not None
    model = create_model(str(out))
    assert model.embed(_pixels(240, 2)).vectors.shape == (2, 16)
    with pytest.raises(DataError, match="pretrained network"):
        run_training(TrainConfig(data=str(data), out=str(tmp_path / "x"), base_model="efficientnet-lite0-int8"))
