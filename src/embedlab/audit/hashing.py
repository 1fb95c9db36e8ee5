"""Exact duplicates by their pixels: a hash of each decoded image, not of its file's bytes.

Two files that decode to the same pixels (a PNG saved again at another compression level, a copy with
other metadata, the same picture as PNG and as lossless WebP) share a hash; a file whose pixels differ
anywhere does not (re-encoded or resized copies are near duplicates, found by their embeddings). The
image is converted to RGB (or L for grey collections) and cropped to its box first, as training reads
it, but not resized: resizing would make different images equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from rich.progress import Progress
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from embedlab.data.images import Box, crop_to_box

#: Files hashed per loader item (as for the decode check).
FILES_PER_BATCH = 32


def pixel_hash(path: Path, channels: int, box: Box | None = None) -> str:
    """The sha256 of an image's decoded pixels and size (hex; 64 characters)."""
    with Image.open(path) as opened:
        image = opened if box is None else crop_to_box(opened, box)
        image = image.convert("L" if channels == 1 else "RGB")
        digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class _Hashes(Dataset[list[tuple[int, str]]]):
    def __init__(self, paths: Sequence[Path], boxes: Sequence[Box | None], channels: int) -> None:
        self.paths, self.boxes, self.channels = paths, boxes, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, positions: list[int]) -> list[tuple[int, str]]:
        return [(p, pixel_hash(self.paths[p], self.channels, self.boxes[p])) for p in positions]


def _as_is(batch: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return batch


def hash_files(
    paths: Sequence[Path],
    boxes: Sequence[Box | None],
    channels: int,
    *,
    num_workers: int = 0,
    progress: bool = False,
) -> list[str]:
    """`pixel_hash` of every file, in order, decoded in `num_workers` loader processes (0: this one).
    The files have passed the decode check, so each one opens."""
    if not paths:
        return []
    dataset = _Hashes(paths, boxes, channels)
    batches = BatchSampler(SequentialSampler(range(len(paths))), FILES_PER_BATCH, drop_last=False)
    loader = DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=min(num_workers, len(batches)),
        generator=torch.Generator(),  # leaves torch's global generator as it was (see data/check.py)
    )
    hashes = [""] * len(paths)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"hashing the pixels of {len(paths)} images", total=len(paths))
        for results in loader:
            for position, digest in results:
                hashes[position] = digest
            bar.advance(task, len(results))
    return hashes
