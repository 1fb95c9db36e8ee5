"""Training augmentation: the `data.augment` blocks (built by config/augment_blocks.py) applied to the
images of training batches.

The transforms run on the uint8 images (C, H, W) of a training batch, one image at a time (a v2
transform given a batch tensor would draw one set of parameters for the whole batch), before the model's
own normalisation. A batch that carries a seed (data/loaders.py: one per batch, from the run's seed, the
epoch and the batch's place in it) is augmented under that seed, so the same batch gets the same
augmentation in a loader worker or in the main process, and again after a resume.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from embedlab.config.augment_blocks import build_augmentation
from embedlab.data.images import Index, LabelledImages

__all__ = ["AugmentedImages", "augment_images", "build_augmentation"]


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
