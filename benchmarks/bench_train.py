"""Quality of `imagespace train` (issue 5): ``python -m benchmarks.bench_train [PART...]``.

Parts (default: adapter losses selfsup; scratch only when named, it is long):

- ``adapter``: the default mode trained on flowers12/train (20% of it held out for
  validation, as the CLI does); on flowers12/test, leave-one-out within test: precision@1
  and mAP of the new model, the pretrained one, and shrinkage LDA on the same pretrained
  features (fitted on the same training images, and on all of flowers12/train).
- ``losses``: the choice of loss and head, on the cached features of the same run: best
  validation mAP (what picks) and test mAP (what it gives) per loss x head.
- ``selfsup``: --mode self-supervised on the flowers12/train images, labels unused; mAP and
  precision@1 on flowers12/test against the pretrained model.
- ``scratch``: --mode scratch on cifar10-jpg.zip (read from the zip) for ``--minutes``;
  kNN accuracy (k=10, cosine) of the cifar10 test images against the training images.

Models are written under ``--work`` (default /tmp/imagespace-bench-train) and kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ._common import CIFAR10_ZIP, FLOWERS12, Skip, need


def _embed(model, ds, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from imagespace.train.data import decode_all

    vecs, kept_all = [], []
    for start in range(0, len(ds), 1024):
        idx = np.arange(start, min(start + 1024, len(ds)))
        pixels, kept, _ = decode_all(ds.subset(idx), model.input_size)
        for b in range(0, len(pixels), batch):
            vecs.append(model.embed(pixels[b:b + batch]).vectors)
        kept_all.append(idx[kept])
    return np.concatenate(vecs), ds.labels[np.concatenate(kept_all)]


def _fmt(m: dict) -> str:
    return f"precision@1 {m['precision_at_1']:.4f}  mAP {m['map']:.4f}"


def _train(mode: str, data: Path, out: Path, **kw) -> dict:
    from imagespace.train.pipeline import TrainConfig, run_training
    from imagespace.train.progress import TrainProgress

    t = time.perf_counter()
    result = run_training(TrainConfig(data=str(data), out=str(out), mode=mode, overwrite=out.exists(), **kw),
                          TrainProgress(enabled=sys.stderr.isatty()))
    print(f"  trained {mode} in {time.perf_counter() - t:.0f}s -> {out}", flush=True)
    print(f"  validation split: {json.dumps(result['metrics']['validation'])}", flush=True)
    return result


def _test_set_quality(model_dir: Path) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    from imagespace.models import create_model
    from imagespace.train.data import open_image_set
    from imagespace.train.metrics import retrieval_metrics

    test = open_image_set(need(FLOWERS12 / "test"))
    new_vecs, labels = _embed(create_model(str(model_dir)), test)
    pre_vecs, pre_labels = _embed(create_model(), test)
    return retrieval_metrics(new_vecs, labels), retrieval_metrics(pre_vecs, pre_labels), pre_vecs, pre_labels


def adapter(work: Path) -> dict:
    """The default mode vs the pretrained model vs shrinkage LDA, on flowers12/test."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from imagespace.train.metrics import retrieval_metrics

    print("adapter on flowers12/train, evaluated on flowers12/test (leave-one-out within test)", flush=True)
    out = work / "adapter"
    result = _train("adapter", need(FLOWERS12 / "train"), out)
    new, pre, pre_test, test_labels = _test_set_quality(out)
    x, y, train_pos, _ = _cached_train_features(out)
    rows = {"pretrained (GeM)": pre, "adapter (new)": new}
    for name, idx in (("same training images", train_pos), ("all of flowers12/train", np.arange(len(y)))):
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x[idx, 0], y[idx])
        rows[f"shrinkage LDA, {name}"] = retrieval_metrics(lda.transform(pre_test), test_labels)
    for name, m in rows.items():
        print(f"  {name:<40} {_fmt(m)}", flush=True)
    return {"adapter": {k: {"precision_at_1": round(v["precision_at_1"], 4), "map": round(v["map"], 4)}
                        for k, v in rows.items()}, "adapter_seconds": result["metrics"]["seconds"]}


def _cached_train_features(out: Path):
    """The features the adapter run cached (view 0 = as indexed), and its training rows."""
    from imagespace.models import create_model
    from imagespace.train.augment import AugmentConfig
    from imagespace.train.data import check_supervised, open_image_set
    from imagespace.train.features import extract_features

    run = json.loads((out / "train-run.json").read_text())
    ds = check_supervised(open_image_set(run["config"]["data"]))
    from imagespace.train.adapter import DEFAULT_VIEWS

    views = run["config"]["views"] or DEFAULT_VIEWS
    feats, kept, _ = extract_features(ds, create_model(), out / "cache" / "features.npz", views=views,
                                      augment=AugmentConfig.light(), seed=run["config"]["seed"])
    val = set(run["val_items"])
    is_train = np.array([ds.items[k] not in val for k in kept])
    return feats, ds.labels[kept], np.flatnonzero(is_train), np.flatnonzero(~is_train)


def losses(work: Path) -> dict:
    """Which loss and head: validation mAP picks, test mAP shows what the pick is worth."""
    from imagespace.train.adapter import AdapterSettings, embed_with_head, fit_head
    from imagespace.train.data import open_image_set
    from imagespace.train.features import extract_features
    from imagespace.models import create_model
    from imagespace.train.losses import LOSSES
    from imagespace.train.metrics import retrieval_metrics

    out = work / "adapter"
    if not (out / "train-run.json").is_file():
        adapter(work)
    x, y, tr, va = _cached_train_features(out)
    test = open_image_set(need(FLOWERS12 / "test"))
    xt, kept, _ = extract_features(test, create_model(), work / "test-features.npz", views=1)
    yt = test.labels[kept]
    print("loss x head on cached features (train: flowers12/train minus the validation split)", flush=True)
    table = {}
    for loss in LOSSES:
        for head in ("linear", "mlp"):
            t = time.perf_counter()
            h, state = fit_head(x[tr], y[tr], x[va], y[va], AdapterSettings(loss=loss, head=head), num_classes=int(y.max()) + 1)
            m = retrieval_metrics(embed_with_head(h, xt), yt)
            table[f"{loss}/{head}"] = {"val_map": round(state.best_score, 4), "test_map": round(m["map"], 4),
                                       "test_p1": round(m["precision_at_1"], 4), "best_epoch": state.best_epoch}
            print(f"  {loss:>12} {head:<6} validation mAP {state.best_score:.4f} (epoch {state.best_epoch:>2})  "
                  f"test {_fmt(m)}  {time.perf_counter() - t:.0f}s", flush=True)
    best = max(table, key=lambda k: table[k]["val_map"])
    print(f"  picked by validation mAP: {best}", flush=True)
    return {"losses": table, "picked": best}


def selfsup(work: Path) -> dict:
    print("self-supervised on the flowers12/train images (labels unused), evaluated on flowers12/test", flush=True)
    out = work / "selfsup"
    result = _train("self-supervised", need(FLOWERS12 / "train"), out)
    new, pre, _, _ = _test_set_quality(out)
    print(f"  {'pretrained (GeM)':<40} {_fmt(pre)}", flush=True)
    print(f"  {'self-supervised (new)':<40} {_fmt(new)}", flush=True)
    return {"selfsup": {"pretrained": pre, "new": new}, "selfsup_seconds": result["metrics"]["seconds"]}


def scratch(work: Path, minutes: float, epochs: int, width: int) -> dict:
    from imagespace.models import create_model
    from imagespace.train.data import open_image_set
    from imagespace.train.metrics import knn_accuracy

    print(f"scratch on cifar10 (from the zip), at most {minutes:g} minutes, width {width}", flush=True)
    out = work / "scratch"
    result = _train("scratch", need(CIFAR10_ZIP), out, max_minutes=minutes, epochs=epochs, width=width,
                    val_fraction=0.1, compare=False)
    m = result["metrics"]
    print(f"  {m['epochs']} epochs, stopped by {m['stopped']}, training {m['train_seconds']:.0f}s", flush=True)
    model = create_model(str(out))
    t = time.perf_counter()
    db, db_labels = _embed(model, open_image_set(CIFAR10_ZIP, zip_split="train"), batch=512)
    q, q_labels = _embed(model, open_image_set(CIFAR10_ZIP, zip_split="test"), batch=512)
    acc = knn_accuracy(db, db_labels, q, q_labels, k=10)
    print(f"  kNN-10 accuracy on the cifar10 test set: {acc:.4f} (embedding 60,000 images: "
          f"{time.perf_counter() - t:.0f}s)", flush=True)
    return {"scratch": {"knn10_accuracy": round(acc, 4), "epochs": m["epochs"], "train_seconds": m["train_seconds"]}}


def run(quick: bool = False) -> None:
    """Entry point for ``python -m benchmarks --only bench_train``: the fast parts."""
    work = Path("/tmp/imagespace-bench-train")
    adapter(work)
    if not quick:
        losses(work)
        selfsup(work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["adapter", "losses", "selfsup"],
                    choices=["adapter", "losses", "selfsup", "scratch"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/imagespace-bench-train"))
    ap.add_argument("--minutes", type=float, default=30.0, help="scratch: time budget of the training")
    ap.add_argument("--epochs", type=int, default=30, help="scratch: epochs (the time budget usually ends it first)")
    ap.add_argument("--width", type=int, default=32, help="scratch: width of the compact CNN")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    for part in args.parts:
        if part == "scratch":
            report.update(scratch(args.work, args.minutes, args.epochs, args.width))
        else:
            report.update(globals()[part](args.work))
    (args.work / "report.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"report: {args.work / 'report.json'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Skip as e:  # real data absent
        sys.exit(f"bench_train: {e}")
