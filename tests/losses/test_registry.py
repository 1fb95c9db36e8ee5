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


def test_check_loss_arguments_raises_what_building_would_without_building() -> None:
    from embedlab.losses.registry import check_loss_arguments, check_miner_arguments

    check_loss_arguments("ArcFaceLoss", {"margin": 28.6, "scale": 64})
    check_miner_arguments("MultiSimilarityMiner", {"epsilon": 0.1})
    with pytest.raises(TypeError, match="loss 'ArcFaceLoss' does not take 'm'"):
        check_loss_arguments("ArcFaceLoss", {"m": 0.4})
    with pytest.raises(ValueError, match="num_classes come from the data"):
        check_loss_arguments("ArcFaceLoss", {"num_classes": 3})
    with pytest.raises(ValueError, match="unknown loss 'ArcFace'"):
        check_loss_arguments("ArcFace", {})
    with pytest.raises(TypeError, match="miner 'MultiSimilarityMiner' does not take 'margin'"):
        check_miner_arguments("MultiSimilarityMiner", {"margin": 0.1})
