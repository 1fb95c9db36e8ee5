"""`data.augment` blocks as torchvision.transforms.v2 transforms: checked when the config is read, built
for training (data/augmentation.py applies them).

Each block names a v2 transform and its keyword arguments, as torchvision spells them. A transform whose
constructor requires a `size` (RandomResizedCrop, RandomCrop, CenterCrop, Resize) gets the training image
size when the block leaves it out. Blocks are checked when the config is read: an unknown name or
argument is an error that suggests the nearest, and each block is built once so that a bad value fails
then, not in a loader worker an hour later. torchvision is imported only when there are blocks to
check, so a config without augmentation is read without torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from embedlab.registry import check_arguments, close_matches_hint

if TYPE_CHECKING:
    from torchvision.transforms import v2

    from embedlab.config.schema import AugmentBlock

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
    from torchvision.transforms import v2

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
    from torchvision.transforms import v2

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
    from torchvision.transforms import v2

    return v2.Compose([_build_block(block, i, image_size) for i, block in enumerate(blocks)])
