"""Image augmentations with Pillow and NumPy only: random resized crop, flip, colour jitter.

They work on decoded uint8 RGB arrays (H, W, 3), so they need no file access and no
torchvision. Every function takes a ``numpy.random.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ITU-R 601 luma weights, the same ones Pillow's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """How strong each augmentation is; ``light`` for supervised, ``strong`` for SimCLR."""

    scale: tuple[float, float] = (0.35, 1.0)  # area of the crop, as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    jitter_p: float = 0.8
    grayscale_p: float = 0.0

    @classmethod
    def light(cls) -> AugmentConfig:
        return cls(scale=(0.5, 1.0), brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, jitter_p=0.5)

    @classmethod
    def strong(cls) -> AugmentConfig:
        # SimCLR's recipe (crop + flip + strong colour distortion + grey), with a milder
        # hue shift: flower species differ by colour, which views must not erase entirely.
        return cls(scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, jitter_p=0.8, grayscale_p=0.2)

    @classmethod
    def small_images(cls) -> AugmentConfig:
        # 32 px images (cifar10): a crop below half the area leaves too few pixels to see.
        return cls(scale=(0.6, 1.0), brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, jitter_p=0.5)


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """A random box of ``scale`` of the area and ``ratio`` aspect, resized to ``size`` squared."""
    h, w = img.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            break
    else:  # no box fits (extreme ratios): fall back to the whole image
        x0, y0, cw, ch = 0, 0, w, h
    # Pillow crops and resizes in one call (``box``), which is both faster and sharper
    # than cropping in NumPy and resizing afterwards.
    out = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return np.asarray(out, dtype=np.uint8)


def hflip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.3, contrast: float = 0.3,
                 saturation: float = 0.3, hue: float = 0.0) -> np.ndarray:
    """Brightness, contrast, saturation and hue changes, applied in a random order."""
    x = img.astype(np.float32)
    ops = rng.permutation(4)
    for op in ops:
        if op == 0 and brightness > 0:
            x = x * rng.uniform(1 - brightness, 1 + brightness)
        elif op == 1 and contrast > 0:
            mean = float((x @ _LUMA).mean())
            x = (x - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
        elif op == 2 and saturation > 0:
            grey = (x @ _LUMA)[..., None]
            x = (x - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
        elif op == 3 and hue > 0:
            x = _shift_hue(np.clip(x, 0, 255), rng.uniform(-hue, hue))
    return np.clip(x, 0, 255).astype(np.uint8)


def grayscale(img: np.ndarray) -> np.ndarray:
    grey = np.clip(img.astype(np.float32) @ _LUMA, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def augment(img: np.ndarray, size: int, rng: np.random.Generator, config: AugmentConfig | None = None) -> np.ndarray:
    """One augmented view of ``img`` at ``size`` x ``size``."""
    cfg = config or AugmentConfig()
    out = random_resized_crop(img, size, rng, cfg.scale, cfg.ratio)
    if rng.random() < cfg.flip:
        out = hflip(out)
    if rng.random() < cfg.jitter_p:
        out = color_jitter(out, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    if cfg.grayscale_p and rng.random() < cfg.grayscale_p:
        out = grayscale(out)
    return out


def augment_batch(images: np.ndarray, size: int, rng: np.random.Generator,
                  config: AugmentConfig | None = None) -> np.ndarray:
    """Augment each image of an (n, H, W, 3) batch independently: (n, size, size, 3) uint8."""
    return np.stack([augment(im, size, rng, config) for im in images])


def _shift_hue(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotate hue by ``shift`` turns: a rotation of the chroma plane in YIQ space.

    Equivalent to an HSV hue shift for small angles, and stays in vectorised NumPy.
    """
    theta = 2 * math.pi * shift
    c, s = math.cos(theta), math.sin(theta)
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)
    m = np.linalg.inv(to_yiq) @ rot @ to_yiq
    return x @ m.T.astype(np.float32)
