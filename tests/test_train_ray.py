"""`imagespace train --engine ray`: Ray Train with 2 DDP workers on a local Ray of 2 CPUs."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from test_train import make_classes

pytest.importorskip("ray.train")
import ray  # noqa: E402

from imagespace.collection import Collection  # noqa: E402
from imagespace.indexing import sync  # noqa: E402
from imagespace.models import create_model  # noqa: E402
from imagespace.train.data import DataError  # noqa: E402
from imagespace.train.pipeline import TrainConfig, run_training  # noqa: E402
from imagespace.train.workdir import RunError  # noqa: E402


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

    # What `imagespace index DATA --model MODEL_DIR` does, without a second process start
    # (test_train_cli covers the command itself on a local run's MODEL_DIR).
    with Collection(tmp_path / "db") as coll:
        report = sync(coll, [str(data)], model, model_spec=str(out))
        assert report.added == 15 and not report.failed
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


# Long enough (8 epochs of 6 steps) that a kill lands while the workers train.
_LONGER = dict(epochs=8, checkpoint_every=2, image_size=32, width=8)


@pytest.fixture(scope="module")
def unbroken(ray_cluster, tmp_path_factory):
    """Data and the metrics of an unbroken 2-worker run on it, for the fault tests."""
    root = tmp_path_factory.mktemp("faults")
    data = make_classes(root / "data", n_classes=3, per_class=10, size=(48, 48))
    return data, run_training(_config(data, root / "unbroken", **_LONGER))["metrics"]


def _kill_workers_after_the_first_checkpoint(out, how_many: int) -> list[int]:
    killed: list[int] = []

    def run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if any((out / "ray").rglob("checkpoint.pt")):
                # A checkpoint counts once Ray Train's controller has registered it, a moment
                # after its files are written: kill a little later, still in the first epochs.
                time.sleep(2)
                for pid in _ray_worker_pids()[-how_many:]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
    return killed


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(unbroken, tmp_path):
    data, whole = unbroken
    out = tmp_path / "killed"
    killed = _kill_workers_after_the_first_checkpoint(out, 1)
    m = run_training(_config(data, out, **_LONGER))["metrics"]
    assert killed, "no Ray Train worker was found to kill"
    assert m["engine"]["restored_at"], "the run did not restore from a checkpoint"
    assert [h["epoch"] for h in m["history"]] == list(range(1, 9))
    # Order and augmentations are functions of (seed, epoch, step): the restored run ends
    # with the very weights of the unbroken one.
    assert m["model_id"] == whole["model_id"]


@pytest.mark.slow
def test_resume_continues_a_run_that_died(unbroken, tmp_path):
    data, whole = unbroken
    out = tmp_path / "died"
    killed = _kill_workers_after_the_first_checkpoint(out, 2)
    with pytest.raises(RunError, match="--resume"):
        run_training(_config(data, out, max_failures=0, **_LONGER))
    assert len(killed) == 2 and not (out / "model.onnx").exists()
    m = run_training(_config(data, out, resume=True, **_LONGER))["metrics"]
    assert m["engine"]["restored_at"] and [h["epoch"] for h in m["history"]] == list(range(1, 9))
    assert m["model_id"] == whole["model_id"]


def test_ray_engine_refuses_modes_that_train_a_head_on_cached_features(tmp_path):
    data = make_classes(tmp_path / "data", n_classes=2, per_class=2, size=(32, 32))
    with pytest.raises(DataError, match="--engine ray trains the CNN itself"):
        run_training(_config(data, tmp_path / "m", mode="adapter"))
    assert not (tmp_path / "m").exists()
