"""Labelled image collections as datasets that yield uint8 tensors of one size.

Every collection yields `(image, label)` with `image` a uint8 tensor (C, H, W) and `label` an int64
scalar; indexed with a list of indices it yields the whole batch, (B, C, H, W) and (B,), so a loader
can hand it batches from a batch sampler without collating item by item. Conversion to float,
normalisation and augmentation happen on batches, in the model's step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

Index = int | Sequence[int] | torch.Tensor


def _as_index_tensor(index: Index) -> torch.Tensor | int:
    if isinstance(index, int | np.integer):
        return int(index)
    return torch.as_tensor(index, dtype=torch.long)


def check_labels(labels: torch.Tensor, what: str) -> torch.Tensor:
    """Labels must be a 1-D integer tensor: an (N, 1) column is refused, not broadcast."""
    if labels.ndim != 1:
        raise ValueError(f"{what}: labels must be 1-D of shape (N,), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be integers, got {labels.dtype}")
    return labels.long()


@dataclass
class LabelledImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The common part of every collection: labels, optional class names, and optional per-item
    annotations: ignore groups (items hidden from each other when scored) and the query and gallery
    roles of a CSV's `is_query` / `is_gallery` columns."""

    labels: torch.Tensor
    groups: torch.Tensor | None = None
    is_query: torch.Tensor | None = None
    is_gallery: torch.Tensor | None = None
    class_names: list[str] | None = None
    name: str = "images"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    def subset(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> LabelledImages:
        """The items at `indices` (optionally relabelled), as a collection of the same kind."""
        raise NotImplementedError

    def _common_subset(self, indices: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        def take(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values[indices]

        return {
            "labels": self.labels[indices] if labels is None else labels,
            "groups": take(self.groups),
            "is_query": take(self.is_query),
            "is_gallery": take(self.is_gallery),
            "class_names": self.class_names,
            "name": self.name,
        }


@dataclass
class InMemoryImages(LabelledImages):
    """Small sets held as one uint8 tensor (N, C, H, W): an epoch is tensor indexing, not PIL."""

    images: torch.Tensor = field(default_factory=lambda: torch.empty(0, 1, 1, 1, dtype=torch.uint8))

    def __post_init__(self) -> None:
        self.labels = check_labels(self.labels, self.name)
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"{self.name}: images must be uint8 of shape (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __getitem__(self, index: Index) -> tuple[torch.Tensor, torch.Tensor]:
        position = _as_index_tensor(index)
        return self.images[position], self.labels[position]

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> InMemoryImages:
        return InMemoryImages(**self._common_subset(indices, labels), images=self.images[indices])


#: A bounding box in pixels of the file, (x_1, y_1, x_2, y_2): open-metric-learning's columns; the image
#: is cropped to columns x_1 .. x_2 - 1 and rows y_1 .. y_2 - 1 before it is resized.
Box = tuple[int, int, int, int]


def crop_to_box(image: Image.Image, box: Box) -> Image.Image:
    """The part of `image` inside `box`, clipped to the image as array slicing clips (OML crops
    `image[y_1:y_2, x_1:x_2]`); a box that leaves nothing of the image is an error."""
    x_1, y_1, x_2, y_2 = box
    width, height = image.size
    left, top, right, bottom = max(x_1, 0), max(y_1, 0), min(x_2, width), min(y_2, height)
    if right <= left or bottom <= top:
        raise ValueError(f"the box {box} (x_1, y_1, x_2, y_2) leaves nothing of the {width}x{height} image")
    return image.crop((left, top, right, bottom))


def decode_file(path: Path, image_size: int, channels: int, box: Box | None = None) -> np.ndarray:
    """One file's pixels, uint8 (image_size, image_size) or (image_size, image_size, 3), cropped to
    `box` first when given; Pillow's own errors, unchanged (`read_image` names the file in them)."""
    with Image.open(path) as opened:
        image = opened if box is None else crop_to_box(opened, box)
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def read_image(path: Path, image_size: int, channels: int, box: Box | None = None) -> torch.Tensor:
    """Decode one file (cropped to `box`, if any) into a uint8 tensor (channels, image_size,
    image_size); errors name the file."""
    try:
        array = decode_file(path, image_size, channels, box)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"image file {path} cannot be read as an image: {error}") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


@dataclass
class ImageFiles(LabelledImages):
    """Images read from files on demand (each cropped to its bounding box, when `boxes` has one),
    resized to a square of `size` pixels."""

    paths: list[Path] = field(default_factory=list)
    size: int = 224
    num_channels: int = 3
    extra: list[dict[str, str]] | None = None
    boxes: list[Box | None] | None = None

    def __post_init__(self) -> None:
        self.labels = check_labels(self.labels, self.name)
        if len(self.paths) != self.labels.shape[0]:
            raise ValueError(f"{self.name}: {len(self.paths)} paths but {self.labels.shape[0]} labels")
        if self.boxes is not None and len(self.boxes) != len(self.paths):
            raise ValueError(f"{self.name}: {len(self.boxes)} boxes but {len(self.paths)} paths")

    def box(self, position: int) -> Box | None:
        return None if self.boxes is None else self.boxes[position]

    def read(self, position: int) -> torch.Tensor:
        return read_image(self.paths[position], self.size, self.num_channels, self.box(position))

    def __getitem__(self, index: Index) -> tuple[torch.Tensor, torch.Tensor]:
        position = _as_index_tensor(index)
        if isinstance(position, int):
            return self.read(position), self.labels[position]
        images = [self.read(i) for i in position.tolist()]
        return torch.stack(images) if images else torch.empty(0), self.labels[position]

    @property
    def channels(self) -> int:
        return self.num_channels

    @property
    def image_size(self) -> int:
        return self.size

    def subset(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> ImageFiles:
        chosen = indices.tolist()
        return ImageFiles(
            **self._common_subset(indices, labels),
            paths=[self.paths[i] for i in chosen],
            size=self.size,
            num_channels=self.num_channels,
            extra=None if self.extra is None else [self.extra[i] for i in chosen],
            boxes=None if self.boxes is None else [self.boxes[i] for i in chosen],
        )


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float batch (B, C, H, W) to (B, C, size, size); a no-op when it already fits."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
