"""Training beyond one machine (issue 20): ``python -m benchmarks.bench_train_scale [PART...]``.

Parts (default: all, in this order; each small enough for a shared 2-core machine):

- ``ray``: Ray Train with 2 workers of 1 CPU each against the single process, same global
  batch, epochs and seed: --mode scratch on a cifar10 subset (``--cifar-per-class`` images a
  class from cifar10-jpg.zip's train split, copied into a small zip), two seeds each, and
  --mode finetune on flowers12/train (one seed, ``--ft-size`` px). Validation precision@1 and
  mAP (the pipeline's own split), training images/s of the loop, and the wall time, whose
  difference is Ray's start-up (cluster, worker group, imports) and the export.
- ``kill``: the scratch run of seed 0 again, with one Ray Train worker SIGKILLed after the
  first checkpoint: where it was restored, and its metrics and model_id against the unbroken
  run's.
- ``rss``: peak RSS of one epoch of training batches, streamed (decode + augment on the fly,
  :class:`StreamBatches`) against the in-memory array the trainer held before (decode_all,
  then the same batches), over the whole 50,000-image cifar10 train split at 32 px and over
  ``--rss-big`` of them at 224 px (the finetune size); each in its own process. Then peak RSS
  of a real ``imagespace train --mode scratch`` over all 50,000 images (streamed, a few steps).

Every run writes under ``--work`` (default /tmp/imagespace-bench-train-scale). Prints one
JSON document per measurement and a summary table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from ._common import CIFAR10_ZIP, FLOWERS12, ROOT, Skip, need


def _cifar_subset(work: Path, per_class: int) -> Path:
    out = work / f"cifar10-{per_class}.zip"
    if out.is_file():
        return out
    counts: dict[str, int] = {}
    with zipfile.ZipFile(need(CIFAR10_ZIP)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in sorted(src.namelist()):
            parts = name.split("/")
            if len(parts) != 3 or parts[0] != "train" or not parts[2]:
                continue
            if counts.get(parts[1], 0) < per_class:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
                dst.writestr(name, src.read(name))
    return out


def _train(args: list[str], out: Path, threads: int | None = None) -> dict:
    """One CLI run; its metrics, wall time and peak RSS of the driver process."""
    cmd = [sys.executable, "-m", "imagespace", "train", *args, "--out", str(out), "--overwrite", "--json",
           "--no-compare"]
    started = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    m = json.loads(r.stdout)["metrics"]
    rss_mb = int(r.stderr.strip().splitlines()[-1]) / 1024
    val = m["validation"].get("new", {})
    images = sum(h.get("images", 0) for h in m.get("history", []))
    return {"wall_s": round(wall, 1), "loop_s": m.get("train_seconds"),
            "images_per_s": round(images / m["train_seconds"], 1) if m.get("train_seconds") else None,
            "p_at_1": val.get("precision_at_1"), "map": val.get("map"), "model_id": m["model_id"],
            "epochs": m.get("epochs"), "restored_at": m.get("engine", {}).get("restored_at"),
            "driver_peak_rss_mb": round(rss_mb), "lr": m.get("settings", {}).get("lr")}


def _ray_args(workers: int = 2) -> list[str]:
    return ["--engine", "ray", "--workers", str(workers), "--worker-cpus", "1"]


def part_ray(work: Path, a, rows: list) -> None:
    cifar = _cifar_subset(work, a.cifar_per_class)
    scratch = ["--data", str(cifar), "--mode", "scratch", "--epochs", str(a.scratch_epochs), "--batch-size", "128",
               "--width", "16"]
    for seed in (0, 1):
        for engine in ("local", "ray"):  # interleaved, so machine load falls on both alike
            extra = _ray_args() if engine == "ray" else []
            res = _train([*scratch, "--seed", str(seed), *extra], work / f"scratch-{engine}-{seed}",
                         a.local_threads if engine == "local" else None)
            rows.append({"part": "ray", "mode": "scratch", "engine": engine, "seed": seed, **res})
            print(json.dumps(rows[-1]), flush=True)
    ft = ["--data", str(need(FLOWERS12 / "train")), "--mode", "finetune", "--epochs", "1", "--batch-size", "16",
          "--image-size", str(a.ft_size)]
    for engine in ("local", "ray"):
        extra = _ray_args() if engine == "ray" else []
        res = _train([*ft, "--seed", "0", *extra], work / f"finetune-{engine}", a.local_threads if engine == "local" else None)
        rows.append({"part": "ray", "mode": "finetune", "engine": engine, "seed": 0, **res})
        print(json.dumps(rows[-1]), flush=True)


def _worker_pids() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if b"RayTrainWorker" in f.read():
                        pids.append(int(name))
            except OSError:
                pass
    return sorted(pids)


def part_kill(work: Path, a, rows: list) -> None:
    cifar = _cifar_subset(work, a.cifar_per_class)
    args = ["--data", str(cifar), "--mode", "scratch", "--epochs", str(a.scratch_epochs), "--batch-size", "128",
            "--width", "16", "--seed", "0", "--checkpoint-every", "5", *_ray_args()]
    out = work / "scratch-ray-killed"
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not killed:
            if (out / "ray").is_dir() and any((out / "ray").rglob("checkpoint.pt")):
                time.sleep(3)  # past the controller's registration of that checkpoint
                pids = _worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = _train(args, out)
    rows.append({"part": "kill", "mode": "scratch", "engine": "ray, one worker SIGKILLed", "seed": 0,
                 "killed_pid": killed[0] if killed else None, **res})
    print(json.dumps(rows[-1]), flush=True)


def _rss_child(kind: str, limit: int, size: int) -> None:
    """In its own process: one epoch of batches, streamed or from memory; prints peak RSS."""
    import numpy as np

    from imagespace.train.data import decode_all, open_image_set
    from imagespace.train.finetune import make_augment
    from imagespace.train.scratch import shift_flip_augment
    from imagespace.train.stream import ArrayBatches, BatchPlan, StreamBatches

    ds = open_image_set(CIFAR10_ZIP)
    if limit < len(ds):
        ds = ds.subset(np.sort(np.random.default_rng(0).choice(len(ds), limit, replace=False)))
    augment = shift_flip_augment(4) if size <= 64 else make_augment(size)
    idx = np.arange(len(ds))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if kind == "stream":
        source = StreamBatches(ds, idx, size, BatchPlan(len(idx), 128, 0), augment, threads=2)
    else:
        pixels, kept, _ = decode_all(ds, size, workers=2)
        source = ArrayBatches(pixels, ds.labels[kept], BatchPlan(len(kept), 128, 0), augment)
    n = sum(len(x) for x, _ in source.batches(0))
    print(json.dumps({"kind": kind, "images": n, "size": size, "seconds": round(time.perf_counter() - started, 1),
                      "rss_before_mb": round(base),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def part_rss(work: Path, a, rows: list) -> None:
    need(CIFAR10_ZIP)
    for limit, size in ((50000, 32), (a.rss_big, 224)):
        for kind in ("memory", "stream"):
            r = subprocess.run([sys.executable, "-m", "benchmarks.bench_train_scale", "_rss", kind, str(limit),
                                str(size)], capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            rows.append({"part": "rss", **json.loads(r.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    res = _train(["--data", str(CIFAR10_ZIP), "--mode", "scratch", "--epochs", "1", "--width", "16",
                  "--max-minutes", str(a.full_minutes)], work / "scratch-full-stream")
    rows.append({"part": "rss", "kind": "imagespace train --mode scratch, all 50,000 streamed", **res})
    print(json.dumps(rows[-1]), flush=True)


PARTS = {"ray": part_ray, "kill": part_kill, "rss": part_rss}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_rss"]:
        _rss_child(argv[1], int(argv[2]), int(argv[3]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_train_scale", description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/imagespace-bench-train-scale"))
    ap.add_argument("--cifar-per-class", type=int, default=300)
    ap.add_argument("--scratch-epochs", type=int, default=4)
    ap.add_argument("--ft-size", type=int, default=128)
    ap.add_argument("--rss-big", type=int, default=5000, help="images decoded at 224 px in the memory comparison")
    ap.add_argument("--local-threads", type=int, default=None,
                    help="OMP_NUM_THREADS of the single-process runs (default: PyTorch's, one per core); on a "
                         "machine shared with other work, 2 threads ran 4x slower than 1 here")
    ap.add_argument("--full-minutes", type=float, default=1.0, help="time box of the 50,000-image streamed run")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for part in a.parts:
        PARTS[part](a.work, a, rows)
    print("\npart  mode      engine                         seed  p@1     mAP     img/s   loop s  wall s  peak MB")
    for r in rows:
        if r["part"] == "rss" and "kind" in r and "images" in r:
            print(f"rss   {r['kind']:<8} {r['images']} images at {r['size']} px: peak RSS {r['peak_rss_mb']} MB "
                  f"(before {r['rss_before_mb']} MB), {r['seconds']} s")
            continue
        print(f"{r['part']:<5} {r.get('mode', ''):<9} {str(r.get('engine', r.get('kind', ''))):<30} "
              f"{r.get('seed', ''):<5} {r.get('p_at_1')!s:<7} {r.get('map')!s:<7} {r.get('images_per_s')!s:<7} "
              f"{r.get('loop_s')!s:<7} {r.get('wall_s')!s:<7} {r.get('driver_peak_rss_mb')!s}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Skip as e:  # real data absent
        sys.exit(f"bench_train_scale: {e}")
