"""Small convolutional backbones for 28x28 grey images, shaped like timm feature extractors."""

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


class MetricLearningExampleNet(nn.Module):
    """pytorch-metric-learning's MNIST example network up to its linear layer: conv 3x3 (32), ReLU,
    conv 3x3 (64), ReLU, 2x2 max-pool, dropout 0.25: (B, C, 28, 28) -> (B, 64, 12, 12). With
    `model.pooling: flatten`, `model.neck: linear` it is the whole example network."""

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout2d(0.25),
        )
        self.num_features = 64

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)
