"""``imagespace train --engine ray``: finetune and scratch on Ray Train, over many machines.

Ray Train's ``TorchTrainer`` starts ``workers`` processes (on one machine or a cluster),
joins them in a torch.distributed group (gloo on CPUs, nccl on GPUs) and wraps the network
and its loss in DistributedDataParallel. Each worker runs the same loop as a local run
(:func:`.trainer.fit`) on its share of every global batch: worker ``rank`` of ``world``
streams slots ``rank, rank + world, ...`` of the step's images straight from the listing
(:mod:`.stream`), so only paths travel and the global batch is the one a single process
would take with the same seed. Rank 0 scores the validation images after each epoch and
tells the others (so every worker stops at the same step).

Faults: rank 0 reports a checkpoint (the loop's whole state, with its position in the
epoch) to Ray's storage under ``MODEL_DIR/ray`` after each epoch and every
``checkpoint_every`` steps. A worker that dies makes Ray Train restart the group
(``FailureConfig(max_failures)``); every worker restores the last checkpoint and goes on at
its step, so a death costs at most one checkpoint interval and no step trains twice in a way
that changes the result. ``--resume`` after the whole run was killed points Ray Train at the
same storage, which picks up the last checkpoint the same way.

The driver then builds the export network from the final checkpoint and writes the same
MODEL_DIR as a local run. MODEL_DIR must be on storage every worker node mounts (in local
mode it trivially is).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed import ray_session
from .data import ImageSet
from .pixels import Recipe, build_parts, decode_check_set, finish, make_evaluate, train_source
from .progress import TrainProgress
from .runspec import TrainConfig, Trained
from .trainer import fit
from .workdir import CHECKPOINT, RAY_STORAGE, RunError

RUN_NAME = "train"
DEFAULT_WORKERS = 2
DEFAULT_WORKER_CPUS = 1.0


@dataclass
class _Job:
    """What every worker is sent once: the recipe and the listing, never pixels."""

    recipe: Recipe
    ds: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    threads: int
    verbose: bool


def train_on_ray(config: TrainConfig, recipe: Recipe, ds: ImageSet, train_idx: np.ndarray, val_idx: np.ndarray,
                 out: Path, progress: TrainProgress) -> Trained:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = config.workers or DEFAULT_WORKERS
    cpus = config.worker_cpus or DEFAULT_WORKER_CPUS
    if recipe.settings.batch_size < workers:
        raise RunError(f"a global batch of {recipe.settings.batch_size} cannot be shared by {workers} workers: "
                       "give a larger --batch-size or fewer --workers")
    job = _Job(recipe, ds, np.asarray(train_idx), np.asarray(val_idx), max(1, int(cpus)), progress.enabled)
    progress.log(f"Ray Train: {workers} workers x {cpus:g} CPU, global batch {recipe.settings.batch_size} "
                 f"({recipe.settings.batch_size // workers}+ per worker), lr {recipe.settings.lr:g}; "
                 f"checkpoints in {out / RAY_STORAGE}")
    # Ray's driver prints cluster events ("A worker died...") on standard output from a
    # background thread; standard output carries --json's one document, so they go to stderr.
    with _only_our_lines(progress.enabled), contextlib.redirect_stdout(sys.stderr), \
            ray_session(config.address, quiet=not progress.enabled):
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"job": job},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=torch.cuda.is_available(),
                                         resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name=RUN_NAME, storage_path=str((out / RAY_STORAGE).resolve()),
                                 failure_config=FailureConfig(max_failures=config.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        try:
            result = trainer.fit()
        except Exception as e:  # noqa: BLE001 - Ray wraps the workers' errors in its own types
            raise RunError(f"Ray training failed ({type(e).__name__}: {_first_line(e)}); the last checkpoint is "
                           f"kept: continue with --resume") from e
        if result.checkpoint is None:
            raise RunError("Ray training ended before its first checkpoint: nothing to export")
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT, map_location="cpu", weights_only=False)
    parts = build_parts(recipe)
    parts.view.load_state_dict(state["best_state"] if state["best_state"] is not None else state["net"])
    parts.loss.load_state_dict(state["loss"])
    parts.view.eval()
    loop = state["loop"]
    progress.log(f"Ray Train finished: {loop.epochs_run} epochs ({loop.stopped}), best epoch {loop.best_epoch}")
    return finish(recipe, parts, ds, np.asarray(train_idx), loop, state.get("skipped", []),
                  {"engine": {"name": "ray", "workers": workers, "worker_cpus": cpus,
                              "global_batch": recipe.settings.batch_size,
                              "restored_at": [list(p) for p in getattr(loop, "restored_at", [])]}})


# -- in each worker ---------------------------------------------------------------------


def _worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    job: _Job = loop_config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.threads)
    progress = _WorkerProgress(rank == 0 and job.verbose, rank)
    recipe = job.recipe
    parts = build_parts(recipe)
    device = ray.train.torch.get_device()
    parts.view.to(device)
    parts.loss.to(device)
    source = train_source(job.ds, job.train_idx, recipe, rank=rank, world=world, threads=job.threads)
    check = decode_check_set(job.ds, job.train_idx, job.val_idx, recipe, progress) if rank == 0 else None
    evaluate = make_evaluate(parts.view, check) if check is not None else dict
    checkpoints = _RayCheckpoints(lambda: (check.failures if check else []) + source.failures)
    fit(parts.view, parts.loss, source, evaluate=evaluate, settings=recipe.settings,
        param_groups=parts.param_groups, checkpoints=checkpoints, progress=progress,
        wrap=ray.train.torch.prepare_model, team=_Team(rank, world))
    source.close()


class _Team:
    """Rank 0 decides (validation score, time budget); a broadcast tells the others."""

    def __init__(self, rank: int, world: int):
        self.chief, self.world = rank == 0, world

    def agree(self, value):
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class _RayCheckpoints:
    """Checkpoints through Ray Train: rank 0 reports the state, every worker reports."""

    def __init__(self, skipped):
        self.skipped = skipped

    def load(self) -> dict | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT, map_location="cpu", weights_only=False)
        loop = state["loop"]
        # Kept in the loop's own record, so the final metrics say where the run was restored.
        loop.restored_at = [*getattr(loop, "restored_at", []), (loop.epochs_run + 1, int(state.get("step", 0)))]
        return state

    def save(self, state: dict, metrics: dict) -> None:
        import ray.train

        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        if not state:
            ray.train.report(metrics)
            return
        state = {**state, "skipped": self.skipped()}
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, os.path.join(d, CHECKPOINT))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


class _WorkerProgress(TrainProgress):
    """No progress bars inside workers; rank 0's log lines go to its log (and the driver's)."""

    def __init__(self, verbose: bool, rank: int):
        super().__init__(False)
        self.verbose, self.rank = verbose, rank

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"imagespace train (worker {self.rank}): {message}", file=sys.stderr, flush=True)


class _OurLines:
    """Standard error while Ray runs: the workers' own progress lines pass (once each), the
    rest of what Ray forwards from its actors (placement, checkpoint and report notices, a
    controller that cannot query its own state: 72 lines on a run that succeeded) does not.
    A run that fails says why through the exception Ray raises, which is reported in full."""

    def __init__(self, out):
        self.out, self.pending, self.last = out, "", None

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if "pid=" in line.split(")")[0]:  # "(RayTrainWorker pid=...) ...": forwarded from a Ray process
                if "imagespace train (worker" not in line:
                    continue
                line = line[line.index("imagespace train (worker"):]
                if line == self.last:
                    continue
            elif " -- " in line and line[:4].isdigit():  # Ray's own log records ("2026-... INFO ... -- ...")
                continue
            self.last = line
            self.out.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    def __getattr__(self, name):
        return getattr(self.out, name)


@contextlib.contextmanager
def _only_our_lines(enabled: bool):
    if not enabled:
        yield
        return
    real = sys.stderr
    sys.stderr = _OurLines(real)
    try:
        yield
    finally:
        if sys.stderr.pending:
            real.write(sys.stderr.pending)
        sys.stderr = real


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else ""
