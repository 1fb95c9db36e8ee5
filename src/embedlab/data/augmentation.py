"""Training augmentation by name: torchvision.transforms.v2 classes built from `data.augment` blocks.

Each block names a v2 transform and its keyword arguments, as torchvision spells them. A transform whose
constructor requires a `size` (RandomResizedCrop, RandomCrop, CenterCrop, Resize) gets the training image
size when the block leaves it out. Blocks are checked when the config is read: an unknown name or
argument is an error that suggests the nearest, and each block is built once so that a bad value fails
then, not in a loader worker an hour later.

The transforms run on the uint8 images (C, H, W) of a training batch, one image at a time (a v2
transform given a batch tensor would draw one set of parameters for the whole batch), before the model's
own normalisation. A batch that carries a seed (data/loaders.py: one per batch, from the run's seed, the
epoch and the batch's place in it) is augmented under that seed, so the same batch gets the same
augmentation in a loader worker or in the main process, and again after a resume.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from embedlab.config.schema import AugmentBlock
from embedlab.data.images import Index, LabelledImages
from embedlab.registry import check_arguments, close_matches_hint

#: v2 classes that are not augmentations of a uint8 image: the model converts and normalises itself.
NOT_AUGMENTATIONS = {
    "Normalize": "the model normalises its input itself (with the backbone's statistics)",
    "ToDtype": "images stay uint8 until the model converts them",
    "ConvertImageDtype": "images stay uint8 until the model converts them",
    "ToImage": "images are tensors already",
    "ToPureTensor": "images are tensors already",
    "PILToTensor": "images are tensors already",
    "ToTensor": "images are tensors already",
    "ToPILImage": "images are tensors",
    "Compose": "data.augment is already applied in order; list the blocks themselves",
    "Lambda": "a config names its transforms; write a v2 class for custom code",
}

#: A side used to build size-taking transforms when the config does not fix data.image_size.
PLACEHOLDER_SIZE = 32


def augmentation_names() -> list[str]:
    """Every v2 transform class a block may name."""
    return sorted(
        name
        for name, value in vars(v2).items()
        if inspect.isclass(value) and issubclass(value, v2.Transform) and name != "Transform"
        if name not in NOT_AUGMENTATIONS
    )


def _transform_class(name: str, position: int) -> type[v2.Transform]:
    where = f"data.augment[{position}]"
    if name in NOT_AUGMENTATIONS:
        raise ValueError(f"{where}: {name} is not an augmentation here: {NOT_AUGMENTATIONS[name]}")
    names = augmentation_names()
    if name not in names:
        hint = close_matches_hint(name, names)
        raise ValueError(f"{where}: {name!r} is not a torchvision.transforms.v2 transform.{hint}")
    return getattr(v2, name)


def _needs_size(cls: type[v2.Transform]) -> bool:
    parameter = inspect.signature(cls.__init__).parameters.get("size")
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _build_block(block: AugmentBlock, position: int, image_size: int) -> v2.Transform:
    cls = _transform_class(block.name, position)
    kwargs: dict[str, Any] = block.kwargs()
    where = f"data.augment[{position}] ({block.name})"
    try:
        check_arguments(cls, kwargs, where)
    except TypeError as error:
        raise ValueError(str(error)) from None
    if _needs_size(cls) and "size" not in kwargs:
        kwargs["size"] = image_size
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def check_augment_blocks(blocks: Sequence[AugmentBlock], image_size: int | None) -> None:
    """Raise ValueError for the first block that names no v2 transform, takes an argument its class
    does not, or that its class refuses to be built with."""
    for position, block in enumerate(blocks):
        _build_block(block, position, image_size or PLACEHOLDER_SIZE)


def build_augmentation(blocks: Sequence[AugmentBlock], image_size: int) -> v2.Compose | None:
    """The blocks as one v2 pipeline for images of `image_size`, or None when there are none."""
    if not blocks:
        return None
    return v2.Compose([_build_block(block, i, image_size) for i, block in enumerate(blocks)])


def augment_images(images: torch.Tensor, transform: v2.Transform, seed: int | None = None) -> torch.Tensor:
    """Each uint8 image of (B, C, H, W) through `transform`, with its own random draw; under `seed`
    when given (the global generators are left as they were). An image the transform resized (a crop
    to another size, an expanded rotation) is resized back, so the batch keeps its shape."""
    if seed is None:
        return _augment_each(images, transform)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _augment_each(images, transform)


def _augment_each(images: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    height, width = images.shape[-2:]
    out = []
    for image in images:
        augmented = transform(image)
        if augmented.shape[-2:] != (height, width):
            augmented = v2.functional.resize(augmented, [height, width], antialias=True)
        out.append(augmented)
    return torch.stack(out) if out else images


class AugmentedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A collection whose batches come augmented: indexed with a batch of indices (a loader's batch
    sampler element), it returns the stacked images after `transform`, under the batch's `seed`."""

    def __init__(self, images: LabelledImages, transform: v2.Transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Index) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = self.images[index]
        if pixels.ndim == 3:
            return augment_images(pixels.unsqueeze(0), self.transform).squeeze(0), labels
        return augment_images(pixels, self.transform, getattr(index, "seed", None)), labels
