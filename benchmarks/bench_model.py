"""The model alone: PyTorch eager vs ONNX Runtime fp32 vs int8 static (QDQ) quantisation.

Throughput at batch 32 on flowers12 pixels (decoded once, outside the timing), the cosine
between each model's embeddings and the fp32 ONNX ones, and flowers12 retrieval quality
(each test photo queries the train photos: precision@1 and mAP). The int8 variants are
calibrated on real flowers12 train photos (and one on scikit-image's samples, the library's
default); the models run one after another in each round, rounds repeated, so each ratio
is taken on the same machine state.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import cpu_name, flowers12_split, has_vnni, header, load_pixels, retrieval_quality, row, spread

BATCH = 32


def _ort(path, threads: int | None = None):
    from imagespace.models.base import EmbeddingModel

    return EmbeddingModel(name="x", model_id="x", onnx_path=Path(path), threads=threads)


def _vectors(embed, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([embed(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)])


def run(quick: bool = False) -> None:
    import torch

    from imagespace.models import create_model
    from imagespace.models.efficientnet import default_weights_path
    from imagespace.models.torch_nets import build_embedding_net
    from imagespace.models.quantize import calibration_pixels, quantize_onnx

    header("model throughput and quality: PyTorch eager, ONNX Runtime fp32, int8")
    print(f"  CPU: {cpu_name()}; int8 dot-product kernels: {'VNNI' if has_vnni() else 'no VNNI (u8s8 saturates)'}")
    train, train_labels = flowers12_split("train")
    test, test_labels = flowers12_split("test")
    pixels = load_pixels(train + test)
    n_train = len(train)
    fp32 = create_model()
    torch.set_num_threads(2)
    net = build_embedding_net(default_weights_path())

    def torch_embed(px):
        with torch.no_grad():
            f, _ = net(torch.from_numpy(px))
        return (f / f.norm(dim=1, keepdim=True)).numpy()

    variants: dict[str, callable] = {"PyTorch eager fp32": torch_embed, "ONNX Runtime fp32": lambda px: fp32.embed(px).vectors}
    tmp = Path(tempfile.mkdtemp(prefix="imagespace-bench-int8-"))
    calib = calibration_pixels(train[::12], flips=True)  # 60 train photos and their mirror images
    configs = {  # quantize.py's docstring says why the library uses u8s7
        "int8 u8u8 per-tensor, all layers": dict(per_channel=False, keep_edges_fp32=False, fmt="u8u8"),
        "int8 u8u8 per-channel, first/last fp32": dict(fmt="u8u8"),
        "int8 u8s8 per-channel, first/last fp32": dict(fmt="u8s8"),  # saturates without VNNI
        "int8 u8s7 per-channel, first/last fp32": dict(fmt="u8s7"),
    }
    if quick:
        configs.pop("int8 u8u8 per-tensor, all layers")
    for name, cfg in configs.items():
        t = time.perf_counter()
        path = quantize_onnx(fp32.onnx_path, tmp / f"{len(variants)}.onnx", calib, **cfg)
        print(f"  quantised '{name}' in {time.perf_counter() - t:.0f}s", flush=True)
        m = _ort(path)
        variants[name + " (flowers12 calib.)"] = lambda px, m=m: m.embed(px).vectors
    lib = create_model("efficientnet-lite0-int8")
    variants["library int8 model (skimage calib.)"] = lambda px: lib.embed(px).vectors

    # quality: every variant embeds all 960 photos
    quality = {}
    reference = _vectors(variants["ONNX Runtime fp32"], pixels)
    for name, embed in variants.items():
        v = _vectors(embed, pixels)
        cos = (v * reference).sum(1) / np.linalg.norm(v, axis=1)
        p1, mAP = retrieval_quality(v[:n_train], train_labels, v[n_train:], test_labels)
        quality[name] = (float(cos.mean()), float(cos.min()), p1, mAP)

    # throughput, interleaved rounds
    n = 96 if quick else 192
    rounds = 2 if quick else 3
    rates: dict[str, list[float]] = {k: [] for k in variants}
    block = pixels[:n]
    for embed in variants.values():
        embed(block[:BATCH])  # warm-up
    for _ in range(rounds):
        for name, embed in variants.items():
            t = time.perf_counter()
            _vectors(embed, block)
            rates[name].append(n / (time.perf_counter() - t))
    base = rates["ONNX Runtime fp32"]
    fp32_q = quality["ONNX Runtime fp32"]
    print(f"  batch {BATCH}, {n} images a round, {rounds} rounds; median [min-max]; ratio to ONNX fp32 per round")
    for name in variants:
        c_mean, c_min, p1, mAP = quality[name]
        ratio = [r / b for r, b in zip(rates[name], base)]
        row(name, f"{spread(rates[name])} img/s", f"x{spread(ratio, '{:.2f}')}",
            f"cos mean {c_mean:.4f} min {c_min:.4f}",
            f"P@1 {p1:.3f} ({p1 - fp32_q[2]:+.3f})", f"mAP {mAP:.3f} ({mAP - fp32_q[3]:+.3f})")
    lib_name = "library int8 model (skimage calib.)"
    ok = (statistics.median(r / b for r, b in zip(rates[lib_name], base)) >= 1.5 and quality[lib_name][0] >= 0.99
          and quality[lib_name][2] >= fp32_q[2] - 0.01)
    print(f"  int8 as the default? the rule (>= 1.5x, cosine >= 0.99, P@1 within 0.01): {'met' if ok else 'not met'}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
