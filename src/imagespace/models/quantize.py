"""int8 static quantisation (QDQ) of an ONNX embedding model, calibrated on real photos.

ONNX Runtime's dynamic quantisation made this network's convolutions slower; static
quantisation with activation ranges calibrated on photos runs the convolutions in int8.
What keeps the embeddings close to the float model (measured in ``benchmarks/bench_model.py``):
per-channel weight scales, and the first convolution, the last one and the classifier
(plus the GeM pooling, which is never quantised) left in float32.

The default calibration photos are the sample images that scikit-image ships (no data set
needed); pass your own folder with ``calibration=`` for a closer fit to your photos.

Weights are quantised to 7 bits (``reduce_range``), so the model gives the same vectors on
every x86 CPU. ONNX Runtime's fast int8 convolution on x86 CPUs without VNNI (AVX2, AVX-512
without VNNI) multiplies uint8 activations by int8 weights with ``vpmaddubsw``, which adds
pairs of products into a saturating 16-bit sum: 2 x 255 x 128 overflows it, 2 x 255 x 64
does not. Measured on flowers12 (960 photos) and, for the AVX2 CPU, under QEMU's Haswell
model (``tests/test_int8_cpus.py``):

- 8-bit signed weights (U8S8): cosine to fp32 0.990-0.997 with VNNI, 0.95-0.97 without it
  (the CI failure); S8S8 saturates the same way (ONNX Runtime shifts it to U8S8 on x86).
- unsigned weights (U8U8) per channel: never saturates, but ONNX Runtime has no fused int8
  kernel for per-channel uint8 weights and runs the convolutions in float between
  quantise/dequantise pairs: 0.2x fp32's speed. Per tensor it is fast but at cosine 0.91.
- 7-bit signed weights (chosen): no overflow anywhere, the same fast kernels as U8S8
  (1.7-2.4x fp32 at batch 32 on an AVX-512 VNNI EPYC), cosine to fp32 0.982 on average
  (min 0.945), precision@1 and mAP within 0.01 of fp32.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .base import EmbeddingModel
from .cache import cache_dir, text_digest
from .registry import register_model

log = logging.getLogger(__name__)

DEFAULT_OP_TYPES = ("Conv", "Gemm", "Add", "Clip")

# int8 formats (activations, weights) for ``quantize_onnx(fmt=...)``; see the module docstring.
PORTABLE_FORMAT = "u8s7"  # uint8 activations, 7-bit signed weights: the same vectors on every CPU
FORMATS = {
    "u8s7": ("uint8", "int8", True),   # (activation type, weight type, 7-bit weights)
    "u8s8": ("uint8", "int8", False),  # saturates on x86 CPUs without VNNI
    "u8u8": ("uint8", "uint8", False),  # per channel: no fused int8 kernel, slower than fp32
}


def default_calibration_paths() -> list[str]:
    """The sample photos scikit-image ships (an optional dependency: ``pip install scikit-image``)."""
    try:
        import skimage.data
    except ImportError:
        raise FileNotFoundError(
            "int8 calibration needs photos: install scikit-image for its sample images, or name "
            "a folder of your own photos (calibration=FOLDER / IMAGESPACE_CALIBRATION=FOLDER)"
        ) from None
    folder = Path(skimage.data.data_dir)
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def calibration_pixels(paths: list[str], size: int = 224, flips: bool = True, limit: int = 256) -> np.ndarray:
    """(n, size, size, 3) uint8 pixels of the readable ``paths`` (and their mirror images)."""
    from ..images import ImageError, is_image_path, load_image

    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for folder, _, names in os.walk(p):
                files.extend(os.path.join(folder, n) for n in sorted(names) if is_image_path(n))
        else:
            files.append(p)
    if len(files) > limit:
        files = files[:: -(-len(files) // limit)]
    pixels = []
    for p in files:
        try:
            pixels.append(load_image(p, size=size).pixels)
        except ImageError:
            continue
    if not pixels:
        raise FileNotFoundError(f"no readable calibration images among {len(files)} files")
    out = np.stack(pixels)
    return np.concatenate([out, out[:, :, ::-1]]) if flips else out


def edge_nodes(onnx_path: str | os.PathLike[str]) -> list[str]:
    """Names of the first convolution, the last convolution and everything after it."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    keep = {nodes[convs[0]].name, nodes[convs[-1]].name}
    keep.update(n.name for n in nodes[convs[-1] :] if n.op_type not in ("Constant",))
    return sorted(keep)


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    keep_edges_fp32: bool = True,
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES,
    method: str = "minmax",
    batch_size: int = 16,
    fmt: str = PORTABLE_FORMAT,
) -> Path:
    """Write an int8 QDQ copy of ``fp32_path`` calibrated on ``calibration`` (uint8 NHWC).

    ``fmt`` is one of ``FORMATS``: ``"u8s7"`` (the default, the same vectors on every CPU),
    ``"u8s8"`` (better on VNNI CPUs, saturating on x86 CPUs without VNNI) or ``"u8u8"``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown int8 format {fmt!r}: expected one of {', '.join(FORMATS)}")
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": calibration[i : i + batch_size]} for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_suffix(f".{os.getpid()}.pre.onnx")
    tmp = out_path.with_suffix(f".{os.getpid()}.tmp")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        activations, weights, seven_bit_weights = FORMATS[fmt]
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=types[activations],
            weight_type=types[weights],
            reduce_range=seven_bit_weights,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=edge_nodes(pre) if keep_edges_fp32 else [],
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibMovingAverage": False},
        )
        os.replace(tmp, out_path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        for extra in out_path.parent.glob(f"{pre.stem}*"):
            extra.unlink(missing_ok=True)
    return out_path


def int8_model(fp32: EmbeddingModel, calibration: str | os.PathLike[str] | list[str] | None = None,
               **kwargs) -> EmbeddingModel:
    """The int8 twin of ``fp32``, quantised once and cached; vectors get their own model id."""
    calibration = calibration or os.environ.get("IMAGESPACE_CALIBRATION")
    if calibration is None:
        paths, calib_name = default_calibration_paths(), "skimage-samples"
    else:
        paths = [str(calibration)] if isinstance(calibration, (str, os.PathLike)) else [str(p) for p in calibration]
        calib_name = text_digest(*sorted(os.path.abspath(p) for p in paths))
    digest = text_digest(fp32.onnx_path.name, calib_name, PORTABLE_FORMAT, Path(__file__).read_text())
    out = cache_dir() / f"{fp32.name}-int8-{PORTABLE_FORMAT}-{digest}.onnx"
    if not out.is_file():
        log.info("quantising %s to int8 (once), calibrated on %s...", fp32.name, calib_name)
        quantize_onnx(fp32.onnx_path, out, calibration_pixels(paths, size=fp32.input_size))
    return EmbeddingModel(
        name=f"{fp32.name}-int8",
        model_id=f"{fp32.model_id}/int8-{PORTABLE_FORMAT}-{digest[:12]}",
        onnx_path=out,
        input_size=fp32.input_size,
        labels=fp32.labels,
        **kwargs,
    )


@register_model("efficientnet-lite0-int8", input_size=224, dim=1280)
def efficientnet_lite0_int8(weights: str | os.PathLike[str] | None = None,
                            calibration: str | os.PathLike[str] | None = None, **kwargs) -> EmbeddingModel:
    """EfficientNet-Lite0 quantised to int8 (static, QDQ), calibrated on ``calibration`` photos
    (a folder; default: scikit-image's sample images). Its vectors are not interchangeable
    with the float model's: it has its own model id."""
    from .efficientnet import efficientnet_lite0

    return int8_model(efficientnet_lite0(weights), calibration, **kwargs)
