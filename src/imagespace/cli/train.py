"""The train command: a new model version from the user's own images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import Failure, JsonOption, app, console, emit

_MODES = ("adapter", "finetune", "self-supervised", "scratch")


@app.command()
def train(
    data: Annotated[str, typer.Option("--data", help="Folder of class subfolders (or of unlabelled images for "
                                                     "self-supervised), a zip of the same, e.g. cifar10-jpg.zip, or "
                                                     "a Parquet listing with a 'path' column (local paths or fsspec "
                                                     "URLs) and optionally 'label'.")],
    out: Annotated[Path, typer.Option("--out", help="MODEL_DIR to write: weights, model.onnx, metrics...")],
    mode: Annotated[str, typer.Option(help="adapter (default: a head on frozen features), finetune, "
                                           "self-supervised or scratch.")] = "adapter",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (default per mode).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in MODEL_DIR from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing MODEL_DIR.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(min=2, help="Images per step (default per mode).")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Learning rate (default per mode).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="adapter/finetune: proxy-anchor, supcon or arcface.")] = None,
    head: Annotated[str, typer.Option(help="adapter/self-supervised head: linear or mlp.")] = "linear",
    dim: Annotated[Optional[int], typer.Option(min=8, max=4096, help="adapter (128) / self-supervised (512): output dimensions.")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=16, max=1024, help="finetune (224) / scratch (32) input size.")] = None,
    width: Annotated[int, typer.Option(min=4, max=256, help="scratch: channels of the first stage.")] = 32,
    views: Annotated[Optional[int], typer.Option(min=1, max=64, help="Cached views of each image: plain, mirrored, augmented (default 6).")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="Share of each class held out for validation.")] = 0.2,
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many epochs without a better validation mAP.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(min=0.01, help="Time budget; the schedule anneals to fit it.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the augmentations and the weights.")] = 0,
    no_compare: Annotated[bool, typer.Option("--no-compare", help="Skip measuring the pretrained model on the split.")] = False,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=1, help="finetune/scratch: also checkpoint every N steps "
                                                                        "inside an epoch (a crash then costs at most N steps).")] = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Train: DistributedDataParallel over "
                                             "--workers; finetune and scratch).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="ray: the cluster (auto, ray://HEAD:10001); default: a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="ray: data-parallel workers (default 2); --batch-size "
                                                              "is the global batch, shared among them.")] = None,
    worker_cpus: Annotated[Optional[float], typer.Option(min=0.1, help="ray: CPUs per worker (default 1).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The pretrained network to start from: "
                                                 "efficientnet-lite0, -lite1 or -lite2 (default: the default model).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Train a model on your own images; use it with 'imagespace index --model MODEL_DIR'."""
    if mode not in _MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(_MODES)}")
    if loss is not None and loss not in ("proxy-anchor", "supcon", "arcface"):
        raise typer.BadParameter("--loss must be one of proxy-anchor, supcon, arcface")
    if engine not in ("local", "ray"):
        raise typer.BadParameter("--engine must be local or ray")
    if head not in ("linear", "mlp"):
        raise typer.BadParameter("--head must be linear or mlp")
    from ..train.data import DataError
    from ..train.pipeline import TrainConfig, run_training
    from ..train.progress import TrainProgress
    from ..train.workdir import RunError

    config = TrainConfig(
        data=str(data), out=str(out), mode=mode, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, head=head,
        dim=dim, image_size=image_size, width=width, views=views, val_fraction=val_fraction, seed=seed,
        patience=patience, max_minutes=max_minutes, compare=not no_compare, resume=resume, overwrite=overwrite,
        checkpoint_every=checkpoint_every, engine=engine, address=address, workers=workers, worker_cpus=worker_cpus,
        base_model=model,
    )
    try:
        result = run_training(config, TrainProgress(enabled=sys.stderr.isatty() or not as_json))
    except (DataError, RunError) as e:
        raise Failure(str(e)) from None
    except KeyboardInterrupt:
        print(f"imagespace: interrupted; continue with: imagespace train --data {data} --out {out} --mode {mode} "
              "--resume", file=sys.stderr)
        sys.exit(130)

    def human(r: dict) -> None:
        c = console()
        m = r["metrics"]
        val = m.get("validation", {})
        c.print(f"model written to {r['model']} ({m['mode']}, model_id {m['model_id']})", highlight=False)
        c.print(f"trained on {m['train_images']} images, validated on {m['validation_images']}; "
                f"{m.get('epochs', '?')} epochs (best {m.get('best_epoch', '?')}) in {m['seconds']:.0f}s")
        for name in ("pretrained", "new"):
            if name in val:
                c.print(f"  {name:>10}: precision@1 {val[name]['precision_at_1']:.4f}  mAP {val[name]['map']:.4f}")
        if "note" in val:
            c.print(f"  {val['note']}")
        if m.get("skipped"):
            c.print(f"  skipped {len(m['skipped'])} items (reasons in {r['model']}/metrics.json)")
        c.print(f"use it: imagespace index PATH --model {r['model']}", highlight=False)

    emit(as_json, result, human)
