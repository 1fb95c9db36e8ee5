"""Zero-shot embeddings: a backbone's pooled features, L2-normalised, with no neck.

raw images (B, C, H, W) -> preprocess -> backbone -> pooling -> L2 normalise -> (B, F)

The neck (and DOLG's local branch and projection) start from random weights, so before any training
they only scramble what a pretrained backbone already knows. What the backbone's own features retrieve
is the baseline fine-tuning has to beat: `fit` scores it on the validation split before the first
epoch (metrics.csv's epoch 0), and an audit of a collection embeds with it without a run.

The pooling is the model's own, so the features are those the neck would receive:
- `gem`, `avg`, `max`: the configured pooling. GeM uses its exponent as it stands: built from a config
  (or wrapped before training) that is `model.gem_p`, the initial value; a trained embedder's is learned.
- `flatten`: average pooling instead. A flattened map is C x H x W wide (100,352 for a ResNet-50 at
  224 px), which is too wide to embed a validation set with, and it needs the trained input size; the
  average is GeM's p = 1 end.
- `head: dolg`: the global branch's pooling of the last stage's map, without its linear projection (the
  local branch and the projection are learned from scratch).

`ZeroShotEmbedder` is an `Embedder` (its neck is the identity), so `embed`, test-time augmentation and
ONNX export take it as they take a trained one.
"""

from __future__ import annotations

import torch
from torch import nn

from embedlab.config import ModelConfig
from embedlab.data.transforms import Preprocess
from embedlab.models.backbones import Backbone, StageFeatures
from embedlab.models.dolg import DOLGHead
from embedlab.models.embedder import Embedder, build_embedder
from embedlab.models.pooling import AveragePool, Flatten, Pooling


class LastStagePooling(nn.Module):
    """(intermediate map, last map) of `StageFeatures` -> `pooling` of the last map (B, C_g)."""

    def __init__(self, pooling: Pooling) -> None:
        super().__init__()
        self.pooling = pooling

    def forward(self, stages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.pooling(stages[1])


class ZeroShotEmbedder(Embedder):
    """Raw images (B, C, H, W) -> unit-length pooled backbone features (B, F), F = `embedding_dim`."""

    def __init__(
        self,
        preprocess: Preprocess,
        backbone: Backbone | StageFeatures,
        pooling: nn.Module,
        features: int,
    ) -> None:
        super().__init__(preprocess, backbone, pooling, nn.Identity())
        self.features = features

    @property
    def embedding_dim(self) -> int:
        return self.features


def zero_shot_embedder(embedder: Embedder) -> ZeroShotEmbedder:
    """The pooled features of `embedder`: its preprocessing, backbone and pooling, shared, not copied.

    Wrap before training for the pretrained features (see the module docstring for each pooling).
    """
    backbone, pooling = embedder.backbone, embedder.pooling
    if isinstance(pooling, DOLGHead):
        assert isinstance(backbone, StageFeatures)
        return ZeroShotEmbedder(
            embedder.preprocess,
            backbone,
            LastStagePooling(pooling.global_pooling),
            pooling.global_pooling.output_features(backbone.global_channels),
        )
    assert isinstance(backbone, Backbone) and isinstance(pooling, Pooling)
    if isinstance(pooling, Flatten):
        pooling = AveragePool()
    return ZeroShotEmbedder(
        embedder.preprocess, backbone, pooling, pooling.output_features(backbone.num_features)
    )


def build_zero_shot_embedder(cfg: ModelConfig, channels: int, image_size: int) -> ZeroShotEmbedder:
    """The zero-shot embedder of the model config, for images of `channels` x `image_size`^2, in eval
    mode: the backbone with its weights (`model.pretrained` or `model.weights_path`; without either it is
    random) and `model.pooling` at `model.gem_p`. The neck is built and dropped, as a run builds it."""
    return zero_shot_embedder(build_embedder(cfg, channels, image_size)).eval()
