"""`imagespace train --engine ray`: Ray Train with 2 DDP workers on a local Ray of 2 CPUs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from test_train import make_classes
from test_train_cli import run_cli

pytest.importorskip("ray.train")
import ray  # noqa: E402

from imagespace.collection import Collection  # noqa: E402
from imagespace.models import create_model  # noqa: E402
from imagespace.train.pipeline import TrainConfig, run_training  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), mode="scratch", epochs=2, batch_size=4, width=4, image_size=16,
                compare=False, engine="ray", workers=2, worker_cpus=1)
    return TrainConfig(**{**base, **kw})


def test_ray_train_two_workers_exports_a_model_dir_that_indexes(ray_cluster, tmp_path):
    data = make_classes(tmp_path / "data", n_classes=3, per_class=5, size=(32, 32))
    out = tmp_path / "model"
    m = run_training(_config(data, out))["metrics"]
    assert m["engine"]["name"] == "ray" and m["engine"]["workers"] == 2 and m["engine"]["global_batch"] == 4
    assert [h["epoch"] for h in m["history"]] == [1, 2] and m["epochs"] == 2
    assert m["settings"]["lr"] == pytest.approx(0.1 * 4 / 128)  # linear in the global batch
    assert m["validation"]["new"]["map"] is not None
    assert any((out / "ray").rglob("checkpoint.pt"))
    model = create_model(str(out))
    assert model.input_size == 16 and model.labels == ["class_0", "class_1", "class_2"]

    db = tmp_path / "db"
    r = run_cli("index", data, "--db", db, "--model", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 15
    with Collection(db) as coll:
        assert coll.model_id == m["model_id"] and coll.dim == model.dim == 32


def _ray_worker_pids() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"RayTrainWorker" in cmd:
            pids.append(int(name))
    return sorted(pids)


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, tmp_path):
    # Long enough (8 epochs of 6 steps) that the kill lands while the workers train.
    data = make_classes(tmp_path / "data", n_classes=3, per_class=10, size=(48, 48))
    config = dict(epochs=8, checkpoint_every=2, image_size=32, width=8)
    unbroken = run_training(_config(data, tmp_path / "unbroken", **config))["metrics"]
    out = tmp_path / "killed"
    killed: list[int] = []

    def kill_one_worker_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if any((out / "ray").rglob("checkpoint.pt")):
                # A checkpoint counts once Ray Train's controller has registered it, a moment
                # after its files are written: kill a little later, still in the first epochs.
                time.sleep(2)
                pids = _ray_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    m = run_training(_config(data, out, **config))["metrics"]
    killer.join(5)
    assert killed, "no Ray Train worker was found to kill"
    assert m["engine"]["restored_at"], "the run did not restore from a checkpoint"
    assert [h["epoch"] for h in m["history"]] == list(range(1, 9))
    # Order and augmentations are functions of (seed, epoch, step): the restored run ends
    # with the very weights of the unbroken one.
    assert m["model_id"] == unbroken["model_id"]
