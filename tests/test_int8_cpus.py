"""The int8 model gives the same answers on every x86 CPU.

ONNX Runtime picks its int8 kernels by the CPU it runs on: AMX tiles (Intel Xeon from Sapphire
Rapids on), AVX-512 VNNI or AVX-VNNI dot products, all exact in int32; on AVX2 alone, uint8 x
int8 products are summed in pairs into a saturating 16-bit lane (``vpmaddubsw``), which 7-bit
weights cannot overflow. The tests here run the model on an AVX2-only CPU whatever CPU the tests
run on: QEMU's user-mode emulator with its Haswell model (AVX2, FMA, no AVX-512, no VNNI), so CI
catches what only some machines would show.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

QEMU = shutil.which("qemu-x86_64")
SAMPLES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]

# Runs inside the emulated CPU: prints the CPU features numpy sees there, saves the vectors.
_EMULATED = """
import json, sys
import numpy as np
from numpy._core._multiarray_umath import __cpu_features__ as cpu
from pathlib import Path
from imagespace.models.base import EmbeddingModel
args = json.loads(sys.argv[1])
pixels = np.load(args["pixels"])
model = EmbeddingModel(name="int8", model_id="int8", onnx_path=Path(args["onnx"]), input_size=pixels.shape[1])
vectors = model.embed(pixels).vectors
np.save(args["out"], vectors)
print(json.dumps({"features": sorted(k for k, v in cpu.items() if v)}))
"""


def _samples() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")  # the default calibration photos
    from imagespace.images import load_image

    return np.stack([load_image(f"{skimage_data.data_dir}/{n}").pixels for n in SAMPLES])


def _vectors_on_avx2_cpu(onnx_path, pixels: np.ndarray, tmp_path, timeout: float = 600) -> np.ndarray:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"emulating an AVX2-only x86 CPU needs an x86-64 host, not {platform.machine()}")
    if QEMU is None:
        pytest.skip("qemu-x86_64 is absent: install Debian's qemu-user to check the int8 model "
                    "on an AVX2-only CPU (.ci/run installs it)")
    np.save(tmp_path / "pixels.npy", pixels)
    args = json.dumps({"pixels": str(tmp_path / "pixels.npy"), "out": str(tmp_path / "vectors.npy"),
                       "onnx": str(onnx_path)})
    done = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", _EMULATED, args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # the emulated CPU is the one the issue is about: AVX2, and no AVX-512 nor VNNI
    assert "AVX2" in out["features"], out["features"]
    assert not [f for f in out["features"] if f.startswith("AVX512")], out["features"]
    return np.load(tmp_path / "vectors.npy")


def test_int8_model_gives_the_same_vectors_on_a_cpu_without_vnni(tmp_path):
    from imagespace.models import create_model, list_models
    from imagespace.models.quantize import PORTABLE_FORMAT

    pixels = _samples()
    assert "efficientnet-lite0-int8" in list_models()
    fp32, int8 = create_model("efficientnet-lite0"), create_model("efficientnet-lite0-int8")  # quantised once, cached
    assert int8.model_id != fp32.model_id and int8.dim == fp32.dim
    assert PORTABLE_FORMAT in int8.model_id  # the format is part of the vectors' identity
    reference = fp32.embed(pixels).vectors
    here = int8.embed(pixels).vectors
    np.testing.assert_allclose(np.linalg.norm(here, axis=1), 1.0, atol=1e-5)
    there = _vectors_on_avx2_cpu(int8.onnx_path, pixels, tmp_path)
    # the same integer arithmetic on both CPUs: the vectors agree to float rounding
    assert (here * there).sum(1).min() >= 0.9999, (here * there).sum(1)
    # and they are close to the float model's (7-bit weights: measured 0.973-0.985 on these four)
    cos = (there * reference).sum(1)
    assert cos.min() >= 0.97, cos


# The flowers12 bar, set outside the noise. Measured on all 960 photos (each one a query against
# the other 959), fp32 against int8 (u8s7): cosine 0.982 on average on this Intel Xeon (AMX)
# and on an AMD EPYC (VNNI) alike; mAP -0.0004 (paired standard error 0.0011) here, -0.0003 on
# the EPYC; precision@1 5 queries lost and 3 gained here, none net on the EPYC. The bounds below
# are several times those spreads, and a test-photo-against-train precision@1 is not checked:
# on 240 queries one query is 0.004 and its standard error 0.011, so a 0.01 bound passed on one
# CPU and failed on another.
MIN_MEAN_COSINE = 0.975  # u8s7 0.982; 8-bit weights saturating on the emulated AVX2 CPU 0.953
MAX_MAP_LOSS = 0.01      # ~9 standard errors of the paired mAP difference
MAX_NET_LOST_QUERIES = 15  # of 960 (1.6%); the null spread of lost - gained is ~3


def _cosine_shortfall(reference: np.ndarray, int8: np.ndarray) -> str | None:
    """Why ``int8`` vectors are too far from the float model's, or None."""
    cos = (reference * int8).sum(1)
    if cos.mean() < MIN_MEAN_COSINE:
        return f"cosine to fp32 {cos.mean():.4f} on average (min {cos.min():.4f}), under {MIN_MEAN_COSINE}"
    return None


def _leave_one_out(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo, as a query against all the others: is the nearest one of its class, and the
    average precision of the ranking."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    relevant = labels[np.argsort(-sims, axis=1)[:, :-1]] == labels[:, None]  # the query itself ranks last
    precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    return relevant[:, 0], (precision * relevant).sum(1) / relevant.sum(1)


def _flowers12_photos(flowers12) -> tuple[list, np.ndarray]:
    paths = sorted(flowers12.glob("*/*/*.jpg"))
    return paths, np.array([p.parent.name for p in paths])


def test_int8_model_keeps_the_float_models_retrieval_on_flowers12(flowers12):
    """What users see, paired photo by photo over all 960 flowers12 photos: the int8 vectors stay
    close to the float model's, and retrieval (mAP and precision@1, leave-one-out) keeps fp32's."""
    from imagespace.images import load_image
    from imagespace.models import create_model

    paths, labels = _flowers12_photos(flowers12)
    pixels = np.stack([load_image(p).pixels for p in paths])

    def embed(model):
        return np.concatenate([model.embed(pixels[i : i + 32]).vectors for i in range(0, len(pixels), 32)])

    fp32, int8 = embed(create_model("efficientnet-lite0")), embed(create_model("efficientnet-lite0-int8"))
    assert _cosine_shortfall(fp32, int8) is None, _cosine_shortfall(fp32, int8)
    (hit_f, ap_f), (hit_q, ap_q) = _leave_one_out(fp32, labels), _leave_one_out(int8, labels)
    assert ap_q.mean() >= ap_f.mean() - MAX_MAP_LOSS, (ap_f.mean(), ap_q.mean())
    lost, gained = int((hit_f & ~hit_q).sum()), int((~hit_f & hit_q).sum())
    assert lost - gained <= MAX_NET_LOST_QUERIES, (lost, gained, hit_f.mean(), hit_q.mean())


@pytest.mark.slow
def test_signed_8bit_weights_saturate_on_a_cpu_without_vnni(tmp_path):
    """Why 7-bit weights: the same model quantised with 8-bit weights loses precision on the
    emulated AVX2 CPU. This is also the check that the emulation reproduces the failure."""
    from imagespace.models import create_model
    from imagespace.models.quantize import calibration_pixels, default_calibration_paths, quantize_onnx

    pixels = _samples()
    fp32 = create_model("efficientnet-lite0")
    calib = calibration_pixels(default_calibration_paths(), size=fp32.input_size)
    u8s8 = quantize_onnx(fp32.onnx_path, tmp_path / "u8s8.onnx", calib, fmt="u8s8")
    reference = fp32.embed(pixels).vectors
    cos = (_vectors_on_avx2_cpu(u8s8, pixels, tmp_path) * reference).sum(1)
    assert cos.min() < 0.975, cos  # measured 0.951-0.969 under QEMU's Haswell model


@pytest.mark.slow
def test_the_flowers12_bar_catches_8bit_weights_saturating_on_a_cpu_without_vnni(flowers12, tmp_path):
    """The flowers12 check above fails the model it was written against: 8-bit weights on the
    emulated AVX2 CPU (every 80th photo: the emulator runs the network about 1000x slower).
    Measured: cosine 0.946 on average on these 12 (0.953 on every 20th), 0.982 with 7-bit weights."""
    from imagespace.images import load_image
    from imagespace.models import create_model
    from imagespace.models.quantize import calibration_pixels, default_calibration_paths, quantize_onnx

    paths, _ = _flowers12_photos(flowers12)
    pixels = np.stack([load_image(p).pixels for p in paths[::80]])
    fp32 = create_model("efficientnet-lite0")
    calib = calibration_pixels(default_calibration_paths(), size=fp32.input_size)
    u8s8 = quantize_onnx(fp32.onnx_path, tmp_path / "u8s8.onnx", calib, fmt="u8s8")
    shortfall = _cosine_shortfall(fp32.embed(pixels).vectors, _vectors_on_avx2_cpu(u8s8, pixels, tmp_path, timeout=1800))
    assert shortfall is not None, "8-bit weights on the emulated AVX2 CPU passed the cosine bar"
