"""Metric losses and miners by name (pytorch-metric-learning's and embedlab's own).

Importing this package registers embedlab's heads in `LOSSES` beside pytorch-metric-learning's losses.
"""

from embedlab.losses.adacos import AdaCosLoss
from embedlab.losses.adaptive_margin_arcface import AdaptiveMarginArcFaceLoss
from embedlab.losses.center_loss import CenterLoss
from embedlab.losses.combined import WeightedLossSum, build_weighted_loss, classifier_of
from embedlab.losses.heads import ClassificationHeadLoss, CosineHeadLoss, SoftmaxLoss
from embedlab.losses.registry import LOSSES, MINERS, build_loss, build_miner, needs_class_count

__all__ = [
    "LOSSES",
    "MINERS",
    "AdaCosLoss",
    "AdaptiveMarginArcFaceLoss",
    "CenterLoss",
    "ClassificationHeadLoss",
    "CosineHeadLoss",
    "SoftmaxLoss",
    "WeightedLossSum",
    "build_loss",
    "build_miner",
    "build_weighted_loss",
    "classifier_of",
    "needs_class_count",
]
