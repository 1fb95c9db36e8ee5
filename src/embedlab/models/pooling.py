"""Global pooling of feature maps (B, C, H, W) -> (B, C): GeM with a learnable exponent, average, max;
and `flatten`, (B, C, H, W) -> (B, C*H*W), which keeps the layout (small fixed-size inputs only).

GeM (Radenovic et al., "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018):
gem(x) = (mean over H, W of clamp(x, eps)^p)^(1/p); p = 1 is average pooling, p -> inf max pooling.

Every pooling reports the width of what it returns, `output_features(in_features)` for a map of
`in_features` channels (timm's `feat_mult` in `timm/layers/adaptive_avgmax_pool.py` does the same), so
the embedder sizes the neck without running the network. `flatten` is built for the map's (H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from embedlab.registry import Registry


def gem(features: torch.Tensor, p: torch.Tensor | float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over the spatial axes of (B, C, H, W) -> (B, C)."""
    return features.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class Pooling(nn.Module):
    """A pooling of (B, C, H, W) maps that keeps the width C; a subclass that changes it says so."""

    def output_features(self, in_features: int) -> int:
        """The width of the output for a map of `in_features` channels."""
        return in_features


POOLING: Registry[Pooling] = Registry("pooling")


@POOLING.register(name="gem")
class GeM(Pooling):
    """GeM pooling whose exponent `p` is a learned parameter."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return gem(features, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


@POOLING.register(name="avg")
class AveragePool(Pooling):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(-2, -1))


@POOLING.register(name="max")
class MaxPool(Pooling):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.amax(dim=(-2, -1))


@POOLING.register(name="flatten")
class Flatten(Pooling):
    """(B, C, H, W) -> (B, C*H*W) for the map size (H, W) it was built for."""

    def __init__(self, map_size: tuple[int, int]) -> None:
        super().__init__()
        self.map_size = (int(map_size[0]), int(map_size[1]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1)

    def output_features(self, in_features: int) -> int:
        return in_features * self.map_size[0] * self.map_size[1]

    def extra_repr(self) -> str:
        return f"map_size={self.map_size}"
