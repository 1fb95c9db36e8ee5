"""AdaCos: a normalised-softmax head whose scale is set from the number of classes or from the batch.

Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep Face
Representations", CVPR 2019 (arXiv:1905.00292).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from embedlab.losses.functional import adacos_dynamic_scale, adacos_fixed_scale, adacos_semi_dynamic_scale
from embedlab.losses.heads import CosineHeadLoss, check_positive_int
from embedlab.losses.registry import LOSSES

AdaCosScale = Literal["fixed", "dynamic", "semi"]


@LOSSES.register
class AdaCosLoss(CosineHeadLoss):
    """Cross-entropy on s * cos(theta), without margin, with AdaCos's scale s.

    scale:
      - "fixed": s = sqrt(2) ln(C - 1) throughout (the paper's eq. 10).
      - "dynamic": the paper's eq. 15 at every training step, before the step's logits:
        s = ln(B_avg) / cos(min(pi/4, theta_med)), B_avg the batch mean over samples of
        sum_{k != y} exp(s_prev cos_k), theta_med the median target angle; computed without gradient.
      - "semi": the dynamic rule with B_avg replaced by C - 1, as in a Google Landmark Retrieval 2020
        TensorFlow solution.
    Every mode starts from the fixed scale. The scale is a buffer (`current_scale`), so it is saved in
    the checkpoint; it changes only in training mode, and `log_values()` reports it. Under distributed
    training each process computes it from its own batch.

    Args:
        num_classes: C >= 3 (the fixed scale is 0 for two classes).
        embedding_size: D.
        scale: "fixed", "dynamic" or "semi".
        sub_centers: K >= 1 weights per class, the class cosine being their max.
        focal_gamma, label_smoothing: see `ClassificationHeadLoss`.
    """

    current_scale: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        scale: AdaCosScale = "dynamic",
        *,
        sub_centers: int = 1,
        focal_gamma: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        check_positive_int("num_classes", num_classes, minimum=3)
        if scale not in get_args(AdaCosScale):
            raise ValueError(f"scale must be one of {', '.join(get_args(AdaCosScale))}, got {scale!r}")
        super().__init__(
            num_classes,
            embedding_size,
            sub_centers=sub_centers,
            focal_gamma=focal_gamma,
            label_smoothing=label_smoothing,
        )
        self.scale_mode: AdaCosScale = scale
        self.register_buffer(
            "current_scale", torch.tensor(adacos_fixed_scale(num_classes), dtype=torch.float32)
        )

    def logit_scale(self) -> torch.Tensor:
        return self.current_scale

    def logits_from_cosine(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.scale_mode != "fixed":
            if self.scale_mode == "dynamic":
                new_scale = adacos_dynamic_scale(cosine, labels, self.current_scale)
            else:
                new_scale = adacos_semi_dynamic_scale(cosine, labels)
            self.current_scale.copy_(new_scale)
        # A copy, because autograd keeps the scale for the backward pass and the next forward (another
        # crop, gradient accumulation before backward) updates the buffer in place.
        return self.current_scale.clone() * cosine

    def log_values(self) -> dict[str, float]:
        """{"scale": the current scale s}."""
        return {"scale": float(self.current_scale)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale_mode!r}"
