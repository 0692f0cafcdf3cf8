"""The output folder of a run: refuse to clobber it, checkpoint into it, resume from it.

A checkpoint is written to a temporary file and renamed over the previous one, so a run
killed at any moment leaves either the last epoch's checkpoint or the one before, whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..atomic import atomic_write

CHECKPOINT = "checkpoint.pt"
RUN_FILE = "train-run.json"  # the settings a run was started with; --resume must agree
RAY_STORAGE = "ray"  # an --engine ray run's checkpoints (Ray Train's storage)


class RunError(Exception):
    """The output folder cannot be used as asked, with what to do about it."""


def prepare_out_dir(out: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> Path:
    """The folder to write to: new, emptied (``overwrite``) or continued (``resume``)."""
    path = Path(out)
    if resume and overwrite:
        raise RunError("give --resume or --overwrite, not both")
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is not a folder")
    exists = path.is_dir() and any(path.iterdir())
    if resume:
        if not ((path / CHECKPOINT).is_file() or (path / RAY_STORAGE).is_dir()):
            raise RunError(f"nothing to resume: {path} has no {CHECKPOINT} (start a new run without --resume)")
        return path
    if exists:
        if not overwrite:
            raise RunError(f"{path} already exists: use --resume to continue its run, --overwrite to replace it, "
                           "or another --out")
        if not ((path / RUN_FILE).is_file() or (path / "imagespace-model.json").is_file()):
            # Never empty a folder that a training run did not make (a typo in --out).
            raise RunError(f"{path} is not a model folder made by 'imagespace train'; refusing to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_run_settings(out: Path, settings: dict) -> None:
    (out / RUN_FILE).write_text(json.dumps(settings, indent=2, default=str))


def load_run_settings(out: Path) -> dict:
    try:
        return json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot resume: {out / RUN_FILE} is missing or damaged ({e})") from None


def save_checkpoint(out: Path, state: dict) -> None:
    with atomic_write(out / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def load_checkpoint(out: Path) -> dict | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged file: say so instead of a traceback
        raise RunError(f"cannot resume: {path} is damaged ({type(e).__name__}: {e}); use --overwrite to start again") from None
