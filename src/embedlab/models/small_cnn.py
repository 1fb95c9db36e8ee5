"""A small convolutional backbone for 28x28 grey images, shaped like a timm feature extractor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages with a 2x2 max-pool between them: (B, C, 28, 28) -> (B, widths[-1], 7, 7)."""

    def __init__(self, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            if 0 < stage < 3:
                layers.append(nn.MaxPool2d(2))
            layers.append(_conv_block(channels, width))
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)
