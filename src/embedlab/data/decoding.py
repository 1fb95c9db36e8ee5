"""Query images from untrusted bytes: decoded the way gallery files are, within limits.

A query is decoded exactly like a gallery file (`embedlab.data.images.read_image`: Pillow, converted
to L or RGB, resized bilinearly to the trained square), so a gallery image sent as a query gets the
same embedding and scores 1 against itself. Uploads can be anything, so the header's width x height is
checked before any pixel is decoded: a 20,000 x 20,000 PNG is a few hundred kilobytes on the wire and
1.2 GB once decoded.

Memory: Pillow holds an L image in 1 byte a pixel and an RGB one in 4. When the file's mode is the one
wanted, or L when RGB is wanted, the image is resized in its own mode and converted afterwards: the
same pixels (bilinear resizing treats each band alike, and L -> RGB copies the band), without the full
size converted copy (a 50-megapixel grey PNG peaked at 50 MB instead of 240 MB). Other modes are
converted first, as `read_image` does. `declared_pixels` reads the size from the header alone, so that
a server can count what a decode will cost before it starts one.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

#: A 64-megapixel photo (8,000 x 8,000) is the largest decoded by default.
DEFAULT_MAX_PIXELS = 64_000_000
#: (file mode, wanted mode) pairs resized before converting: the result is the convert-first one.
_RESIZE_FIRST = {("L", "L"), ("RGB", "RGB"), ("L", "RGB")}


class ImageRejectedError(ValueError):
    """Bytes that are not a usable image; `status` is the HTTP status that says why.

    400: empty; 413: too many pixels; 415: not an image format Pillow knows; 422: a known format that
    cannot be decoded (truncated or corrupt).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def decode_image(
    data: bytes, image_size: int, channels: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "upload"
) -> np.ndarray:
    """Encoded image bytes -> uint8 pixels (channels, image_size, image_size); errors name `name`."""
    if not data:
        raise ImageRejectedError(f"{name} is empty (0 bytes); send an image file", 400)
    try:
        # Image.open reads the header only; pixels are decoded by convert() below.
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejectedError(
            f"{name} is not an image in a format Pillow reads (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)", 415
        ) from None
    except Image.DecompressionBombError as error:
        # Pillow's own guard fires in Image.open, before the check below, above ~179 megapixels.
        raise ImageRejectedError(f"{name} is too large to decode: {error}", 413) from None
    except Exception as error:
        # Pillow's format plugins raise many types on corrupt input (OSError, SyntaxError, EOFError,
        # struct.error, IndexError, ...); for untrusted bytes each means the same: not decodable.
        raise ImageRejectedError(f"{name} has a broken image header ({error})", 422) from None
    with opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise ImageRejectedError(
                f"{name} is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); "
                f"the limit is {max_pixels / 1e6:.1f} megapixels",
                413,
            )
        wanted = "L" if channels == 1 else "RGB"
        try:
            if (opened.mode, wanted) in _RESIZE_FIRST:
                resized = opened.resize((image_size, image_size), Image.Resampling.BILINEAR).convert(wanted)
            else:
                converted = opened.convert(wanted)
                resized = converted.resize((image_size, image_size), Image.Resampling.BILINEAR)
                del converted  # the full-size copy goes now, not when the function returns
        except Exception as error:
            raise ImageRejectedError(
                f"{name} could not be decoded ({error}); is the file complete?", 422
            ) from None
    pixels = np.array(resized, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one
    return pixels[np.newaxis] if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def declared_pixels(data: bytes) -> int:
    """Width x height as the image's header declares it, read without decoding a pixel; 0 for bytes
    whose header cannot be read (decode_image refuses those before decoding anything)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except Exception:
        return 0
    return width * height
