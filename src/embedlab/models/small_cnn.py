"""Small convolutional backbones for 28x28 grey images, registered as timm models.

`timm.create_model("small_cnn")`, `"small_resnet"` and `"pml_mnist_example"` build them (the
registration runs when embedlab.models is imported). They answer timm's model interface:
`num_features`, `forward_features` (the map), `forward_head` (average pooling, then the classifier of
`num_classes` outputs, none for 0) and `reset_classifier`. They have no pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embedlab.models.timm_registry import register_backbone
from embedlab.registry import check_arguments

__all__ = [
    "LOCAL_BACKBONES",
    "MetricLearningExampleNet",
    "ResidualBlock",
    "SmallCNN",
    "SmallResNet",
    "pml_mnist_example",
    "small_cnn",
    "small_resnet",
]


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


class _FeatureNet(nn.Module):
    """timm's model interface over `self.features`, which maps images to (B, num_features, H, W)."""

    features: nn.Sequential
    num_features: int

    def _set_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> the average-pooled (B, C) when `pre_logits`, else the classifier's output."""
        pooled = features.mean(dim=(-2, -1))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self._set_classifier(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


class SmallResNet(_FeatureNet):
    """Conv-BN-ReLU stages with a 2x2 max-pool between them, each followed by `blocks[i]` residual
    blocks: (B, C, 28, 28) -> (B, widths[-1], 7, 7)."""

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (0, 1, 1),
        num_classes: int = 0,
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
        self._set_classifier(num_classes)


class SmallCNN(SmallResNet):
    """`SmallResNet` without residual blocks: conv-BN-ReLU stages and max-pools only."""

    def __init__(
        self, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128), num_classes: int = 0
    ) -> None:
        super().__init__(in_chans, widths, blocks=[0] * len(widths), num_classes=num_classes)


class MetricLearningExampleNet(_FeatureNet):
    """pytorch-metric-learning's MNIST example network up to its linear layer: conv 3x3 (32), ReLU,
    conv 3x3 (64), ReLU, 2x2 max-pool, dropout 0.25: (B, C, 28, 28) -> (B, 64, 12, 12). With
    `model.pooling: flatten`, `model.neck: linear` it is the whole example network."""

    def __init__(self, in_chans: int = 1, num_classes: int = 0) -> None:
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
        self._set_classifier(num_classes)


#: timm's create_model passes these to every entry point; they choose pretrained weights
_WEIGHT_OPTIONS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _build(network: type[_FeatureNet], name: str, pretrained: bool, kwargs: dict[str, Any]) -> _FeatureNet:
    """`network(**kwargs)` for timm's create_model: refuses pretrained weights and unknown arguments."""
    options = {key: kwargs.pop(key, None) for key in _WEIGHT_OPTIONS}
    if pretrained or any(value is not None for value in options.values()):
        raise ValueError(f"backbone {name!r} has no pretrained weights; set model.pretrained: false")
    check_arguments(network, kwargs, network.__name__)
    return network(**kwargs)


@register_backbone
def small_cnn(pretrained: bool = False, **kwargs: Any) -> _FeatureNet:
    return _build(SmallCNN, "small_cnn", pretrained, kwargs)


@register_backbone
def small_resnet(pretrained: bool = False, **kwargs: Any) -> _FeatureNet:
    return _build(SmallResNet, "small_resnet", pretrained, kwargs)


@register_backbone
def pml_mnist_example(pretrained: bool = False, **kwargs: Any) -> _FeatureNet:
    return _build(MetricLearningExampleNet, "pml_mnist_example", pretrained, kwargs)


#: the backbone names embedlab registers with timm
LOCAL_BACKBONES: tuple[str, ...] = tuple(
    entry.__name__ for entry in (small_cnn, small_resnet, pml_mnist_example)
)
