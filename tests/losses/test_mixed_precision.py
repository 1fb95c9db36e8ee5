"""Every margin head under bfloat16 and float16 autocast (what train.precision bf16-mixed and 16-mixed
run), on the CPU: finite losses and gradients, and the float32 loss within a small tolerance.

The embeddings come out of a linear layer under autocast, so they reach the head in half precision as
they do from a backbone; embedlab's heads compute their cosines in float32 (losses/functional.py),
pytorch-metric-learning's in the autocast dtype, hence their wider tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from pytorch_metric_learning import losses as pml
from torch import nn

from embedlab.losses import AdaCosLoss, AdaptiveMarginArcFaceLoss

CLASSES, EMBEDDING, BATCH, INPUTS = 10, 32, 64, 16
COUNTS = torch.arange(1, CLASSES + 1) * 5

#: Relative distance to the float32 loss: measured at most 8e-5 for embedlab's heads and 2.8e-3 for
#: pytorch-metric-learning's (bfloat16 cosines, scale 64); a cosine computed in half precision would
#: exceed the first.
EMBEDLAB_TOLERANCE = 3e-4
PML_TOLERANCE = 1e-2

HEADS: dict[str, tuple[Callable[[], nn.Module], float]] = {
    "adacos-fixed": (lambda: AdaCosLoss(CLASSES, EMBEDDING, scale="fixed"), EMBEDLAB_TOLERANCE),
    "adacos-dynamic": (lambda: AdaCosLoss(CLASSES, EMBEDDING, scale="dynamic"), EMBEDLAB_TOLERANCE),
    "adacos-semi-subcenters": (
        lambda: AdaCosLoss(CLASSES, EMBEDDING, scale="semi", sub_centers=2),
        EMBEDLAB_TOLERANCE,
    ),
    "arcface-64": (
        lambda: AdaptiveMarginArcFaceLoss(CLASSES, EMBEDDING, 0.5, 0.5, scale=64.0),
        EMBEDLAB_TOLERANCE,
    ),
    "class-frequency-margins-subcenters": (
        lambda: AdaptiveMarginArcFaceLoss(
            CLASSES, EMBEDDING, 0.1, 0.8, scale=64.0, sub_centers=3, class_counts=COUNTS
        ),
        EMBEDLAB_TOLERANCE,
    ),
    "focal-on-margin": (
        lambda: AdaptiveMarginArcFaceLoss(
            CLASSES, EMBEDDING, 0.3, 0.6, scale=30.0, class_counts=COUNTS, focal_gamma=2.0
        ),
        EMBEDLAB_TOLERANCE,
    ),
    "pml-ArcFaceLoss": (lambda: pml.ArcFaceLoss(CLASSES, EMBEDDING, margin=28.6, scale=64), PML_TOLERANCE),
    "pml-CosFaceLoss": (lambda: pml.CosFaceLoss(CLASSES, EMBEDDING, margin=0.35, scale=64), PML_TOLERANCE),
    "pml-SphereFaceLoss": (lambda: pml.SphereFaceLoss(CLASSES, EMBEDDING, margin=4), PML_TOLERANCE),
    "pml-SubCenterArcFaceLoss": (
        lambda: pml.SubCenterArcFaceLoss(
            num_classes=CLASSES, embedding_size=EMBEDDING, margin=28.6, scale=64, sub_centers=3
        ),
        PML_TOLERANCE,
    ),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", HEADS)
def test_margin_heads_under_autocast_match_float32(name: str, dtype: torch.dtype) -> None:
    make_head, tolerance = HEADS[name]
    torch.manual_seed(0)
    layer = nn.Linear(INPUTS, EMBEDDING)
    inputs = torch.randn(BATCH, INPUTS)
    labels = torch.arange(BATCH) % CLASSES
    head = make_head()
    # Copies, so that both runs start from the same weights and AdaCos's scale buffer.
    reference_head, reference_layer = copy.deepcopy(head), copy.deepcopy(layer)
    reference = reference_head(reference_layer(inputs), labels)

    with torch.autocast("cpu", dtype=dtype):
        embeddings = layer(inputs)
        loss = head(embeddings, labels)
    loss.backward()

    assert embeddings.dtype == dtype  # the head really received half-precision embeddings
    assert torch.isfinite(loss)
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert loss.item() == pytest.approx(reference.item(), rel=tolerance)
