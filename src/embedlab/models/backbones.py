"""Backbones by name: any timm model, plus embedlab's `small_cnn` and `pml_mnist_example` (the network
of pytorch-metric-learning's MNIST example) for 28x28 images.

Every backbone returns a feature map (B, C, H, W) and exposes `num_features` = C; transformer token
outputs (B, L, C) and channels-last maps (B, H, W, C) are turned into that layout, so pooling and
necks never need to know the family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from embedlab.models.small_cnn import MetricLearningExampleNet, SmallCNN
from embedlab.models.weights import load_local_weights
from embedlab.registry import check_arguments, close_matches_hint

LOCAL_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "pml_mnist_example": MetricLearningExampleNet,
}


class Backbone(nn.Module):
    """Wraps a model with `forward_features` so that it returns (B, C, H, W)."""

    def __init__(
        self, model: nn.Module, num_features: int, normalisation: tuple[tuple, tuple] | None
    ) -> None:
        super().__init__()
        self.model = model
        self.num_features = num_features
        self.pretrained_normalisation = normalisation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if features.ndim == 4:
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                features = features.permute(0, 3, 1, 2)
            return features
        if features.ndim == 3:
            # tokens (B, L, C): drop class/register tokens, lay the patch tokens on their grid
            prefix = int(getattr(self.model, "num_prefix_tokens", 0))
            tokens = features[:, prefix:, :]
            side = math.isqrt(tokens.shape[1])
            height, width = (side, side) if side * side == tokens.shape[1] else (tokens.shape[1], 1)
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
        raise ValueError(f"backbone returned features of shape {tuple(features.shape)}; expected 3 or 4 dims")


def create_backbone(
    name: str,
    in_chans: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build backbone `name` for `in_chans` input channels, with timm or local weights when asked.

    `kwargs` go to the model's constructor (timm's create_model for timm names); an argument the
    model does not take is an error.
    """
    kwargs = dict(kwargs or {})
    if name in LOCAL_BACKBONES:
        if pretrained:
            raise ValueError(f"backbone {name!r} has no pretrained weights; set model.pretrained: false")
        check_arguments(LOCAL_BACKBONES[name], kwargs, f"backbone {name!r}")
        model = LOCAL_BACKBONES[name](in_chans=in_chans, **kwargs)
        normalisation = None
    else:
        if not timm.is_model(name):
            valid = [*LOCAL_BACKBONES, *timm.list_models()]
            raise ValueError(
                f"unknown backbone {name!r}.{close_matches_hint(name, valid)} "
                "Use a timm model name (timm.list_models()) or one of: " + ", ".join(LOCAL_BACKBONES)
            )
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
        except TypeError as error:
            raise TypeError(
                f"backbone {name!r} does not take model.backbone_args {kwargs}: {error}"
            ) from None
        config = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = config.get("mean"), config.get("std")
        normalisation = (tuple(mean), tuple(std)) if mean and std else None
    if weights_path is not None:
        load_local_weights(model, weights_path)
    return Backbone(model, int(model.num_features), normalisation)
