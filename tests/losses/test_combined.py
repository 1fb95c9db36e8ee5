import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, ContrastiveLoss

from embedlab.losses import (
    AdaCosLoss,
    CenterLoss,
    SoftmaxLoss,
    WeightedLossSum,
    build_weighted_loss,
    classifier_of,
)

BUILD = {"num_classes": 4, "embedding_size": 3, "class_counts": torch.tensor([5, 5, 2, 1])}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(8, 3, generator=generator)), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_weighted_sum_of_terms() -> None:
    torch.manual_seed(0)
    softmax, center, contrastive = SoftmaxLoss(4, 3), CenterLoss(4, 3), ContrastiveLoss()
    combined = WeightedLossSum(
        [("softmax", softmax, 1.0), ("center", center, 0.1), ("pairs", contrastive, 2.5)]
    )
    embeddings, labels = batch()
    expected = (
        softmax(embeddings, labels) + 0.1 * center(embeddings, labels) + 2.5 * contrastive(embeddings, labels)
    )
    torch.testing.assert_close(combined(embeddings, labels), expected)


def test_log_values_are_prefixed_with_the_term_name() -> None:
    combined = WeightedLossSum(
        [("adacos", AdaCosLoss(4, 3, scale="fixed"), 1.0), ("center", CenterLoss(4, 3), 0.5)]
    )
    assert combined.log_values() == {"adacos/scale": pytest.approx(AdaCosLoss(4, 3).current_scale.item())}


def test_state_dict_keys_name_the_terms() -> None:
    combined = WeightedLossSum([("softmax", SoftmaxLoss(4, 3), 1.0), ("center", CenterLoss(4, 3), 0.5)])
    assert set(combined.state_dict()) == {
        "losses.softmax.weight",
        "losses.softmax.bias",
        "losses.center.centers",
    }


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ([], "at least one"),
        ([("a", CenterLoss(4, 3), 1.0), ("a", CenterLoss(4, 3), 1.0)], "unique"),
        ([("a.b", CenterLoss(4, 3), 1.0)], "'.'"),
        ([("a", CenterLoss(4, 3), -1.0)], "weight"),
        ([("a", CenterLoss(4, 3), float("nan"))], "weight"),
    ],
)
def test_invalid_terms_raise(terms: list[tuple[str, torch.nn.Module, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightedLossSum(terms)


def test_single_term_of_weight_one_is_the_loss_itself() -> None:
    loss = build_weighted_loss([("AdaCosLoss", {"scale": "semi"}, 1.0)], **BUILD)
    assert isinstance(loss, AdaCosLoss) and loss.scale_mode == "semi"


def test_single_term_with_another_weight_is_weighted() -> None:
    loss = build_weighted_loss([("CenterLoss", {}, 2.0)], **BUILD)
    assert isinstance(loss, WeightedLossSum) and loss.weights == {"CenterLoss": 2.0}


def test_build_fills_data_arguments_and_names_repeated_losses() -> None:
    specs = [
        ("AdaptiveMarginArcFaceLoss", {"margin_min": 0.1, "margin_max": 0.5, "scale": 16.0}, 1.0),
        ("CenterLoss", {}, 0.01),
        ("ContrastiveLoss", {"pos_margin": 0.0}, 0.5),
        ("ContrastiveLoss", {"neg_margin": 0.5}, 0.5),
    ]
    loss = build_weighted_loss(specs, **BUILD)
    assert isinstance(loss, WeightedLossSum)
    assert list(loss.losses) == [
        "AdaptiveMarginArcFaceLoss",
        "CenterLoss",
        "ContrastiveLoss",
        "ContrastiveLoss_2",
    ]
    assert loss.weights["CenterLoss"] == 0.01
    assert loss.losses["AdaptiveMarginArcFaceLoss"].margins[-1].item() == pytest.approx(0.5)
    embeddings, labels = batch()
    assert torch.isfinite(loss(embeddings, labels))


def test_build_rejects_unknown_arguments_and_empty_lists() -> None:
    with pytest.raises(TypeError, match="margn"):
        build_weighted_loss([("AdaCosLoss", {"margn": 0.1}, 1.0)], **BUILD)
    with pytest.raises(ValueError, match="empty"):
        build_weighted_loss([], **BUILD)


def test_classifier_of() -> None:
    softmax = SoftmaxLoss(4, 3)
    assert classifier_of(softmax) is softmax
    assert classifier_of(WeightedLossSum([("s", softmax, 1.0), ("c", CenterLoss(4, 3), 0.1)])) is softmax
    pml_arcface = ArcFaceLoss(num_classes=4, embedding_size=3)
    assert classifier_of(pml_arcface) is pml_arcface
    assert classifier_of(ContrastiveLoss()) is None
    assert classifier_of(WeightedLossSum([("a", softmax, 1.0), ("b", SoftmaxLoss(4, 3), 1.0)])) is None
