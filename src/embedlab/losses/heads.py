"""The base classes of embedlab's classification heads, and the plain softmax head.

A head is a loss with class weights: called like a pytorch-metric-learning loss,
`loss(embeddings (N, D), labels (N,), indices_tuple=None) -> scalar`, it keeps its weights as the
parameter `weight` and answers `get_logits(embeddings) -> (N, C)` for classification accuracy.
`ClassificationHeadLoss.forward` is the template: it checks the shapes, asks the subclass for the training
logits (`training_logits`, where margins and scale updates live), and applies focal cross-entropy with
label smoothing and pytorch-metric-learning's miner weights. Subclasses write only the logits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from embedlab.losses.functional import cosine_logits, focal_cross_entropy
from embedlab.losses.registry import LOSSES

#: A miner's output: (anchor, positive, negative) or (anchor, positive, anchor, negative) index tensors.
IndicesTuple = tuple[torch.Tensor, ...]


def check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_embeddings_and_labels(embeddings: torch.Tensor, labels: torch.Tensor, embedding_size: int) -> None:
    """Raise a ValueError unless embeddings are (N, embedding_size) and labels (N,) integers."""
    if embeddings.ndim != 2 or embeddings.shape[1] != embedding_size:
        raise ValueError(
            f"embeddings must have shape (N, {embedding_size}), got {tuple(embeddings.shape)}; "
            "the loss's embedding_size must match the model's"
        )
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")


class ClassificationHeadLoss(nn.Module, ABC):
    """Base of embedlab's heads: a classifier over C classes trained with (focal) cross-entropy.

    Args:
        num_classes: C >= 2.
        embedding_size: D.
        focal_gamma: gamma >= 0 of the focal loss (Lin et al., 2017) on the head's softmax; 0 is plain
            cross-entropy.
        label_smoothing: eps in [0, 1); the target distribution is (1 - eps) one-hot + eps / C.
    """

    weight: nn.Parameter

    def __init__(
        self, num_classes: int, embedding_size: int, *, focal_gamma: float = 0.0, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes, minimum=2)
        check_positive_int("embedding_size", embedding_size)
        if not (math.isfinite(focal_gamma) and focal_gamma >= 0):
            raise ValueError(
                f"focal_gamma must be a finite number >= 0 (0 is cross-entropy), got {focal_gamma}"
            )
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.focal_gamma = float(focal_gamma)
        self.label_smoothing = float(label_smoothing)

    @abstractmethod
    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) logits without margin, for classification accuracy and prediction."""

    def training_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, D), (N,) -> (N, C) logits the loss is computed on; heads with margins override this."""
        return self.get_logits(embeddings)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None = None
    ) -> torch.Tensor:
        """Mean (focal) cross-entropy of the training logits, a 0-dim tensor.

        Args:
            embeddings: (N, D).
            labels: (N,) int64 in [0, C).
            indices_tuple: optional miner output; as in pytorch-metric-learning's classification losses,
                each sample is weighted by how often it appears in it (relative to the most frequent).
        """
        check_embeddings_and_labels(embeddings, labels, self.embedding_size)
        labels = labels.long()
        logits = self.training_logits(embeddings, labels)
        losses = focal_cross_entropy(
            logits, labels, gamma=self.focal_gamma, label_smoothing=self.label_smoothing
        )
        miner_weights: torch.Tensor = lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)
        return (losses * miner_weights).mean()


class CosineHeadLoss(ClassificationHeadLoss):
    """Base of the normalised-softmax heads: logits are a scale times cos(embedding, class weight).

    The weight has shape (num_classes * sub_centers, embedding_size); a class's cosine is the max over
    its sub-centers (Deng et al., "Sub-center ArcFace", ECCV 2020). Cosines and logits are computed in
    float32 with autocast off (see `functional.cosine_logits`). Subclasses give the scale
    (`logit_scale`) and the training logits from the cosines (`logits_from_cosine`).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        sub_centers: int = 1,
        focal_gamma: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            num_classes, embedding_size, focal_gamma=focal_gamma, label_smoothing=label_smoothing
        )
        check_positive_int("sub_centers", sub_centers)
        self.sub_centers = sub_centers
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centers, embedding_size))
        nn.init.xavier_uniform_(self.weight)

    @abstractmethod
    def logit_scale(self) -> float | torch.Tensor:
        """The scale s of the logits s * cos."""

    @abstractmethod
    def logits_from_cosine(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, C) cosines, (N,) labels -> (N, C) training logits (margin and scale applied)."""

    def get_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) cosines to each class (its best sub-center), in at least float32."""
        return cosine_logits(embeddings, self.weight, self.sub_centers)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale() * self.get_cosine(embeddings)

    def training_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.logits_from_cosine(self.get_cosine(embeddings), labels)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
            f"sub_centers={self.sub_centers}"
        )


@LOSSES.register
class SoftmaxLoss(ClassificationHeadLoss):
    """A linear classifier with (focal) cross-entropy: logits = x W^T + b.

    The softmax head of Wen et al.'s center loss (ECCV 2016), and a baseline for the margin heads.
    `weight` is (num_classes, embedding_size), `bias` (num_classes,), initialised as `nn.Linear`.

    Args:
        num_classes: C >= 2.
        embedding_size: D.
        focal_gamma, label_smoothing: see `ClassificationHeadLoss`.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, *, focal_gamma: float = 0.0, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(
            num_classes, embedding_size, focal_gamma=focal_gamma, label_smoothing=label_smoothing
        )
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        self.bias = nn.Parameter(torch.empty(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(embedding_size)
        nn.init.uniform_(self.bias, -bound, bound)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(embeddings, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"
