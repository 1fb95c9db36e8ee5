"""Resized, re-encoded copies of a collection's own images: what a near duplicate looks like to the
model that audits it, so that the near-duplicate threshold comes from the data, not a constant.

A copy is the image scaled to COPY_SCALE of its sides, though never below the model's input side (a
copy smaller than what the model sees is a blurred picture, not a copy), and saved as a JPEG of
COPY_QUALITY, then read as training reads a file (cropped to its box, converted, resized to the model's
input).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from embedlab.data.images import Box, crop_to_box

COPY_SCALE = 0.6
COPY_QUALITY = 80
#: Images copied to derive the threshold: enough for a stable 5th percentile, few to embed.
COPIES = 200


def reencoded_copy(path: Path, channels: int, image_size: int, box: Box | None = None) -> np.ndarray:
    """The pixels of a resized, re-encoded copy of one file, as `decode_file` returns an image:
    uint8 (S, S) for grey, (S, S, 3) for colour."""
    with Image.open(path) as opened:
        image = (opened if box is None else crop_to_box(opened, box)).convert("L" if channels == 1 else "RGB")
    scale = min(1.0, max(COPY_SCALE, image_size / max(1, min(image.width, image.height))))
    smaller = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.resize(smaller, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=COPY_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as copy:
        resized = copy.convert(image.mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)


def copy_batch(paths: list[Path], boxes: list[Box | None], channels: int, image_size: int) -> np.ndarray:
    """uint8 (B, C, S, S) copies of the files, ready for `EmbeddingPipeline.embed_pixels`."""
    pixels = [reencoded_copy(p, channels, image_size, b) for p, b in zip(paths, boxes, strict=True)]
    stacked = np.stack(pixels)
    return stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2).copy()
