"""Of two copies at different sizes, was the larger one enlarged from the smaller? An
enlargement adds pixels but no detail, so "highest resolution" must mean highest
*effective* resolution.

Resampling leaves a mark in the band just below the smaller image's Nyquist frequency, and
which image carries it tells the direction:

- shrinking a picture (with the low-pass filter every resizer applies) softens the smaller
  copy in that band: the larger one holds more there;
- enlarging a picture interpolates the smaller one's samples, and the interpolation kernel
  softens the larger copy in that same band: the smaller one holds more there.

So the two images' power in that band is compared, at the same physical frequencies, on
centred grey windows showing the same part of the picture (copies at different sizes are
resized, so their centres agree). The ratio (larger over smaller) is above 1 when the
smaller is the derived one and below 1 when the larger is.

The other measure one would reach for first, the power *above* the smaller one's Nyquist
frequency in the larger image, did not separate on the train half of
benchmarks/duplicate_tiers.py: enlargements kept 0.03-0.11 of the power just below, genuine
originals 0.05-0.23 (many flowers12 photos carry little detail near their own Nyquist).
"""

from __future__ import annotations

import numpy as np

from ..images import ImageError, load_pil

# Side of the larger image's window, in its own pixels: bounds the FFT cost.
WINDOW = 384
# The band compared, as fractions of the smaller image's Nyquist frequency.
BAND = (0.6, 0.9)
# Larger/smaller power in the band below which the larger copy is an enlargement. On the
# train half enlargements (1.6x, bicubic) scored 0.58-0.67, originals with a copy shrunk
# to 2/3 (Lanczos) 1.07-1.23; the threshold sits between them on a log scale.
ENLARGED_BELOW = 0.85
# Scales closer to 1 than this have no band to compare (and the size rule does not apply).
MIN_SCALE = 1.07


def _band_power(grey: np.ndarray, side: int, low: float, high: float) -> float:
    """Median power spectral density (per pixel, cycles per pixel) of the centred
    ``side``-pixel window of ``grey`` between radial frequencies ``low`` and ``high``."""
    x0, y0, n = _centre(grey.shape[::-1], side)
    win = grey[y0 : y0 + n, x0 : x0 + n].astype(np.float64)
    win -= win.mean()
    taper = np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.rfft2(win * taper)) ** 2 / (taper**2).sum()
    radius = np.hypot(np.fft.rfftfreq(n)[None, :], np.fft.fftfreq(n)[:, None])
    band = power[(radius > low) & (radius < high)]
    return float(np.median(band)) if band.size >= 16 else float("nan")


def _centre(size: tuple[int, int], side: int) -> tuple[int, int, int]:
    """Left, top and side of the centred square window of at most ``side`` pixels of an
    image of ``size`` (width, height) that :func:`_band_power` takes."""
    w, h = size
    n = min(side, h, w) // 2 * 2
    return (w - n) // 2, (h - n) // 2, n


def _sides(smaller_shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """The windows' sides in the larger and in the smaller image: over the same part of the picture."""
    side = WINDOW
    small_side = max(16, round(side / scale))
    if min(smaller_shape) < small_side:  # keep both windows over the same part of the picture
        small_side = min(smaller_shape)
        side = round(small_side * scale)
    return side, small_side


def band_ratio(larger: np.ndarray, smaller: np.ndarray, scale: float) -> float:
    """Power of ``larger`` over power of ``smaller`` just below the smaller one's Nyquist
    frequency, at the same physical frequencies; ``scale`` is larger/smaller (linear, > 1).

    A field sampled ``scale`` times finer has ``scale**2`` times the density per pixel at
    the same physical frequency, hence the division."""
    return _ratio(larger, smaller, *_sides(smaller.shape, scale), scale)


def _ratio(larger: np.ndarray, smaller: np.ndarray, side: int, small_side: int, scale: float) -> float:
    lo, hi = BAND
    p_large = _band_power(larger, side, 0.5 * lo / scale, 0.5 * hi / scale)
    p_small = _band_power(smaller, small_side, 0.5 * lo, 0.5 * hi)
    if not (p_small > 0):
        return float("nan")
    return p_large / (scale**2 * p_small)


def enlargement_ratio(path_larger: str, path_smaller: str, scale: float) -> float | None:
    """:func:`band_ratio` of two files at their own resolution; None when either cannot be
    read or the scale is too close to 1 to tell."""
    if scale < MIN_SCALE:
        return None
    try:
        # Grey as decoded: a JPEG's luma alone, without its colour (38 ms for a 12 MP photo
        # rather than 65-80, and within 2 grey levels of the RGB image made grey).
        large, small = load_pil(path_larger, grey=True), load_pil(path_smaller, grey=True)
    except ImageError:
        return None
    # Cut with their own centring, the windows are the very ones band_ratio takes.
    side, small_side = _sides(small.size, scale)
    large, small = (_centre_grey(im, s) for im, s in ((large, side), (small, small_side)))
    ratio = _ratio(large, small, side, small_side, scale)
    return None if ratio != ratio else round(ratio, 4)


def _centre_grey(im, side: int) -> np.ndarray:
    """The centred window of :func:`_centre` of a grey Pillow image."""
    x0, y0, n = _centre(im.size, side)
    return np.asarray(im.crop((x0, y0, x0 + n, y0 + n)))


def is_enlarged(ratio: float | None) -> bool:
    return ratio is not None and ratio < ENLARGED_BELOW
