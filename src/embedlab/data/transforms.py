"""Preprocessing of batches of tensors, part of the model so that export and serving see pixels as
training did (training augmentation is data/augmentation.py's)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


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
