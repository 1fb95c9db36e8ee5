"""Backbones by name, all built by `timm.create_model`: any timm model, plus embedlab's `small_cnn`,
`small_resnet` and `pml_mnist_example` (the network of pytorch-metric-learning's MNIST example) for
28x28 images, which models/small_cnn.py registers with timm.

Every backbone returns a feature map (B, C, H, W) and exposes `num_features` = C; transformer token
outputs (B, L, C) and channels-last maps (B, H, W, C) are turned into that layout, so pooling and
necks never need to know the family. `StageFeatures` returns the maps of two stages of a timm model
(an intermediate one and the last), in the same layout, for heads that read more than the last stage
(DOLG, models/dolg.py).

Weights: with a local `weights_path` the model is built without timm's pretrained weights and the file
is loaded into it, so the hub is never contacted (`pretrained` is then ignored); with `pretrained` alone,
a hub that cannot be reached is one ValueError at once, naming the two keys that avoid it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.func import functional_call

from embedlab.models.hub import pretrained_download
from embedlab.models.small_cnn import LOCAL_BACKBONES
from embedlab.models.weights import load_local_weights
from embedlab.registry import close_matches_hint


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
        return channels_first(self.model.forward_features(images), self.model)

    def feature_map_size(self, channels: int, image_size: int) -> tuple[int, int]:
        """(H, W) of the map for images of `channels` x `image_size`^2.

        timm models state no map size per input size (a stride-32 network maps 299 pixels to 8 or to
        10 by its padding), so the backbone's layers run on meta tensors, which carry shapes only:
        nothing is computed, and no weight, batch-norm statistic or random generator is touched.
        """
        meta = {
            name: torch.empty_like(tensor, device="meta")
            for name, tensor in itertools.chain(self.named_parameters(), self.named_buffers())
        }
        # two images, as batch norm in training mode refuses one value per channel
        images = torch.empty(2, channels, image_size, image_size, device="meta")
        height, width = functional_call(self, meta, (images,)).shape[-2:]
        return int(height), int(width)


def channels_first(features: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The (B, C, H, W) map of what `model` returned: (B, C, H, W), (B, H, W, C) or tokens (B, L, C)."""
    if features.ndim == 4:
        if getattr(model, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)
        return features
    if features.ndim == 3:
        # tokens (B, L, C): drop class/register tokens, lay the patch tokens on their grid
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        tokens = features[:, prefix:, :]
        side = math.isqrt(tokens.shape[1])
        height, width = (side, side) if side * side == tokens.shape[1] else (tokens.shape[1], 1)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
    raise ValueError(f"backbone returned features of shape {tuple(features.shape)}; expected 3 or 4 dims")


class StageFeatures(nn.Module):
    """A timm model built with `features_only`: images -> (local map, last map), each (B, C_i, H_i, W_i).

    `local_channels` and `global_channels` are the two maps' C_i (from timm's feature_info).
    """

    def __init__(self, model: nn.Module, normalisation: tuple[tuple, tuple] | None) -> None:
        super().__init__()
        self.model = model
        self.local_channels, self.global_channels = (int(c) for c in model.feature_info.channels())
        self.pretrained_normalisation = normalisation

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local_map, global_map = self.model(images)
        return channels_first(local_map, self.model), channels_first(global_map, self.model)


def _check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        valid = timm.list_models()
        raise ValueError(
            f"unknown backbone {name!r}.{close_matches_hint(name, valid)} "
            "Use a timm model name (timm.list_models()) or one of: " + ", ".join(LOCAL_BACKBONES)
        )


def _hub_errors() -> tuple[type[Exception], ...]:
    """What a failed download of timm's pretrained weights raises. OSError covers urllib's and torch.hub's
    errors, requests' and huggingface_hub's (HfHubHTTPError, LocalEntryNotFoundError when the hub cannot
    be reached and nothing is cached, OfflineModeIsEnabled); httpx's errors are not OSErrors."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.HTTPError)


def _hub_failure(name: str, error: Exception) -> ValueError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return ValueError(
        f"model.pretrained: timm could not fetch the pretrained weights of {name!r} from its hub "
        f"({type(error).__name__}: {reason}). Offline, set model.pretrained=false to start from random "
        "weights, or model.weights_path=FILE to load a local weights file (the hub is then not contacted)"
    )


def _create_timm_model(
    name: str, in_chans: int, pretrained: bool, kwargs: Mapping[str, Any], **options: Any
) -> tuple[nn.Module, tuple[tuple, tuple] | None]:
    """timm's model `name` with the user's `kwargs` and embedlab's `options`; its pretrained mean and std.

    timm's create_model leaves out any argument set to None, so the model's default holds (for
    embedlab's networks too). With `pretrained`, an unreachable host is found before any download
    (hub.py) and a failed download is not retried here: either is a ValueError that names
    model.pretrained and model.weights_path.
    """
    _check_timm_name(name)
    download = pretrained_download(name) if pretrained else contextlib.nullcontext()
    try:
        with download:
            model = timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **options, **kwargs)
    except TypeError as error:
        raise TypeError(
            f"backbone {name!r} does not take model.backbone_args {dict(kwargs)}: {error}"
        ) from None
    except _hub_errors() as error:
        if not pretrained:
            raise
        raise _hub_failure(name, error) from None
    config = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = config.get("mean"), config.get("std")
    return model, ((tuple(mean), tuple(std)) if mean and std else None)


def create_backbone(
    name: str,
    in_chans: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build backbone `name` for `in_chans` input channels, with timm or local weights when asked.

    `kwargs` go to the model's constructor through timm's create_model; an argument the model does not
    take is an error. A `weights_path` replaces timm's pretrained weights: the hub is not contacted.
    """
    from_hub = pretrained and weights_path is None
    model, normalisation = _create_timm_model(name, in_chans, from_hub, dict(kwargs or {}), num_classes=0)
    if weights_path is not None:
        load_local_weights(model, weights_path)
    return Backbone(model, int(model.num_features), normalisation)


def create_stage_features(
    name: str,
    in_chans: int,
    local_stage: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> StageFeatures:
    """Timm model `name` as `StageFeatures`: the maps of stage `local_stage` and of the last stage.

    Stages are the entries of timm's feature_info (for a ResNet: the stem, then layer1 to layer4);
    `local_stage` counts from 0, or from the end when negative, and must come before the last stage.
    """
    if name in LOCAL_BACKBONES:
        raise ValueError(
            f"model.head: dolg needs a timm backbone with feature stages; model.backbone {name!r} is "
            "embedlab's own network. Use a timm model such as resnet18, efficientnet_b0 or convnext_tiny"
        )
    kwargs = dict(kwargs or {})
    from_hub = pretrained and weights_path is None
    try:
        model, normalisation = _create_timm_model(
            name, in_chans, from_hub, kwargs, features_only=True, out_indices=(local_stage, -1)
        )
    except (IndexError, AssertionError):
        # timm's own error for a stage out of range differs by family; say it once, with the range
        stages = _stage_count(name, in_chans, kwargs)
        if _is_local_stage(local_stage, stages):
            raise
        raise ValueError(_stage_range_message(name, local_stage, stages)) from None
    stages = len(model.feature_info.info)
    if not _is_local_stage(local_stage, stages):
        raise ValueError(_stage_range_message(name, local_stage, stages))
    if weights_path is not None:
        load_local_weights(model, weights_path)
    return StageFeatures(model, normalisation)


def _is_local_stage(index: int, stages: int) -> bool:
    """Whether `index` picks a stage before the last one of `stages` (Python's indexing)."""
    return -stages <= index < stages - 1 and index != -1


def _stage_range_message(name: str, local_stage: int, stages: int) -> str:
    return (
        f"model.dolg.local_stage {local_stage} is out of range for {name!r}, which has {stages} feature "
        f"stages: use 0 to {stages - 2}, or -{stages} to -2 counting from the end (the last stage "
        "feeds the global branch)"
    )


def _stage_count(name: str, in_chans: int, kwargs: Mapping[str, Any]) -> int:
    model, _ = _create_timm_model(name, in_chans, False, kwargs, features_only=True, out_indices=(-1,))
    return len(model.feature_info.info)
