"""Hostile bytes into the decoding path: only ImageError, no hang, bounded memory.

Hypothesis mutates real JPEG, PNG, GIF, TIFF, WebP and BMP files made here (bit flips,
interesting numbers written over header fields, inserted, deleted and duplicated runs,
truncation, splices of two files; PNG chunk checksums are fixed up afterwards so that the
mutations reach the decoder instead of stopping at the CRC check). Each input goes through
``imagespace.images.decode`` exactly as an indexed file or an uploaded query would.

Quick: 40 inputs per format in `make test`. Slow: 2,000 per format in `make stress`.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from collections import Counter

import numpy as np
import pytest
from conftest import make_photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imagespace.images import MAX_PIXELS, DecodedImage, ImageError, decode

HANG_SECONDS = 30.0  # one decode of a small mutated file taking longer than this is a hang
# Peak RSS growth over a whole fuzz run. A few hundred bytes can declare up to MAX_PIXELS
# pixels (Pillow then holds 4 bytes a pixel, plus the conversion): 6 bytes a pixel bounds it.
MEMORY_GROWTH_MB = 6 * MAX_PIXELS // 2**20
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, list[bytes]]:
    photo = make_photo(7, (40, 30))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((40, 30)))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [make_photo(s, (24, 18)).convert("P") for s in range(3)]
    grey16 = Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
    return {
        "JPEG": [
            _encode(photo, "JPEG", quality=80),
            _encode(photo, "JPEG", quality=80, progressive=True, exif=exif.tobytes()),
            _encode(photo.convert("L"), "JPEG"),
            _encode(photo.convert("CMYK"), "JPEG"),
        ],
        "PNG": [
            _encode(photo, "PNG"),
            _encode(rgba, "PNG"),
            _encode(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", transparency=0),
            _encode(grey16, "PNG"),
            _encode(photo.convert("LA"), "PNG"),
        ],
        "GIF": [
            _encode(frames[0], "GIF"),
            _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        ],
        "TIFF": [
            _encode(photo, "TIFF"),
            _encode(photo, "TIFF", compression="tiff_lzw"),
            _encode(grey16, "TIFF"),
            _encode(photo, "TIFF", save_all=True, append_images=[make_photo(8, (40, 30))]),
        ],
        "WEBP": [
            _encode(photo, "WEBP", quality=70),
            _encode(rgba, "WEBP", lossless=True),
            _encode(frames[0].convert("RGB"), "WEBP", save_all=True, append_images=[f.convert("RGB") for f in frames[1:]]),
        ],
        "BMP": [_encode(photo, "BMP"), _encode(frames[0], "BMP")],
    }


SEEDS = _seeds()
# Pillow warns about the damage it meets (corrupt EXIF, skipped tags): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@st.composite
def mutated(draw, fmt: str) -> bytes:
    """One seed file of ``fmt`` with 1-6 mutations (or two seeds spliced)."""
    data = bytearray(draw(st.sampled_from(SEEDS[fmt])))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "byte", "number", "insert", "delete", "dupe", "truncate", "splice"]))
        # Half of the mutations land in the first 64 bytes, where the headers live.
        hi = min(len(data), 64) if draw(st.booleans()) else len(data)
        pos = draw(st.integers(0, hi - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "number":
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            order = draw(st.sampled_from(["<", ">"]))
            data[pos : pos + width] = struct.pack(order + ("H" if width == 2 else "I"), value)
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 256))]
        elif kind == "dupe":
            n = draw(st.integers(1, 512))
            data[pos:pos] = data[pos : pos + n] * draw(st.integers(1, 8))
        elif kind == "truncate":
            del data[pos:]
        else:
            other = draw(st.sampled_from([s for seeds in SEEDS.values() for s in seeds]))
            cut = draw(st.integers(0, len(other)))
            data[pos:] = other[cut:]
    return _fix_png_crcs(bytes(data)) if fmt == "PNG" else bytes(data)


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC so that a mutated PNG is not refused at its checksums."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out = bytearray(data[:8])
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        body = data[pos + 4 : end]
        out += data[pos : end] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end + 4
    out += data[pos:]
    return bytes(out)


class _Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.slowest = 0.0


def _decode_one(data: bytes, tally: _Tally) -> None:
    started = time.monotonic()
    try:
        out = decode(data)
    except ImageError as e:
        assert str(e), "an ImageError must carry a reason"
        tally.counts["refused"] += 1
    else:
        assert isinstance(out, DecodedImage)
        assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8
        assert out.width > 0 and out.height > 0
        tally.counts["decoded"] += 1
    seconds = time.monotonic() - started
    tally.slowest = max(tally.slowest, seconds)
    assert seconds < HANG_SECONDS, f"decode hung for {seconds:.1f}s on {len(data)} bytes: {data[:64]!r}"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fuzz(fmt: str, examples: int) -> None:
    tally = _Tally()
    before = _peak_rss_mb()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=mutated(fmt))
    def run(data: bytes) -> None:
        _decode_one(data, tally)

    run()
    growth = _peak_rss_mb() - before
    total = sum(tally.counts.values())
    print(f"\nfuzz {fmt}: {total} inputs, {dict(tally.counts)}, slowest {tally.slowest:.2f}s, peak RSS growth {growth:.0f} MB")
    assert total >= examples // 2
    assert growth < MEMORY_GROWTH_MB, f"decoding {fmt} inputs grew peak memory by {growth:.0f} MB"


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_seeds_decode(fmt: str) -> None:
    """The unmutated seeds all decode: the fuzzer starts from real files."""
    for data in SEEDS[fmt]:
        assert decode(data).pixels.shape == (224, 224, 3)


@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_fuzz_decode_quick(fmt: str) -> None:
    _fuzz(fmt, examples=40)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(SEEDS))
def test_fuzz_decode_long(fmt: str) -> None:
    _fuzz(fmt, examples=2000)


_BOMB_SCRIPT = r"""
import resource, struct, sys, zlib
from imagespace.images import ImageError, decode

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

side, depth, colour, channels = (int(a) for a in sys.argv[1:])
row = b"\0" * (1 + side * channels * depth // 8)
ihdr = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * side, 9)) + chunk(b"IEND", b"")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode(data)
except ImageError:
    pass
print(len(data), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize("depth,colour,channels", [(16, 0, 1), (8, 2, 3), (8, 6, 4)], ids=["grey16", "rgb", "rgba"])
def test_small_png_declaring_many_pixels_stays_bounded(depth: int, colour: int, channels: int) -> None:
    """A PNG of a few kilobytes declaring 36 megapixels: at most 10 bytes a declared pixel.

    Pillow itself holds 4 bytes a pixel. 16-bit greyscale used to take 17 (float64 copies
    of the whole image) and RGBA 15 (five full-size copies alive at once).
    """
    import subprocess
    import sys

    side = 6000
    out = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, str(side), str(depth), str(colour), str(channels)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    size, growth_mb = out.stdout.split()
    assert int(size) < 200_000
    assert float(growth_mb) < 10 * side * side / 2**20, f"{growth_mb} MB for {side}x{side} pixels"
