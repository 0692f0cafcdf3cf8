"""Decoding every odd case: formats, orientation, colour modes, limits and broken files.

Every file is built here, in the test; nothing comes from the network or ../shared.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from imagespace import images
from imagespace.images import ImageError, decode, load_image, load_pil, read_bytes

SIZE = 224


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def quadrants(w: int = 80, h: int = 40) -> np.ndarray:
    """Four distinct colours, one per quadrant: every flip and rotation of it is different."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (230, 20, 20)  # top left red
    a[: h // 2, w // 2 :] = (20, 200, 20)  # top right green
    a[h // 2 :, : w // 2] = (20, 20, 230)  # bottom left blue
    a[h // 2 :, w // 2 :] = (240, 240, 240)  # bottom right white
    return a


def resized(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)


def centre(d: images.DecodedImage) -> np.ndarray:
    return d.pixels[SIZE // 2, SIZE // 2].astype(int)


# -- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,kw,tolerance",
    [
        ("JPEG", {"quality": 95}, 12),
        ("PNG", {}, 1),
        ("WEBP", {"lossless": True}, 1),
        ("GIF", {}, 1),
        ("BMP", {}, 1),
        ("TIFF", {}, 1),
        ("TIFF", {"compression": "tiff_lzw"}, 1),
    ],
)
def test_each_format_decodes_to_rgb(fmt, kw, tolerance):
    a = quadrants()
    d = decode(encode(Image.fromarray(a), fmt, **kw))
    assert d.pixels.shape == (SIZE, SIZE, 3) and d.pixels.dtype == np.uint8
    assert (d.width, d.height) == (80, 40)
    assert d.format == fmt
    # Compare away from the quadrant borders, where resizing blends colours.
    diff = np.abs(d.pixels.astype(np.float32) - resized(a))
    inner = np.ones((SIZE, SIZE), bool)
    inner[SIZE // 2 - 8 : SIZE // 2 + 8] = False
    inner[:, SIZE // 2 - 8 : SIZE // 2 + 8] = False
    assert diff[inner].max() <= tolerance * 3
    assert diff[inner].mean() <= tolerance


def test_jpeg_content_with_a_png_name_is_decoded_by_content(tmp_path):
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(encode(Image.fromarray(quadrants()), "JPEG"))
    d = load_image(path)
    assert d.format == "JPEG" and (d.width, d.height) == (80, 40)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_uses_first_frame(fmt):
    frames = [Image.new("RGB", (40, 30), c) for c in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # really animated
    d = decode(data)
    assert np.abs(d.pixels.astype(int) - (250, 0, 0)).max() <= 6
    assert (d.width, d.height) == (40, 30)


def test_multipage_tiff_uses_first_page():
    pages = [Image.new("RGB", (32, 32), c) for c in [(0, 0, 255), (255, 0, 0)]]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert centre(decode(data)).tolist() == [0, 0, 255]


# -- EXIF orientation ----------------------------------------------------------------------

# What a viewer shows for each EXIF orientation of the stored pixels.
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(orientation, fmt):
    a = quadrants(80, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    d = decode(encode(Image.fromarray(a), fmt, exif=exif.tobytes(), **kw))
    expected = np.ascontiguousarray(ORIENTED[orientation](a))
    h, w = expected.shape[:2]
    assert (d.width, d.height) == (w, h)
    if orientation >= 5:
        assert (d.width, d.height) == (40, 80)  # width and height swapped
    diff = np.abs(d.pixels.astype(np.float32) - resized(expected)).mean()
    assert diff < 8, f"orientation {orientation}: mean difference {diff:.1f} from the upright image"
    # and it is not simply the stored (unrotated) pixels, unless orientation is 1
    if orientation != 1:
        assert np.abs(d.pixels.astype(np.float32) - resized(a)).mean() > 40


def test_orientation_6_rotates_pixels_clockwise():
    a = np.zeros((30, 60, 3), np.uint8)
    a[:, :30] = (0, 0, 255)  # left half blue
    a[:, 30:] = (255, 0, 0)  # right half red
    exif = Image.Exif()
    exif[0x0112] = 6
    d = decode(encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes()))
    assert (d.width, d.height) == (30, 60)
    # turned clockwise, the left (blue) half is now on top and the red half below
    top, bottom = d.pixels[20, SIZE // 2].astype(int), d.pixels[SIZE - 20, SIZE // 2].astype(int)
    assert top[2] > 200 and top[0] < 50
    assert bottom[0] > 200 and bottom[2] < 50


@pytest.mark.parametrize("mode", ["RGB", "CMYK", "RGBA"])
def test_grey_load_is_upright_and_matches_the_colour_image_made_grey(tmp_path, mode):
    """``load_pil(grey=True)``: a JPEG's own luma (its colour never decoded), or any other
    image made grey; upright, and within a few grey levels of the RGB image made grey."""
    y, x = np.mgrid[0:40, 0:60]
    a = np.stack([x * 4, y * 6, 255 - x * 2], axis=-1).astype(np.uint8)  # smooth colours, like a photo
    a[:, :30] //= 4  # a dark left half
    im = Image.fromarray(a).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / ("x.png" if mode == "RGBA" else "x.jpg")
    im.save(path, **({"exif": exif.tobytes(), "quality": 95} if mode != "RGBA" else {}))
    grey, rgb = load_pil(path, grey=True), load_pil(path)
    assert grey.mode == "L" and grey.size == rgb.size == ((40, 60) if mode != "RGBA" else (60, 40))
    g = np.asarray(grey, dtype=int)
    diff = np.abs(g - np.asarray(rgb.convert("L"), dtype=int))
    assert diff.mean() < 1 and diff.max() <= 8, (diff.mean(), diff.max())  # most at the sharp colour edge
    if mode != "RGBA":  # turned clockwise: the dark left half is now on top
        assert g[:25].mean() < g[35:].mean() / 2


def test_broken_exif_block_is_ignored():
    # An EXIF segment that is not valid TIFF data must not fail the image.
    good = encode(Image.fromarray(quadrants()), "JPEG")
    d = decode(encode(Image.fromarray(quadrants()), "JPEG", exif=b"Exif\x00\x00garbage-not-tiff"))
    assert (d.width, d.height) == (80, 40)
    assert np.abs(d.pixels.astype(int) - decode(good).pixels.astype(int)).mean() < 3


# -- colour modes --------------------------------------------------------------------------


def test_palette_with_transparency_composites_on_white():
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.paste(1, (20, 0, 40, 40))  # right half: colour 1 (red), left half: colour 0
    for data in (encode(im, "PNG", transparency=0), encode(im, "GIF", transparency=0)):
        assert Image.open(io.BytesIO(data)).mode == "P"
        d = decode(data)
        assert d.pixels[SIZE // 2, 10].tolist() == [255, 255, 255]  # transparent black became white
        assert np.abs(d.pixels[SIZE // 2, SIZE - 10].astype(int) - (200, 30, 30)).max() <= 2


def test_rgba_alpha_composites_on_white():
    a = np.zeros((40, 40, 4), np.uint8)
    a[:, :20] = (0, 0, 0, 0)  # fully transparent black
    a[:, 20:] = (0, 0, 255, 255)  # opaque blue
    a[:10, 20:] = (0, 0, 0, 128)  # half transparent black
    d = decode(encode(Image.fromarray(a, "RGBA"), "PNG"))
    assert d.pixels[SIZE // 2, 10].tolist() == [255, 255, 255]
    assert d.pixels[SIZE - 10, SIZE - 10].tolist() == [0, 0, 255]
    assert all(120 <= v <= 135 for v in d.pixels[10, SIZE - 10])  # black at 50% on white: grey


def test_la_grey_with_alpha():
    a = np.zeros((40, 40, 2), np.uint8)
    a[:, :20] = (0, 0)  # transparent
    a[:, 20:] = (60, 255)  # opaque dark grey
    data = encode(Image.fromarray(a, "LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    d = decode(data)
    assert d.pixels[SIZE // 2, 10].tolist() == [255, 255, 255]
    assert d.pixels[SIZE // 2, SIZE - 10].tolist() == [60, 60, 60]


def test_cmyk_jpeg_becomes_rgb():
    im = Image.new("CMYK", (60, 40), (0, 255, 255, 0))  # pure red in CMYK
    im.paste((255, 255, 0, 0), (30, 0, 60, 40))  # pure blue on the right
    data = encode(im, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    d = decode(data)
    left, right = d.pixels[SIZE // 2, 20].astype(int), d.pixels[SIZE // 2, SIZE - 20].astype(int)
    assert left[0] > 220 and left[1] < 40 and left[2] < 40
    assert right[2] > 220 and right[0] < 40 and right[1] < 40


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_greyscale_is_scaled_not_clipped(fmt):
    a = np.zeros((32, 64), np.uint16)
    a[:, :32] = 30000  # about 46% of the 16-bit range
    a[:, 32:] = 65535
    data = encode(Image.fromarray(a), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    d = decode(data)
    left, right = d.pixels[SIZE // 2, 20], d.pixels[SIZE // 2, SIZE - 20]
    assert left.tolist() == [117, 117, 117]  # 30000 / 65535 * 255, not clipped to white
    assert right.tolist() == [255, 255, 255]


def test_16bit_gradient_keeps_its_range():
    a = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    d = decode(encode(Image.fromarray(a), "PNG"))
    row = d.pixels[SIZE // 2, :, 0].astype(int)
    assert row[0] <= 3 and row[-1] >= 252
    assert np.all(np.diff(row) >= 0)  # monotonic: not saturated halfway
    assert 100 <= row[SIZE // 2] <= 155


def test_one_bit_image():
    im = Image.new("1", (64, 32), 0)
    im.paste(1, (32, 0, 64, 32))
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    d = decode(data)
    assert d.pixels[SIZE // 2, 10].tolist() == [0, 0, 0]
    assert d.pixels[SIZE // 2, SIZE - 10].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_greyscale_image(fmt):
    a = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    data = encode(Image.fromarray(a, "L"), fmt)
    d = decode(data)
    px = d.pixels.astype(int)
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    assert px[:, 0, 0].mean() < 15 and px[:, -1, 0].mean() > 240


# -- large images ----------------------------------------------------------------------------


def test_large_jpeg_is_decoded_via_draft(monkeypatch):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BILINEAR)
    data = encode(big, "JPEG", quality=85)

    scales = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):  # a spy: the real draft still runs
        result = original_draft(self, mode, size)
        scales.append((self.size, result))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    d = decode(data)
    assert (d.width, d.height) == (4000, 3000)  # the original size, not the reduced one
    assert d.pixels.shape == (SIZE, SIZE, 3)
    assert scales, "draft() was not called for a large JPEG"
    decoded_size = scales[-1][0]
    assert decoded_size[0] <= 1000, f"decoded at {decoded_size}, not at a reduced scale"
    # the reduced decode still shows the same picture as a full decode would
    expected = np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(d.pixels.astype(np.float32) - expected).mean() < 20


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG that claims a size but carries no pixel data: costs nothing to make."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def real_one_bit_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of all-black rows, compressed as it is built."""
    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    block = row * 1000
    parts = [comp.compress(block) for _ in range(height // 1000)]
    parts.append(comp.compress(row * (height % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


def assert_pixel_limit_reason(message: str) -> None:
    text = message.lower()
    assert "pixels" in text and ("limit" in text or "decompression bomb" in text), message


def test_40000_square_png_header_is_refused_without_decoding():
    with pytest.raises(ImageError) as err:
        decode(png_header_only(40_000, 40_000))
    assert_pixel_limit_reason(str(err.value))


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(real_one_bit_png(40_000, 40_000))
    return path


def test_real_40000_square_png_is_refused_by_the_pixel_limit(huge_png):
    assert huge_png.stat().st_size < 2_000_000  # a small file that would be 1.6 gigapixels
    with pytest.raises(ImageError) as err:
        load_image(huge_png)
    assert_pixel_limit_reason(str(err.value))
    with pytest.raises(ImageError) as err:
        load_pil(huge_png, max_side=256)
    assert_pixel_limit_reason(str(err.value))
    assert "corrupt" not in str(err.value)  # the file is fine; it is too large


def test_huge_png_is_refused_without_using_memory(huge_png):
    """Decoded, the 1.6 gigapixel file would need 1.6 GB; refused, the process stays small."""
    code = (
        "import sys\n"
        "from imagespace.images import ImageError, load_image\n"
        "try:\n"
        "    load_image(sys.argv[1])\n"
        "except ImageError as e:\n"
        "    print('refused:', e)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child forked
        # from a large pytest process would report the parent's peak, not its own.
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(huge_png)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("refused:")
    assert int(lines[-1]) < 400, f"peak memory {lines[-1]} MB: the image was decoded"


def test_image_over_our_own_limit_below_pillows_is_refused():
    # 20,000 x 20,000 = 400 MP: over MAX_PIXELS (256 MP) but under Pillow's hard limit (2x).
    with pytest.raises(ImageError) as err:
        decode(png_header_only(20_000, 20_000))
    assert_pixel_limit_reason(str(err.value))
    # and a caller's lower limit is honoured with a reason naming it
    with pytest.raises(ImageError) as err:
        decode(encode(Image.new("RGB", (50, 50)), "PNG"), max_pixels=1000)
    assert "50x50" in str(err.value) and "1,000" in str(err.value)


# -- broken files ----------------------------------------------------------------------------


def jpeg_bytes() -> bytes:
    rng = np.random.default_rng(1)
    return encode(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)), "JPEG", quality=90)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(path)
    with pytest.raises(ImageError, match="empty file"):
        decode(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    data = jpeg_bytes() if fmt == "JPEG" else encode(Image.open(io.BytesIO(jpeg_bytes())), "PNG")
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert "truncated" in str(err.value).lower() or "corrupt" in str(err.value).lower()


def test_random_bytes_named_jpg(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(2).bytes(10_000))
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my holiday notes, not a picture\n" * 20)
    with pytest.raises(ImageError, match="not a recognised image format"):
        load_image(path)


def test_jpeg_header_then_garbage(tmp_path):
    data = jpeg_bytes()
    path = tmp_path / "garbled.jpg"
    path.write_bytes(data[:20] + np.random.default_rng(3).bytes(len(data) - 20))
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(err.value)


def test_directory_named_like_an_image(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path / "x.jpg")


def test_path_whose_parent_is_not_a_directory(tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(ImageError, match="[Nn]ot a directory"):
        load_image(tmp_path / "plain" / "x.jpg")


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "nowhere.jpg")
    text = str(err.value).lower()
    assert "no such file" in text or "not found" in text


def test_file_over_the_byte_limit_is_not_read(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes())
    with pytest.raises(ImageError, match="over the limit"):
        read_bytes(path, max_bytes=100)


def test_unreadable_file(tmp_path):
    """chmod 000: permission denied. Root reads anything, so as root the test drops to the
    'nobody' user (effective uid only, restored afterwards) to see what a normal user sees."""
    folder = Path(tempfile.mkdtemp(prefix="imagespace-perm-"))
    try:
        os.chmod(folder, 0o755)  # traversable by anyone; the file itself is not readable
        path = folder / "secret.jpg"
        path.write_bytes(jpeg_bytes())
        os.chmod(path, 0)
        if os.geteuid() == 0:
            try:
                os.seteuid(65534)
            except OSError as e:
                pytest.skip(f"running as root and cannot drop to an unprivileged user ({e}): chmod 000 cannot stop root")
            try:
                with pytest.raises(ImageError, match="permission denied"):
                    load_image(path)
            finally:
                os.seteuid(0)
        else:
            with pytest.raises(ImageError, match="permission denied"):
                load_image(path)
    finally:
        os.chmod(folder / "secret.jpg", 0o644)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the corrupt TIFF tags
def test_every_failure_is_an_image_error_not_a_crash():
    """A fuzz of small corruptions of valid files: each either decodes or gives a reason."""
    rng = np.random.default_rng(4)
    base = {
        "JPEG": jpeg_bytes(),
        "PNG": encode(Image.fromarray(quadrants()), "PNG"),
        "GIF": encode(Image.fromarray(quadrants()), "GIF"),
        "BMP": encode(Image.fromarray(quadrants()), "BMP"),
        "TIFF": encode(Image.fromarray(quadrants()), "TIFF"),
        "WEBP": encode(Image.fromarray(quadrants()), "WEBP"),
    }
    for fmt, data in base.items():
        for _ in range(15):
            b = bytearray(data)
            for pos in rng.integers(0, min(len(b), 200), 4):
                b[pos] = rng.integers(0, 256)
            if rng.random() < 0.5:
                b = b[: rng.integers(1, len(b))]
            try:
                d = decode(bytes(b))
            except ImageError as e:
                assert str(e), f"{fmt}: an empty reason"
            else:
                assert d.pixels.shape == (SIZE, SIZE, 3)
