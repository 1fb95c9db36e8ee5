"""DOLG: orthogonal fusion of a local branch and the global branch (`model.head: dolg`).

Yang et al., "DOLG: Single-Stage Image Retrieval with Deep Orthogonal Fusion of Local and Global
Features", ICCV 2021. The head reads two maps of the backbone (`StageFeatures`): an intermediate stage
and the last one.

- Local branch, on the intermediate map: a multi-atrous block (parallel 3x3 convolutions with growing
  dilations plus an image-pooling branch, concatenated and reduced by a 1x1 convolution), then
  self-attention: features f = BN(conv1x1(x)) are L2-normalised per position and weighted by
  softplus(conv1x1(relu(f))), one score per position.
- Global branch, on the last map: GeM (or `model.pooling`), then a linear layer to the local width C.
- Orthogonal fusion: at every position, the part of the local feature orthogonal to the global vector,
  f_orth = f_local - (f_local . f_g / |f_g|^2) f_g, concatenated with f_g: a (B, 2C, H, W) map, which
  is averaged over positions into (B, 2C). The embedder's neck maps that to the embedding.

Nothing here depends on the input size: a CNN backbone takes any size (test-time augmentation embeds
at other scales).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedlab.models.pooling import Pooling


def orthogonal_component(
    local_map: torch.Tensor, global_vector: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """The part of each position's local feature orthogonal to the global vector.

    local_map (B, C, H, W), global_vector (B, C) -> (B, C, H, W):
    f_local - (f_local . f_g / |f_g|^2) f_g at every (h, w). `eps` bounds |f_g|^2 away from 0.
    """
    direction = global_vector[:, :, None, None]  # (B, C, 1, 1)
    along = (local_map * direction).sum(dim=1, keepdim=True)  # (B, 1, H, W): f_local . f_g
    squared_norm = global_vector.pow(2).sum(dim=1).clamp(min=eps)[:, None, None, None]  # (B, 1, 1, 1)
    return local_map - along / squared_norm * direction


def orthogonal_fusion(local_map: torch.Tensor, global_vector: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (B, C) -> (B, 2C, H, W): the global vector at every position, then the orthogonal
    component of the local map (DOLG's fused map, before pooling)."""
    orthogonal = orthogonal_component(local_map, global_vector)
    repeated = global_vector[:, :, None, None].expand_as(orthogonal)
    return torch.cat([repeated, orthogonal], dim=1)


class MultiAtrousBlock(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W): 3x3 convolutions at each dilation and an image-pooling
    branch, each of C_out / 2 channels, concatenated, then a 1x1 convolution and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        branch_channels = max(1, out_channels // 2)
        self.dilated = nn.ModuleList(
            nn.Conv2d(in_channels, branch_channels, 3, padding=rate, dilation=rate) for rate in dilations
        )
        self.image_pool = nn.Sequential(nn.Conv2d(in_channels, branch_channels, 1), nn.ReLU())
        self.reduce = nn.Sequential(
            nn.Conv2d(branch_channels * (len(dilations) + 1), out_channels, 1), nn.ReLU()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        height, width = features.shape[-2:]
        # expanding the pooled vector, rather than upsampling to a stored size, keeps any input size
        pooled = self.image_pool(features.mean(dim=(-2, -1), keepdim=True)).expand(-1, -1, height, width)
        return self.reduce(torch.cat([pooled, *(conv(features) for conv in self.dilated)], dim=1))


class SpatialAttention(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): L2-normalised features weighted by a softplus score per position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.project(features))
        scores = F.softplus(self.score(F.relu(features)))  # (B, 1, H, W)
        return F.normalize(features, dim=1) * scores


class DOLGHead(nn.Module):
    """(local map (B, C_l, H_l, W_l), last map (B, C_g, H_g, W_g)) -> fused vector (B, 2 * local_dim).

    `global_pooling` pools the last map (B, C_g, H_g, W_g) -> (B, global_pooling.output_features(C_g)),
    GeM in the paper.
    """

    def __init__(
        self,
        local_channels: int,
        global_channels: int,
        local_dim: int,
        dilations: Sequence[int],
        global_pooling: Pooling,
    ) -> None:
        super().__init__()
        self.local_branch = nn.Sequential(
            MultiAtrousBlock(local_channels, local_dim, dilations), SpatialAttention(local_dim)
        )
        self.global_pooling = global_pooling
        self.global_projection = nn.Linear(global_pooling.output_features(global_channels), local_dim)
        self.out_features = 2 * local_dim

    def forward(self, stages: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        local_map, global_map = stages
        local_features = self.local_branch(local_map)
        global_vector = self.global_projection(self.global_pooling(global_map))
        return orthogonal_fusion(local_features, global_vector).mean(dim=(-2, -1))
