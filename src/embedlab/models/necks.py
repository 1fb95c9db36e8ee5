"""The neck: pooled features (B, C) -> embedding (B, D) through dropout, Linear and BatchNorm."""

from __future__ import annotations

import torch
from torch import nn


class LinearBatchNormNeck(nn.Module):
    """Dropout -> Linear(C, D) -> BatchNorm1d(D); the BN-neck of re-identification baselines."""

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, embedding_dim, bias=False)
        self.norm = nn.BatchNorm1d(embedding_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.dropout(pooled)))
