"""Center loss: pull each embedding towards a learned center of its class.

Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from embedlab.losses.functional import center_loss
from embedlab.losses.heads import IndicesTuple, check_embeddings_and_labels, check_positive_int
from embedlab.losses.registry import LOSSES


@LOSSES.register
class CenterLoss(nn.Module):
    """Mean over the batch of 0.5 * ||x_i - c_{y_i}||^2, the centers c a parameter (num_classes, D).

    Alone it lets every class collapse onto one point, so it is meant beside a classification loss,
    as in the paper (softmax + lambda * center loss): in a config, a list such as
    `[{name: SoftmaxLoss}, {name: CenterLoss, weight: 0.01, lr: 0.5}]`, where `weight` is lambda and
    `lr` the centers' own learning rate. The paper moves the centers with a rule of its own (alpha
    times the mean pull of the class's samples in the batch); here the optimizer moves them, and `lr`
    plays alpha's role. Their gradient is multiplied by `weight` like the rest of the term, so a small
    weight calls for a large `lr`.

    The centers start at the origin, the same distance from every point of the unit sphere the
    embeddings live on, so the first steps move the centers to the classes rather than pulling the
    embeddings towards random points.

    Args:
        num_classes: C >= 1.
        embedding_size: D.
    """

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("embedding_size", embedding_size)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.centers = nn.Parameter(torch.zeros(num_classes, embedding_size))

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None = None
    ) -> torch.Tensor:
        """0-dim mean center loss of embeddings (N, D) with labels (N,); miner weights as in `heads`."""
        check_embeddings_and_labels(embeddings, labels, self.embedding_size)
        labels = labels.long()
        losses = center_loss(embeddings, self.centers, labels)
        miner_weights: torch.Tensor = lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)
        return (losses * miner_weights).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"
