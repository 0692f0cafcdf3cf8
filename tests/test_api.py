"""The front door: the README's Python example runs as written, and every public name says how to use it."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo, run_cli

import imagespace

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- python-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python example marked <!-- python-example -->"
    return m.group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    home = tmp_path / "home"
    pictures = home / "Pictures"
    pictures.mkdir(parents=True)
    for i in range(8):
        make_photo(i, size=(1200, 800) if i % 2 else (320, 240)).save(pictures / f"img_{i}.jpg", quality=92)
    shutil.copyfile(pictures / "img_2.jpg", pictures / "copy_of_2.jpg")  # a copy to find
    make_photo(3, size=(400, 300)).save(tmp_path / "query.jpg")
    monkeypatch.setenv("HOME", str(home))  # "~" in the example is this folder
    monkeypatch.chdir(tmp_path)

    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)  # noqa: S102 - our own README

    space, hits = scope["space"], scope["hits"]
    try:
        assert space.root == (pictures / ".imagespace").resolve() and len(space) == 9
        assert 1 <= len(hits) <= 5 and all(isinstance(h, imagespace.Hit) for h in hits)
        assert all(h.width > 1000 for h in hits) and hits == sorted(hits, key=lambda h: -h.score)
        assert scope["dogs"] and all(isinstance(h, imagespace.Hit) for h in scope["dogs"])
        assert any({Path(p).name for p in g} >= {"img_2.jpg", "copy_of_2.jpg"} for g in scope["copies"])
        assert scope["groups"].clusters
        ids, vectors = scope["ids"], scope["vectors"]
        assert sorted(ids.tolist()) == sorted(h.id for h in hits)
        assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        # incremental, as the CLI: a second run embeds nothing
        again = space.index(["~/Pictures"])
        assert (again.added, again.updated, again.unchanged) == (0, 0, 9)
    finally:
        space.close()


def test_errors_are_the_exported_types(tmp_path):
    with pytest.raises(imagespace.CollectionError, match="no collection"):
        imagespace.open(tmp_path / "nothing", create=False)
    with imagespace.open(tmp_path / "empty") as space:
        with pytest.raises(imagespace.CollectionError, match="empty"):
            space.search(text="a dog")
    assert issubclass(imagespace.QueryError, Exception) and issubclass(imagespace.ImageError, Exception)


def test_an_empty_collection_is_one_error_from_every_door(tmp_path):
    """Python, the command line and the API say the same thing when nothing is indexed yet."""
    from fastapi.testclient import TestClient

    from imagespace.collection import Collection
    from imagespace.server import create_app

    db = tmp_path / "db"
    Collection(db, create=True).close()
    with imagespace.open(db, create=False) as space:
        with pytest.raises(imagespace.EmptyCollectionError) as caught:
            space.search(like=tmp_path / "x.jpg")
        message = str(caught.value)
        for ask in (lambda: space.search(text="a dog"), space.duplicates, space.clusters, lambda: space.layout(),
                    lambda: space.recommend([1]), lambda: space.model):
            with pytest.raises(imagespace.EmptyCollectionError) as again:
                ask()
            assert str(again.value) == message
    assert "is empty" in message and str(db.resolve()) in message
    for command in (["search", tmp_path / "x.jpg"], ["duplicates"]):
        out = run_cli(*command, "--db", db, "--json")
        assert out.returncode == 1 and out.stdout == "" and out.stderr.strip() == f"imagespace: error: {message}", out.stderr
    with TestClient(create_app(db), base_url="http://127.0.0.1") as client:
        for r in (client.get("/api/search", params={"q": "dog"}), client.get("/api/clusters"), client.get("/api/duplicates"),
                  client.post("/api/search/image", files={"file": ("q.jpg", b"not read", "image/jpeg")})):
            assert r.status_code == 409 and r.json() == {"detail": message}, r.text


def test_a_model_folder_becomes_an_absolute_spec(tmp_path, monkeypatch):
    from imagespace.models import resolve_model_spec

    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_spec("my-model") == str(folder.resolve())
    assert resolve_model_spec("efficientnet-lite2", "efficientnet-lite0") == "efficientnet-lite2"
    assert resolve_model_spec(None, "efficientnet-lite2") == "efficientnet-lite2"
    assert resolve_model_spec(None, None) == imagespace.DEFAULT_MODEL


@pytest.mark.parametrize("name", [n for n in imagespace.__all__ if n != "__version__"])
def test_every_public_name_has_a_docstring_with_an_example(name):
    obj = getattr(imagespace, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return  # constants: DEFAULT_MODEL, WHERE_HELP
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 40, f"imagespace.{name} has no docstring worth the name"
    if inspect.isfunction(obj) or name == "ImageSpace":
        assert "Example" in doc or ">>>" in doc, f"imagespace.{name}'s docstring has no example"
    if inspect.isclass(obj) and not issubclass(obj, Exception):
        for attr, member in vars(obj).items():
            if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                assert inspect.getdoc(member), f"imagespace.{name}.{attr} has no docstring"
