import pytest
import torch
from torch import nn

from embedlab.losses import LOSSES, build_loss, needs_class_count

EMBEDLAB_LOSSES = [name for name in LOSSES.names() if LOSSES.get(name).__module__.startswith("embedlab.")]


def test_embedlab_heads_are_registered() -> None:
    assert {"AdaCosLoss", "AdaptiveMarginArcFaceLoss", "CenterLoss", "SoftmaxLoss"} <= set(EMBEDLAB_LOSSES)


@pytest.mark.parametrize("name", EMBEDLAB_LOSSES)
def test_every_embedlab_loss_builds_by_name_and_runs(name: str) -> None:
    loss = build_loss(name, {}, num_classes=5, embedding_size=4, class_counts=torch.tensor([9, 7, 5, 3, 1]))
    assert type(loss).__name__ == name
    assert needs_class_count(name)
    embeddings = nn.functional.normalize(torch.randn(6, 4))
    value = loss(embeddings, torch.tensor([0, 1, 2, 3, 4, 0]))
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize(
    "name", ["ArcFaceLoss", "SubCenterArcFaceLoss", "CosFaceLoss", "NormalizedSoftmaxLoss"]
)
def test_registering_a_pytorch_metric_learning_name_raises(name: str) -> None:
    shadow = type(name, (nn.Module,), {})
    with pytest.raises(ValueError, match="already registered"):
        LOSSES.register(shadow)
