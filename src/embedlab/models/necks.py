"""Necks: pooled features (B, C) -> embedding (B, D).

`bn`: dropout -> Linear -> BatchNorm, the BN-neck of re-identification baselines; `linear`: dropout ->
Linear with a bias, the plain projection of simple metric-learning examples.
"""

from __future__ import annotations

import torch
from torch import nn

from embedlab.registry import Registry

NECKS: Registry[nn.Module] = Registry("neck")


@NECKS.register(name="bn")
class LinearBatchNormNeck(nn.Module):
    """Dropout -> Linear(C, D) -> BatchNorm1d(D); the BN-neck of re-identification baselines."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, embedding_dim, bias=False)
        self.norm = nn.BatchNorm1d(embedding_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.dropout(pooled)))


@NECKS.register(name="linear")
class LinearNeck(nn.Module):
    """Dropout -> Linear(C, D) with a bias."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, embedding_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(pooled))
