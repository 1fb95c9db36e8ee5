"""The math of embedlab's heads as pure functions: tensors in, tensors out, no state.

The modules in `heads.py`, `adacos.py`, `adaptive_margin_arcface.py` and `center_loss.py` hold the
parameters and call these; the tests check these against plain loops. Every function that touches a
cosine works in at least float32 (see `compute_dtype`), whatever autocast or the inputs say, because the
margins and the large scales (30-80) of these heads are where half precision breaks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Cosines are clamped to [-1 + COS_EPS, 1 - COS_EPS] before sqrt(1 - cos^2) or acos, whose derivatives
#: are infinite at +-1. In float32 this bound rounds to 1 - 1.19e-7, so the largest derivative left is
#: about 1 / sqrt(2.4e-7) ~ 2e3: large but finite.
COS_EPS = 1e-7


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype for float32 and float64."""
    return torch.promote_types(tensor.dtype, torch.float32)


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor, sub_centers: int = 1) -> torch.Tensor:
    """Cosine between each embedding and each class, the max over a class's sub-centers.

    Args:
        embeddings: (N, D); normalised here again, so their norm does not matter.
        weight: (C * K, D) class weights, rows c * K ... c * K + K - 1 are class c's K sub-centers
            (the layout of Deng et al., "Sub-center ArcFace", ECCV 2020, and of pytorch-metric-learning).
        sub_centers: K >= 1.

    Returns:
        (N, C) cosines in at least float32, computed with autocast off: a bfloat16 matmul has errors of
        ~4e-3 in the cosine, which a scale of 64 turns into ~0.25 in the logits.
    """
    dtype = compute_dtype(embeddings)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        cosine = F.linear(F.normalize(embeddings.to(dtype), dim=1), F.normalize(weight.to(dtype), dim=1))
    if sub_centers == 1:
        return cosine
    # (N, C * K) -> (N, C, K): the best-matching sub-center of each class stands for the class.
    return cosine.view(cosine.shape[0], -1, sub_centers).amax(dim=2)


def additive_angular_margin(
    cosine: torch.Tensor, margin_rad: torch.Tensor | float, *, easy_margin: bool = False
) -> torch.Tensor:
    """cos(theta + m) for target cosines, ArcFace's margin (Deng et al., CVPR 2019, arXiv:1801.07698).

    Computed as cos(theta) cos(m) - sin(theta) sin(m) on the clamped cosine (see COS_EPS), in at least
    float32. Where theta + m would pass pi, cos(theta + m) would start to increase with theta, rewarding
    a worse embedding; there the standard fallback cos(theta) - m sin(m) is used, which continues the
    curve monotonically. With `easy_margin` the margin applies only where cos(theta) > 0 and the plain
    cosine is kept elsewhere.

    Args:
        cosine: (N,) cosine between each embedding and its target class.
        margin_rad: a float or (N,) margins in radians, one per sample.

    Returns:
        (N,) the target cosines with their margin.
    """
    dtype = compute_dtype(cosine)
    cos = cosine.to(dtype).clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
    margin = torch.as_tensor(margin_rad, dtype=dtype, device=cosine.device)
    sin = torch.sqrt(1.0 - cos * cos)
    cos_with_margin = cos * torch.cos(margin) - sin * torch.sin(margin)
    if easy_margin:
        return torch.where(cos > 0, cos_with_margin, cos)
    # theta + m > pi  <=>  cos(theta) < cos(pi - m)
    return torch.where(cos > torch.cos(math.pi - margin), cos_with_margin, cos - margin * torch.sin(margin))


def replace_target_logits(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Put `target` (N,) in column labels[i] of each row of `logits` (N, C); differentiable in both."""
    return logits.scatter(1, labels.unsqueeze(1), target.to(logits.dtype).unsqueeze(1))


def focal_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 0.0, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Focal loss on a softmax, per sample (Lin et al., "Focal Loss for Dense Object Detection", 2017).

    loss_i = -sum_c q_ic (1 - p_ic)^gamma log p_ic, with p the softmax of the logits and q the target
    distribution: one-hot, or with label smoothing eps, (1 - eps) one-hot + eps / C (Szegedy et al.
    2016, the convention of `F.cross_entropy(label_smoothing=eps)`). gamma = 0 is cross-entropy.

    Args:
        logits: (N, C) unnormalised scores; computed on in at least float32.
        labels: (N,) int64 class indices.
        gamma: focusing parameter >= 0.
        label_smoothing: eps in [0, 1).

    Returns:
        (N,) losses.
    """
    log_p = F.log_softmax(logits.to(compute_dtype(logits)), dim=1)
    if gamma == 0.0:
        per_class = -log_p
    else:
        # 1 - p as -expm1(log p) keeps its precision when p is close to 1; the clamp keeps the derivative
        # of (1 - p)^gamma finite for gamma < 1 when p rounds to exactly 1.
        one_minus_p = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny)
        per_class = -(one_minus_p**gamma) * log_p
    # The target term is gathered rather than multiplied by a one-hot so that a -inf log-probability of
    # another class cannot turn into 0 * inf = nan.
    target_term = per_class.gather(1, labels.unsqueeze(1)).squeeze(1)
    if label_smoothing == 0.0:
        return target_term
    return (1.0 - label_smoothing) * target_term + label_smoothing * per_class.mean(dim=1)


def frequency_margins(class_counts: torch.Tensor, margin_min: float, margin_max: float) -> torch.Tensor:
    """Per-class margins that grow for rare classes (Ha et al., Google Landmark Recognition 2020, 3rd place).

    m_c = margin_min + (margin_max - margin_min) * (n_c^(-1/4) - min_k n_k^(-1/4)) / (max - min),
    so the most frequent class gets margin_min and the rarest margin_max. A class without training
    images counts as having one (it is never a target, so its margin only has to be finite). When every
    class has the same count the rarity is the same for all and each class gets the middle margin
    (margin_min + margin_max) / 2; with margin_min == margin_max the margin is that constant.

    Args:
        class_counts: (C,) training images per class.
        margin_min, margin_max: radians, margin_min <= margin_max.

    Returns:
        (C,) float32 margins in radians.
    """
    rarity = class_counts.to(torch.float64).clamp(min=1.0).pow(-0.25)
    spread = rarity.max() - rarity.min()
    if margin_min == margin_max:
        fraction = torch.zeros_like(rarity)
    elif spread == 0:
        fraction = torch.full_like(rarity, 0.5)
    else:
        fraction = (rarity - rarity.min()) / spread
    return (margin_min + (margin_max - margin_min) * fraction).to(torch.float32)


def adacos_fixed_scale(num_classes: int) -> float:
    """AdaCos's fixed scale s = sqrt(2) ln(C - 1) (Zhang et al., CVPR 2019, arXiv:1905.00292, eq. 10)."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


def median_target_angle(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Median angle (radians) between the embeddings and their target classes; the lower median for even N.

    Args:
        cosine: (N, C); labels: (N,).

    Returns:
        0-dim tensor.
    """
    target = cosine.gather(1, labels.unsqueeze(1)).squeeze(1)
    return torch.acos(target.to(compute_dtype(target)).clamp(-1.0, 1.0)).median()


def adacos_dynamic_scale(cosine: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaCos's dynamic scale update (Zhang et al., CVPR 2019, arXiv:1905.00292, eq. 15).

    s_new = ln(B_avg) / cos(min(pi/4, theta_med)), with B_avg = (1/N) sum_i sum_{k != y_i} exp(s cos_ik)
    using the previous scale s, and theta_med the median target angle. ln(B_avg) is taken as a
    logsumexp, so exp(s cos) never overflows however large s gets. The update is not differentiated.
    B_avg < 1 (every embedding pointing away from almost every class) would make s_new <= 0, which flips
    the sign of the logits and the direction of learning; the previous scale is kept then.

    Args:
        cosine: (N, C) cosines, C >= 3; labels: (N,); scale: 0-dim previous scale.

    Returns:
        0-dim new scale, same dtype and device as `scale`.
    """
    with torch.no_grad():
        scaled = scale.to(compute_dtype(cosine)) * cosine.to(compute_dtype(cosine))
        non_target = replace_target_logits(
            scaled, labels, torch.full_like(labels, -math.inf, dtype=scaled.dtype)
        )
        log_b_avg = torch.logsumexp(non_target.flatten(), dim=0) - math.log(cosine.shape[0])
        theta_med = median_target_angle(cosine, labels).clamp(max=math.pi / 4)
        new_scale = (log_b_avg / torch.cos(theta_med)).to(scale.dtype)
        return torch.where(torch.isfinite(new_scale) & (new_scale > 0), new_scale, scale)


def adacos_semi_dynamic_scale(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The dynamic rule with B_avg replaced by C - 1: s = ln(C - 1) / cos(min(pi/4, theta_med)).

    The variant of a Google Landmark Retrieval 2020 TensorFlow solution: only the median target angle
    adapts; s equals the fixed scale sqrt(2) ln(C - 1) while theta_med >= pi/4 and falls towards
    ln(C - 1) as the classes tighten. Not differentiated.

    Args:
        cosine: (N, C) cosines, C >= 3; labels: (N,).

    Returns:
        0-dim float32 (or float64) scale.
    """
    with torch.no_grad():
        theta_med = median_target_angle(cosine, labels).clamp(max=math.pi / 4)
        return math.log(cosine.shape[1] - 1) / torch.cos(theta_med)


def center_loss(embeddings: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Half the squared distance of each embedding to its class center (Wen et al., ECCV 2016, eq. 2).

    Args:
        embeddings: (N, D); centers: (C, D); labels: (N,).

    Returns:
        (N,) losses 0.5 * ||x_i - c_{y_i}||^2 in at least float32.
    """
    dtype = compute_dtype(embeddings)
    difference = embeddings.to(dtype) - centers.to(dtype)[labels]
    return 0.5 * difference.pow(2).sum(dim=1)
