"""Decoding query bytes: the same pixels as a gallery file, and a status for every kind of bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedlab.data.decoding import ImageRejectedError, declared_pixels, decode_image
from embedlab.data.images import read_image


@pytest.mark.parametrize("shape", [(37, 53), (5, 9)], ids=["smaller", "larger"])
@pytest.mark.parametrize(
    ("mode", "channels"), [("RGB", 3), ("RGB", 1), ("L", 3), ("L", 1), ("P", 3), ("RGBA", 1), ("RGBA", 3)]
)
def test_bytes_decode_to_the_pixels_a_gallery_file_gets(
    tmp_path: Path, mode: str, channels: int, shape: tuple[int, int]
) -> None:
    """L and RGB files are resized before converting (less memory), the others after: the pixels are
    the gallery's either way, when the image shrinks to the trained square and when it grows to it."""
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).convert(mode).save(path)
    decoded = decode_image(path.read_bytes(), 16, channels)
    assert decoded.shape == (channels, 16, 16) and decoded.dtype == np.uint8
    assert torch.equal(torch.from_numpy(decoded), read_image(path, 16, channels))


def test_an_image_within_the_pixel_limit_is_decoded() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (100, 50), (1, 2, 3)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), 8, 3, max_pixels=5_000).shape == (3, 8, 8)


def _rejection(data: bytes, **kwargs: int) -> ImageRejectedError:
    with pytest.raises(ImageRejectedError) as caught:
        decode_image(data, 16, 3, name="upload 'x'", **kwargs)
    return caught.value


def test_empty_bytes_are_a_400() -> None:
    error = _rejection(b"")
    assert error.status == 400 and "upload 'x' is empty" in str(error)


def test_text_is_a_415() -> None:
    error = _rejection(b"name,label\nwhale.jpg,7\n")
    assert error.status == 415 and "not an image" in str(error)


def test_a_truncated_jpeg_is_a_422(truncated_jpeg: bytes) -> None:
    error = _rejection(truncated_jpeg)
    assert error.status == 422 and "could not be decoded" in str(error) and "truncated" in str(error)


def test_too_many_pixels_are_refused_from_the_header(make_blank_png) -> None:
    error = _rejection(make_blank_png(300, 200), max_pixels=50_000)
    assert error.status == 413
    assert "300 x 200 pixels (0.1 megapixels); the limit is 0.1 megapixels" in str(error)


def test_a_decompression_bomb_is_a_413_without_decoding(bomb_png: bytes) -> None:
    assert len(bomb_png) < 1_000_000  # 400 MB of pixels in under a megabyte
    error = _rejection(bomb_png, max_pixels=10**12)  # Pillow's own guard still stops it
    assert error.status == 413 and "too large to decode" in str(error)
    assert _rejection(bomb_png).status == 413


def test_the_generated_blank_png_is_a_valid_image(make_blank_png) -> None:
    pixels = decode_image(make_blank_png(40, 30), 8, 1)
    assert pixels.shape == (1, 8, 8) and not pixels.any()


def test_declared_pixels_come_from_the_header(make_blank_png, bomb_png: bytes) -> None:
    assert declared_pixels(make_blank_png(300, 200)) == 60_000
    assert declared_pixels(make_blank_png(7_000, 7_000)) == 49_000_000
    # an unreadable header costs nothing: decode_image refuses it before decoding
    assert declared_pixels(b"") == declared_pixels(b"not an image") == 0
    assert declared_pixels(bomb_png) == 0  # over Pillow's own guard
