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


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers added to their input, then ReLU (a ResNet basic block of one width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            _conv_block(channels, channels),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(features + self.branch(features))


class SmallResNet(nn.Module):
    """Conv-BN-ReLU stages with a 2x2 max-pool between them, each followed by `blocks[i]` residual
    blocks: (B, C, 28, 28) -> (B, widths[-1], 7, 7)."""

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (0, 1, 1),
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(
                f"small_resnet needs one block count per width: widths {list(widths)}, blocks {list(blocks)}"
            )
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            if 0 < stage < 3:
                layers.append(nn.MaxPool2d(2))
            layers.append(_conv_block(channels, width))
            layers.extend(ResidualBlock(width) for _ in range(count))
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)


class SmallCNN(SmallResNet):
    """`SmallResNet` without residual blocks: conv-BN-ReLU stages and max-pools only."""

    def __init__(self, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__(in_chans, widths, blocks=[0] * len(widths))


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
