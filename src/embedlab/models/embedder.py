"""The embedder: preprocessing -> backbone -> pooling -> neck -> L2-normalised embedding (B, D).

It takes raw images, uint8 or 0..255 floats of shape (B, C, H, W), so that a trained embedder, an
exported ONNX graph and the search server all see pixels the same way.

With `model.head: dolg` the backbone returns two stages' maps and the pooling slot holds the DOLG head
(models/dolg.py), which fuses them into one vector for the neck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedlab.config import ModelConfig
from embedlab.data.transforms import Preprocess
from embedlab.models.backbones import Backbone, StageFeatures, create_backbone, create_stage_features
from embedlab.models.dolg import DOLGHead
from embedlab.models.necks import NECKS
from embedlab.models.pooling import POOLING, Pooling

#: Statistics for backbones trained from scratch: pixels in [0, 1] mapped to [-1, 1].
NEUTRAL_MEAN, NEUTRAL_STD = 0.5, 0.5


class Embedder(nn.Module):
    def __init__(
        self,
        preprocess: Preprocess,
        backbone: Backbone | StageFeatures,
        pooling: nn.Module,
        neck: nn.Module,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.pooling = pooling
        self.neck = neck

    @property
    def embedding_dim(self) -> int:
        return int(self.neck.linear.out_features)

    def unnormalised(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Raw images (B, C, H, W) -> the neck's output (B, D) before L2 normalisation.

        size: the side the images are resized to (default: the trained input size); test-time
        augmentation averages these vectors over views and scales before normalising.
        """
        features = self.backbone(self.preprocess(images, size))
        return self.neck(self.pooling(features)).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (B, C, H, W) -> unit-length embeddings (B, D)."""
        return F.normalize(self.unnormalised(images), dim=-1)


def _normalisation(backbone: Backbone | StageFeatures, channels: int) -> tuple[list[float], list[float]]:
    if backbone.pretrained_normalisation is None:
        return [NEUTRAL_MEAN] * channels, [NEUTRAL_STD] * channels
    mean, std = backbone.pretrained_normalisation
    if len(mean) != channels:
        # timm sums a pretrained RGB stem into one grey channel; grey pixels then see the RGB means' mean
        return [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    return list(mean), list(std)


def build_embedder(cfg: ModelConfig, channels: int, image_size: int) -> Embedder:
    """Assemble the embedder the model config describes, for images of `channels` x `image_size`^2."""
    if cfg.head == "dolg":
        return _build_dolg_embedder(cfg, channels, image_size)
    backbone = create_backbone(cfg.backbone, channels, cfg.pretrained, cfg.weights_path, cfg.backbone_args)
    mean, std = _normalisation(backbone, channels)
    pooling = _pooling(cfg, backbone, channels, image_size)
    neck = _neck(cfg, pooling.output_features(backbone.num_features))
    return Embedder(Preprocess(channels, image_size, mean, std), backbone, pooling, neck)


def _pooling(cfg: ModelConfig, backbone: Backbone | None, channels: int, image_size: int) -> Pooling:
    """The pooling `model.pooling` names, with what it takes from the model config or the backbone."""
    if cfg.pooling == "gem":
        return POOLING.build("gem", p=cfg.gem_p)
    if cfg.pooling == "flatten":
        # the config refuses flatten with the DOLG head, the one caller without a Backbone
        assert backbone is not None
        return POOLING.build("flatten", map_size=backbone.feature_map_size(channels, image_size))
    return POOLING.build(cfg.pooling)


def _neck(cfg: ModelConfig, in_features: int) -> nn.Module:
    return NECKS.build(
        cfg.neck, in_features=in_features, embedding_dim=cfg.embedding_dim, dropout=cfg.dropout
    )


def _build_dolg_embedder(cfg: ModelConfig, channels: int, image_size: int) -> Embedder:
    stages = create_stage_features(
        cfg.backbone, channels, cfg.dolg.local_stage, cfg.pretrained, cfg.weights_path, cfg.backbone_args
    )
    mean, std = _normalisation(stages, channels)
    head = DOLGHead(
        stages.local_channels,
        stages.global_channels,
        cfg.dolg.local_dim,
        cfg.dolg.dilations,
        _pooling(cfg, None, channels, image_size),
    )
    neck = _neck(cfg, head.out_features)
    return Embedder(Preprocess(channels, image_size, mean, std), stages, head, neck)
