"""A loss fed by its own miner: the miner picks the pairs or triplets, the loss scores them."""

from __future__ import annotations

import torch
from pytorch_metric_learning.miners import BaseMiner
from torch import nn


class MinedLoss(nn.Module):
    """loss(embeddings, labels, miner(embeddings, labels)); the wrapped loss keeps its state-dict keys."""

    def __init__(self, loss: nn.Module, miner: BaseMiner) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: object = None
    ) -> torch.Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings, labels))

    def log_values(self) -> dict[str, float]:
        inner = getattr(self.loss, "log_values", None)
        return inner() if callable(inner) else {}
