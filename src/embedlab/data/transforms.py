"""Transforms on batches of tensors: preprocessing (part of the model, so export and serving match
training) and training augmentation (random flip, pad-and-crop), both vectorised over the batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedlab.config import AugmentConfig


def preprocess(
    images: torch.Tensor, channels: int, size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 or 0..255 float images (B, C', H, W) -> normalised float (B, channels, size, size)."""
    x = images.float() / 255.0
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class Preprocess(nn.Module):
    """Holds the input size, channel count and normalisation statistics; calls `preprocess`."""

    def __init__(self, channels: int, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values each, got {len(mean)} and {len(std)}")
        self.channels = channels
        self.size = size
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """size: resize to this side instead of the trained input size (multi-scale inference)."""
        return preprocess(images, self.channels, size or self.size, self.mean, self.std)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}"


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_pad_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad (B, C, H, W) by `padding` zeros on every side, then cut each image back at a random offset."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets_y = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=images.device)
    offsets_x = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=images.device)
    rows = (offsets_y.view(-1, 1) + torch.arange(height, device=images.device)).view(batch, 1, height, 1)
    cols = (offsets_x.view(-1, 1) + torch.arange(width, device=images.device)).view(batch, 1, 1, width)
    batch_index = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    # (B, C, H, W): advanced indexing over batch, rows and columns keeps every channel
    return padded.permute(0, 2, 3, 1)[batch_index, rows, cols].squeeze(1).permute(0, 3, 1, 2)


def augment(images: torch.Tensor, settings: AugmentConfig) -> torch.Tensor:
    """The configured training augmentation of a uint8 or float batch (B, C, H, W)."""
    if settings.crop_padding:
        images = random_pad_crop(images, settings.crop_padding)
    if settings.flip:
        images = random_flip(images)
    return images
