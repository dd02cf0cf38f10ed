# python -m pytest tests/test_bad_images.py -q
"""Images that are bombs, deeper than 8 bits, empty, rotated by EXIF, or paths that are not image
files: each is shown as a viewer would show it, or refused with one message naming the problem."""
import io
import os
import re
import struct
import zlib

import pytest
import torch
from PIL import Image

from feather_mini.processing import Processor, load_image
from conftest import IMAGE_ID, make_tokenizer


@pytest.fixture(scope="module")
def processor():
    return Processor(make_tokenizer(), image_size=32, patch_size=8, image_token_index=IMAGE_ID, num_visual_tokens=16)


def png_header_only(width: int, height: int) -> bytes:
    """A greyscale PNG whose IHDR claims width x height but whose IDAT holds a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side,pixels", [(20000, 400000000), (10000, 100000000)])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side, pixels):
    """20000^2 pixels (Pillow's error) and 10000^2 (only Pillow's warning) give one ValueError, path and size named."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(ValueError, match=re.escape(f"{path}: too many pixels to decode safely "
                                                   f"(Image size ({pixels} pixels) exceeds limit of")):
        load_image(path)


@pytest.mark.parametrize("mode,value,grey", [("I;16", 30000, 117), ("I;16", 40000, 156), ("I;16", 65535, 255),
                                             ("I;16B", 30000, 117), ("I;16L", 40000, 156), ("I", 30000, 117),
                                             ("I", -5, 0), ("I", 70000, 255), ("F", 0.5, 128), ("F", 1.0, 255),
                                             ("F", -0.5, 0), ("F", 2.0, 255)])
def test_deep_greys_are_scaled_not_clipped(mode, value, grey):
    """16-bit values scale by 255/65535 (30000 -> 117, not white); floats clip to [0, 1], then scale by 255."""
    assert load_image(Image.new(mode, (3, 2), value)).getpixel((2, 1)) == (grey, grey, grey)


def test_16_bit_png_file():
    """A 16-bit PNG read from disk (Pillow: mode I;16) of value 40000 is grey 156."""
    data = io.BytesIO()
    Image.new("I;16", (4, 4), 40000).save(data, "PNG")
    data.seek(0)
    with Image.open(data) as opened:
        assert opened.mode == "I;16"
        assert load_image(opened).getpixel((0, 0)) == (156, 156, 156)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_pixels_are_refused(processor, value):
    """A float image holding NaN or inf has no colour to show: refused, not turned into black."""
    image = Image.new("F", (4, 4), 0.5)
    image.putpixel((1, 2), value)
    with pytest.raises(ValueError, match=re.escape("mode F image has non-finite pixels (NaN or inf)")):
        processor.pixel_values(image)


@pytest.mark.parametrize("mode,value,rgb", [("1", 1, (255, 255, 255)), ("L", 200, (200, 200, 200)),
                                            ("LA", (200, 0), (255, 255, 255)), ("LA", (0, 255), (0, 0, 0)),
                                            ("LA", (0, 128), (127, 127, 127)), ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
                                            ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
                                            ("CMYK", (0, 0, 0, 0), (255, 255, 255)), ("RGB", (1, 2, 3), (1, 2, 3))])
def test_8_bit_modes_still_convert(mode, value, rgb):
    """The modes convert("RGB") handles keep their colours; a transparent pixel shows white, not its hidden
    colour (LA (200, alpha 0) was grey 200 before), a half-transparent black pixel mid grey."""
    assert load_image(Image.new(mode, (2, 2), value)).getpixel((1, 1)) == rgb


def test_palette_image_still_converts():
    """A P image shows its palette colour."""
    image = Image.new("P", (2, 2), 1)
    image.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    assert load_image(image).getpixel((0, 0)) == (9, 99, 199)


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (7, 0)])
def test_image_with_a_zero_side_is_refused(processor, size):
    """No pixels to show: refused with the size, not padded into a full tensor."""
    w, h = size
    with pytest.raises(ValueError, match=re.escape(f"image is {w}x{h} pixels; each side needs at least 1")):
        processor.pixel_values(Image.new("RGB", size))


def test_exif_orientation_is_applied(tmp_path):
    """A 4x2 PNG tagged orientation 6 (turn 90 degrees clockwise) loads as 2x4; its top-left red pixel lands top-right."""
    image = Image.new("RGB", (4, 2))
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    image.save(tmp_path / "turned.png", exif=exif)
    loaded = load_image(tmp_path / "turned.png")
    assert loaded.size == (2, 4)
    assert [loaded.getpixel((x, y)) for y in range(4) for x in range(2)] == [(0, 0, 0), (255, 0, 0)] + [(0, 0, 0)] * 6


def test_folder_is_not_an_image(tmp_path):
    """A folder is named as a folder, not reported missing."""
    with pytest.raises(IsADirectoryError, match=re.escape(f"{tmp_path} is a folder, not an image file")):
        load_image(tmp_path)


def test_fifo_is_not_an_image(tmp_path):
    """A FIFO is refused before opening (which would wait forever for a writer)."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=re.escape(f"{fifo} is not a regular file (a FIFO, socket or device), "
                                                   "not an image file")):
        load_image(fifo)


def test_symlink_loop(tmp_path):
    """Two links pointing at each other cannot be resolved; the message says so, not 'not found'."""
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'a.png'}: cannot be resolved "
                                                   "(Too many levels of symbolic links)")):
        load_image(tmp_path / "a.png")


def test_empty_path():
    """"" is not the current folder."""
    with pytest.raises(ValueError, match="^empty image path$"):
        load_image("")


def test_unreadable_image_file(tmp_path):
    """A file without read permission says so, with its path."""
    path = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user reads files whatever their mode (root)")
    with pytest.raises(PermissionError, match=re.escape(f"{path}: permission denied (cannot read the image file)")):
        load_image(path)


def test_a_good_image_still_gives_its_tensor(processor):
    """Regression guard for the checks above: a plain RGB image gives a finite (3, 32, 32) float32 tensor."""
    x = processor.pixel_values(Image.new("RGB", (5, 3), (255, 0, 0)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
