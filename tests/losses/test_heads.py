import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from embedlab.losses import AdaCosLoss, AdaptiveMarginArcFaceLoss, SoftmaxLoss
from embedlab.losses.heads import ClassificationHeadLoss, CosineHeadLoss

EDGE_COSINES = [-1.0, -1.0 + 1e-7, 0.0, 1.0 - 1e-7, 1.0]
COUNTS = torch.tensor([100, 10, 1])

HEADS: dict[str, Callable[[], ClassificationHeadLoss]] = {
    "softmax-focal": lambda: SoftmaxLoss(3, 2, focal_gamma=2.0, label_smoothing=0.1),
    "adacos-fixed": lambda: AdaCosLoss(3, 2, scale="fixed"),
    "adacos-dynamic": lambda: AdaCosLoss(3, 2, scale="dynamic", focal_gamma=0.5),
    "adacos-semi-subcenters": lambda: AdaCosLoss(3, 2, scale="semi", sub_centers=2),
    "arcface-80": lambda: AdaptiveMarginArcFaceLoss(3, 2, 0.5, 0.5, scale=80.0),
    "arcface-adaptive-subcenters": lambda: AdaptiveMarginArcFaceLoss(
        3, 2, 0.1, 0.8, scale=64.0, sub_centers=3, class_counts=COUNTS, label_smoothing=0.1
    ),
    "arcface-easy-focal": lambda: AdaptiveMarginArcFaceLoss(
        3, 2, 0.3, 0.6, scale=30.0, class_counts=COUNTS, easy_margin=True, focal_gamma=2.0
    ),
}


def edge_case_batch(head: ClassificationHeadLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """Class weights (1, 0), (0, 1), (-1, 0) and embeddings at cosine c in EDGE_COSINES to class 0."""
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    sub_centers = head.weight.shape[0] // 3
    with torch.no_grad():
        head.weight.copy_(directions.repeat_interleave(sub_centers, dim=0))
    embeddings = torch.tensor([[c, math.sqrt(max(0.0, 1.0 - c * c))] for c in EDGE_COSINES])
    return embeddings, torch.zeros(len(EDGE_COSINES), dtype=torch.long)


@pytest.mark.parametrize(
    "autocast",
    [None, torch.bfloat16, torch.float16],
    ids=["float32", "bfloat16-autocast", "float16-autocast"],
)
@pytest.mark.parametrize("make_head", HEADS.values(), ids=HEADS.keys())
def test_finite_loss_and_gradients_at_the_edges(
    make_head: Callable[[], ClassificationHeadLoss], autocast: torch.dtype | None
) -> None:
    head = make_head()
    embeddings, labels = edge_case_batch(head)
    if autocast is not None:
        embeddings = embeddings.to(autocast)
    embeddings.requires_grad_(True)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = head(embeddings, labels)
        logits = head.get_logits(embeddings.detach())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("make_head", HEADS.values(), ids=HEADS.keys())
def test_shape_errors_name_the_expected_shape(make_head: Callable[[], ClassificationHeadLoss]) -> None:
    head = make_head()
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        head(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        head(torch.randn(4, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        head(torch.randn(4, 2), torch.zeros(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"embedding_size": 0}, "embedding_size"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, float], message: str) -> None:
    arguments = {"num_classes": 3, "embedding_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        SoftmaxLoss(**arguments)  # type: ignore[arg-type]


def test_softmax_loss_focal_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    head = SoftmaxLoss(num_classes=5, embedding_size=4)
    embeddings = F.normalize(torch.randn(8, 4))
    labels = torch.randint(0, 5, (8,))
    expected = F.cross_entropy(embeddings @ head.weight.T + head.bias, labels)
    torch.testing.assert_close(head(embeddings, labels), expected)


def test_softmax_loss_matches_formula_with_focal_and_smoothing() -> None:
    head = SoftmaxLoss(num_classes=3, embedding_size=2, focal_gamma=2.0, label_smoothing=0.3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, -3.0]]))
        head.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
    embeddings = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    labels = [2, 1]
    total = 0.0
    for x, label in zip(embeddings.tolist(), labels, strict=True):
        logits = [
            sum(w * v for w, v in zip(row, x, strict=True)) + b
            for row, b in zip(head.weight.tolist(), head.bias.tolist(), strict=True)
        ]
        normaliser = sum(math.exp(v) for v in logits)
        for c, logit in enumerate(logits):
            p = math.exp(logit) / normaliser
            q = 0.7 * (c == label) + 0.3 / 3
            total -= q * (1 - p) ** 2 * math.log(p)
    assert head(embeddings, torch.tensor(labels)).item() == pytest.approx(total / 2, rel=1e-5)


def test_miner_weights_follow_pytorch_metric_learning() -> None:
    # A sample's weight is how often it appears in the miner's tuples relative to the most frequent one.
    torch.manual_seed(0)
    head = SoftmaxLoss(num_classes=3, embedding_size=4)
    embeddings = F.normalize(torch.randn(4, 4))
    labels = torch.tensor([0, 0, 1, 2])
    indices_tuple = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3]))
    per_sample = F.cross_entropy(head.get_logits(embeddings), labels, reduction="none")
    weights = torch.tensor([2.0, 2.0, 1.0, 1.0]) / 2
    torch.testing.assert_close(head(embeddings, labels, indices_tuple), (per_sample * weights).mean())


def test_cosine_heads_keep_weights_per_sub_center() -> None:
    head = AdaptiveMarginArcFaceLoss(7, 5, 0.2, 0.2, sub_centers=3)
    assert isinstance(head, CosineHeadLoss)
    assert head.weight.shape == (21, 5)
    assert head.get_logits(torch.randn(2, 5)).shape == (2, 7)
    assert dict(head.named_parameters()).keys() == {"weight"}
