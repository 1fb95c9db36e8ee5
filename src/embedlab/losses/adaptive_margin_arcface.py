"""Sub-center ArcFace with per-class margins that grow for rare classes.

ArcFace: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019
(arXiv:1801.07698). Sub-centers: Deng et al., "Sub-center ArcFace", ECCV 2020. Margins from the class
frequencies: Ha et al., "Google Landmark Recognition 2020 Competition Third Place Solution"
(arXiv:2010.05350).
"""

from __future__ import annotations

import math

import torch

from embedlab.losses.functional import additive_angular_margin, frequency_margins, replace_target_logits
from embedlab.losses.heads import CosineHeadLoss
from embedlab.losses.registry import LOSSES


@LOSSES.register
class AdaptiveMarginArcFaceLoss(CosineHeadLoss):
    """Cross-entropy on s * cos(theta_y + m_y) for the target class and s * cos(theta_k) for the others.

    m_c = margin_min + (margin_max - margin_min) * (n_c^(-1/4) - min) / (max - min) over the training
    counts n_c (`functional.frequency_margins`): frequent classes get margin_min, the rarest margin_max.
    With margin_min == margin_max it is ArcFace with a constant margin, and with sub_centers=1 too it
    matches pytorch-metric-learning's ArcFaceLoss (which takes its margin in degrees). The margin is
    computed in float32 on clamped cosines, with the usual fallback cos(theta) - m sin(m) where
    theta + m > pi (`functional.additive_angular_margin`). The margins are a buffer, saved in the
    checkpoint.

    Args:
        num_classes: C >= 2.
        embedding_size: D.
        margin_min, margin_max: radians, 0 <= margin_min <= margin_max <= pi/2.
        scale: s > 0.
        sub_centers: K >= 1 weights per class, the class cosine being their max; `weight` is (C * K, D).
        class_counts: (C,) training images per class; embedlab fills it in from the training set. Needed
            unless margin_min == margin_max.
        easy_margin: apply the margin only where cos(theta) > 0 (the ArcFace reference code's option).
        focal_gamma, label_smoothing: see `ClassificationHeadLoss`.
    """

    margins: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin_min: float = 0.05,
        margin_max: float = 0.5,
        scale: float = 30.0,
        sub_centers: int = 1,
        class_counts: torch.Tensor | None = None,
        *,
        easy_margin: bool = False,
        focal_gamma: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            num_classes,
            embedding_size,
            sub_centers=sub_centers,
            focal_gamma=focal_gamma,
            label_smoothing=label_smoothing,
        )
        if not 0 <= margin_min <= margin_max <= math.pi / 2:
            raise ValueError(
                "margins are in radians and need 0 <= margin_min <= margin_max <= pi/2, got "
                f"margin_min={margin_min}, margin_max={margin_max} (for degrees, convert: 28.6 deg = 0.5 rad)"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale}")
        if class_counts is None:
            if margin_min != margin_max:
                raise ValueError(
                    "margins that differ by class need class_counts (training images per class, shape "
                    f"({num_classes},)); build the loss through build_loss, or set margin_min == margin_max"
                )
            class_counts = torch.ones(num_classes, dtype=torch.long)
        elif tuple(class_counts.shape) != (num_classes,):
            raise ValueError(
                f"class_counts must have shape ({num_classes},), one count per class, "
                f"got {tuple(class_counts.shape)}"
            )
        elif bool((class_counts < 0).any()):
            raise ValueError("class_counts must be >= 0")
        self.margin_min = float(margin_min)
        self.margin_max = float(margin_max)
        self.scale = float(scale)
        self.easy_margin = easy_margin
        self.register_buffer("margins", frequency_margins(class_counts, self.margin_min, self.margin_max))

    def logit_scale(self) -> float:
        return self.scale

    def logits_from_cosine(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, labels.unsqueeze(1)).squeeze(1)
        with_margin = additive_angular_margin(target, self.margins[labels], easy_margin=self.easy_margin)
        return self.scale * replace_target_logits(cosine, labels, with_margin)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin_min={self.margin_min}, margin_max={self.margin_max}, "
            f"scale={self.scale}, easy_margin={self.easy_margin}"
        )
