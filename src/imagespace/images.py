"""The only module that opens image files.

Everything that can go wrong with a file on disk becomes an :class:`ImageError` whose
message is a reason a person can act on; callers record it and move on.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Extensions that a scan picks up. Other files in a folder are not images to us and are
# ignored silently (a .txt or .xmp beside the photos is normal); a file with one of these
# extensions that does not decode is a failure with a reason.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)

# 16,000 x 16,000 is larger than any camera; beyond it a file is almost certainly a
# decompression bomb or a scan that would take gigabytes to hold.
MAX_PIXELS = 256_000_000
# Files over this size are refused before being read at all.
MAX_FILE_BYTES = 512 * 1024 * 1024

# Pillow refuses by itself at 2x its limit and only warns at 1x; we check the header
# ourselves against MAX_PIXELS, so let Pillow's own guard sit just above ours.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A file that could not be turned into pixels, with the reason why."""


# The side at which duplicates are verified (local features, aligned pixels): a 4000x3000
# JPEG decodes at 1/8 to exactly 500x375, as it does for the model.
VERIFY_SIDE = 500


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for a model plus what we learnt about the original file."""

    pixels: np.ndarray  # (size, size, 3) uint8 RGB
    width: int  # of the original image, after EXIF orientation
    height: int
    format: str
    # The grey image that duplicate verification decodes (``verify_grey``), when asked for
    # and when the model's decode gave the very same pixels for free (large JPEGs).
    grey: np.ndarray | None = None


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole file, turning OS errors into reasons."""
    try:
        if os.path.isdir(path):
            raise ImageError("is a directory, not an image file")
        size = os.path.getsize(path)
        if size == 0:
            raise ImageError("empty file (0 bytes)")
        if size > max_bytes:
            raise ImageError(f"file is {size:,} bytes, over the limit of {max_bytes:,}")
        with open(path, "rb") as f:
            return f.read()
    except ImageError:
        raise
    except PermissionError:
        raise ImageError("permission denied") from None
    except FileNotFoundError:
        # A query path with a typo and a file deleted during a scan both end here.
        raise ImageError("no such file (missing, or moved or deleted before it could be read)") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None


def decode(data: bytes, size: int = 224, max_pixels: int = MAX_PIXELS, grey_side: int | None = None) -> DecodedImage:
    """Decode image bytes to a ``size`` x ``size`` RGB array.

    The whole image is resized (not centre-cropped): on photos this measured better, since
    subjects often reach the edges. Large JPEGs are decoded at a reduced scale first.

    With ``grey_side``, a JPEG decoded at a reduced scale that ``verify_grey(.., grey_side)``
    would decode at too also gives that grey image (``.grey``), so duplicate verification
    need not decode the file again: the decode is most of its cost on camera photos.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width:,}x{height:,} pixels, over the limit of "
                    f"{max_pixels:,} pixels (possible decompression bomb)"
                )
            fmt = im.format or "unknown"
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF/WebP/TIFF: the first frame stands for the file
            if fmt == "JPEG":
                # Let libjpeg scale by 1/2, 1/4 or 1/8 while decoding: a 12 MP photo then
                # costs a fraction of a full decode. Both sides stay at least ``size``; the
                # DCT scaling already averages, so asking for 2x cost 1.4x the decode time
                # for no gain (3 MP flowers12 photos: cosine 0.9994 to a full decode either
                # way, precision@1 0.958 vs 0.954).
                im.draft("RGB", (size, size))
            share_grey = grey_side is not None and fmt == "JPEG" and im.size != (width, height) and (
                _drafted_size(data, width, height, grey_side) == im.size)
            im.load()
            # Some decoders (TIFF) apply the orientation while loading and report the
            # upright size already: swap width and height only if exif_transpose turned it.
            loaded_size = im.size
            im = ImageOps.exif_transpose(im) or im
            transposed = im.size != loaded_size
            rgb = _to_rgb(im)
            grey = _grey_at(rgb, grey_side) if share_grey else None
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            pixels = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own message quotes its limit, not ours: say ours.
        raise ImageError(f"refused as a possible decompression bomb (over {max_pixels:,} pixels)") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageError(f"truncated or corrupt image data ({msg})") from None
        raise ImageError(f"corrupt image: {msg}") from None
    if pixels.shape != (size, size, 3):
        raise ImageError(f"unexpected decoded shape {pixels.shape}")
    if transposed:
        width, height = height, width
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt, grey=grey)


def load_image(path: str | os.PathLike[str], size: int = 224) -> DecodedImage:
    """Read and decode one file; raises :class:`ImageError` with a reason."""
    return decode(read_bytes(path), size=size)


def load_pil(path: str | os.PathLike[str], max_side: int | None = None, *, grey: bool = False) -> Image.Image:
    """An upright RGB Pillow image, for thumbnails and analysis that needs more pixels; with
    ``grey``, an "L" image (a JPEG's own luma: its colour is never decoded, which halves a
    full-size decode; at 1/8 scale the entropy decoding is all the cost either way)."""
    data = read_bytes(path)
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"image is {w:,}x{h:,} pixels, over the limit of {MAX_PIXELS:,}")
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if im.format == "JPEG" and (max_side or grey):
            im.draft("L" if grey else "RGB", _box(w, h, max_side) if max_side else (w, h))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # (not in place, it copies even an upright image)
        im = (im if im.mode == "L" else _to_rgb(im).convert("L")) if grey else _to_rgb(im)
        if max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return im
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except Image.DecompressionBombError:
        raise ImageError(f"refused as a possible decompression bomb (over {MAX_PIXELS:,} pixels)") from None
    except Exception as e:  # noqa: BLE001 - every decoder failure becomes a reason
        raise ImageError(f"corrupt image: {e}") from None


def verify_grey(path: str | os.PathLike[str], side: int = VERIFY_SIDE) -> np.ndarray:
    """The grey image duplicate verification works on: upright, longest side at most ``side``.

    :func:`decode` with ``grey_side`` gives the same array when it can (``DecodedImage.grey``).
    """
    return _grey_at(load_pil(path, max_side=side), side)


def _grey_at(rgb: Image.Image, side: int) -> np.ndarray:
    if max(rgb.size) > side:
        rgb = rgb.copy()
        rgb.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(rgb.convert("L"))


def _box(w: int, h: int, side: int) -> tuple[int, int]:
    # The box the result fits in, not a square: a 4000x3000 photo for 500 px then decodes
    # at 1/8 (500x375) instead of 1/4, about 10 ms instead of 17.
    return (side, max(1, side * h // w)) if w >= h else (max(1, side * w // h), side)


def _drafted_size(data: bytes, w: int, h: int, side: int) -> tuple[int, int]:
    """The size at which :func:`load_pil` (``max_side=side``) decodes this JPEG (header only)."""
    probe = Image.open(io.BytesIO(data))
    probe.draft("RGB", _box(w, h, side))
    return probe.size


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and 32-bit greyscale: scale the real range to 8 bits instead of letting
        # Pillow clip everything above 255 to white.
        # Scaled in bands of rows: float64 over a whole 256-megapixel image would take 2 GB
        # per temporary array (a tiny hostile PNG can declare that many pixels).
        arr = np.asarray(im)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        lo = float(arr.min()) if mode == "F" else 0.0
        span = max(float(arr.max()) - lo, 1e-12)
        out = np.empty(arr.shape, dtype=np.uint8)
        rows = max(1, 1_000_000 // max(arr.shape[1], 1))
        for top in range(0, arr.shape[0], rows):
            band = arr[top : top + rows].astype(np.float64)
            band = (band - lo) / span * 255.0 if mode == "F" else np.clip(band, 0, hi) / hi * 255.0
            out[top : top + rows] = band.round().astype(np.uint8)
        return Image.fromarray(out, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        composite = Image.alpha_composite(background, rgba)
        del background, rgba  # at 4 bytes a pixel each copy counts: keep at most three alive
        return composite.convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    return im.convert("RGB")



# -- capture facts: what the file says about where it came from --------------------------

# The IJG (libjpeg) luminance table at quality 50: a file's own table divided by it gives the
# scale its encoder used, hence the quality it was saved at.
_IJG_LUMINANCE_Q50 = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_EXIF_IFD = 0x8769
_MAKE, _MODEL = 0x010F, 0x0110
_DATETIME_ORIGINAL, _SUBSEC_ORIGINAL, _LENS_MODEL = 0x9003, 0x9291, 0xA434


@dataclass(frozen=True)
class CaptureFacts:
    """Header facts of one file that tell an original from an edit, and one shot from another.

    ``taken`` is the EXIF capture time in seconds (DateTimeOriginal with SubsecTimeOriginal,
    read as UTC: only differences between files matter); ``camera`` is make, model and lens;
    ``jpeg_quality`` is the IJG quality the luminance table corresponds to (None when the
    file is not a JPEG).
    """

    taken: float | None = None
    camera: str | None = None
    jpeg_quality: int | None = None


def capture_facts(path: str | os.PathLike[str]) -> CaptureFacts:
    """EXIF capture time, camera and JPEG quality, from the header only (no pixel decode).

    Never raises: a file whose header cannot be read has no facts.
    """
    import calendar
    import time as _time

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            quality = _jpeg_quality(im) if im.format == "JPEG" else None
            sub = exif.get_ifd(_EXIF_IFD) if exif else {}
            make, model = str(exif.get(_MAKE, "") or "").strip(), str(exif.get(_MODEL, "") or "").strip()
            lens = str(sub.get(_LENS_MODEL, "") or "").strip()
            camera = " ".join(p for p in (make, model, lens) if p) or None
            taken = None
            stamp = str(sub.get(_DATETIME_ORIGINAL, "") or "").strip().strip("\x00")
            if stamp:
                try:
                    taken = float(calendar.timegm(_time.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")))
                except ValueError:
                    taken = None
                digits = "".join(ch for ch in str(sub.get(_SUBSEC_ORIGINAL, "") or "") if ch.isdigit())
                if taken is not None and digits:
                    taken += int(digits) / 10 ** len(digits)
            return CaptureFacts(taken=taken, camera=camera, jpeg_quality=quality)
    except Exception:  # noqa: BLE001 - facts are optional: a bad header means none
        return CaptureFacts()


def _jpeg_quality(im: Image.Image) -> int | None:
    tables = getattr(im, "quantization", None) or {}
    lum = tables.get(0)
    if lum is None or len(lum) != 64:
        return None
    # Tables are stored in zigzag or natural order depending on the Pillow version; the
    # mean ratio does not depend on the order.
    scale = float(np.mean(np.asarray(lum, dtype=np.float64)) / np.mean(_IJG_LUMINANCE_Q50)) * 100.0
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(round(min(100.0, max(1.0, quality))))
