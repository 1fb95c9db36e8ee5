import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, SubCenterArcFaceLoss

from embedlab.losses import AdaptiveMarginArcFaceLoss


def reference_arcface(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: list[int],
    margins: list[float],
    scale: float,
    sub_centers: int,
    easy_margin: bool,
) -> float:
    """Mean ArcFace loss by a plain loop: max over sub-centers, margin on the target angle, softmax."""
    x = F.normalize(embeddings.double()).tolist()
    w = F.normalize(weight.double()).tolist()
    num_classes = len(w) // sub_centers
    total = 0.0
    for xi, y in zip(x, labels, strict=True):
        cos = [
            max(
                sum(a * b for a, b in zip(xi, w[c * sub_centers + k], strict=True))
                for k in range(sub_centers)
            )
            for c in range(num_classes)
        ]
        theta, m = math.acos(cos[y]), margins[y]
        if easy_margin:
            target = math.cos(theta + m) if cos[y] > 0 else cos[y]
        else:
            target = math.cos(theta + m) if theta + m <= math.pi else cos[y] - m * math.sin(m)
        logits = [scale * (target if c == y else cos[c]) for c in range(num_classes)]
        normaliser = sum(math.exp(v) for v in logits)
        total -= math.log(math.exp(logits[y]) / normaliser)
    return total / len(labels)


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("sub_centers", [1, 3])
def test_matches_formula_with_frequency_margins(sub_centers: int, easy_margin: bool) -> None:
    torch.manual_seed(0)
    counts = torch.tensor([400, 100, 25, 5, 1])
    head = AdaptiveMarginArcFaceLoss(
        5, 3, 0.1, 0.7, scale=16.0, sub_centers=sub_centers, class_counts=counts, easy_margin=easy_margin
    )
    embeddings = torch.randn(12, 3)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 4])
    rarity = [n**-0.25 for n in counts.tolist()]
    margins = [0.1 + 0.6 * (r - min(rarity)) / (max(rarity) - min(rarity)) for r in rarity]
    expected = reference_arcface(
        embeddings, head.weight.detach(), labels.tolist(), margins, 16.0, sub_centers, easy_margin
    )
    assert head(embeddings, labels).item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(head.margins, torch.tensor(margins, dtype=torch.float32))


def test_equals_pytorch_metric_learning_arcface() -> None:
    torch.manual_seed(0)
    margin_rad, scale = 0.5, 64.0
    ours = AdaptiveMarginArcFaceLoss(10, 8, margin_rad, margin_rad, scale=scale)
    theirs = ArcFaceLoss(num_classes=10, embedding_size=8, margin=math.degrees(margin_rad), scale=scale)
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)  # PML stores (embedding_size, num_classes)
    embeddings = torch.randn(64, 8)
    labels = torch.randint(0, 10, (64,))
    with torch.no_grad():
        # Eight embeddings point away from their class: theta + m > pi, where the fallback applies.
        embeddings[:8] = -ours.weight[labels[:8]] + 0.01 * torch.randn(8, 8)
    target_cos = ours.get_cosine(embeddings).gather(1, labels.unsqueeze(1))
    assert int((target_cos < math.cos(math.pi - margin_rad)).sum()) >= 8
    torch.testing.assert_close(ours(embeddings, labels), theirs(embeddings, labels))
    torch.testing.assert_close(ours.get_logits(embeddings), theirs.get_logits(embeddings))


def test_equals_pytorch_metric_learning_subcenter_arcface() -> None:
    torch.manual_seed(1)
    ours = AdaptiveMarginArcFaceLoss(6, 4, 0.3, 0.3, scale=30.0, sub_centers=3)
    theirs = SubCenterArcFaceLoss(
        num_classes=6, embedding_size=4, margin=math.degrees(0.3), scale=30.0, sub_centers=3
    )
    with torch.no_grad():
        theirs.W.copy_(ours.weight.T)
    embeddings = torch.randn(20, 4)
    labels = torch.randint(0, 6, (20,))
    torch.testing.assert_close(ours(embeddings, labels), theirs(embeddings, labels))


def test_constant_margin_needs_no_counts() -> None:
    head = AdaptiveMarginArcFaceLoss(4, 3, 0.4, 0.4)
    torch.testing.assert_close(head.margins, torch.full((4,), 0.4))


def test_margins_are_saved_in_the_state_dict() -> None:
    head = AdaptiveMarginArcFaceLoss(3, 2, 0.1, 0.5, class_counts=torch.tensor([9, 3, 1]))
    assert set(head.state_dict()) == {"weight", "margins"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin_min": 0.1, "margin_max": 0.5}, "class_counts"),
        ({"margin_min": 28.6, "margin_max": 28.6}, "radians"),
        ({"margin_min": 0.5, "margin_max": 0.2}, "margin_min <= margin_max"),
        ({"scale": 0.0}, "scale"),
        ({"class_counts": torch.tensor([1, 2])}, r"shape \(3,\)"),
        ({"class_counts": torch.tensor([1, -2, 3])}, ">= 0"),
        ({"sub_centers": 0}, "sub_centers"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "num_classes": 3,
        "embedding_size": 2,
        "margin_min": 0.3,
        "margin_max": 0.3,
    }
    with pytest.raises(ValueError, match=message):
        AdaptiveMarginArcFaceLoss(**{**arguments, **kwargs})  # type: ignore[arg-type]
