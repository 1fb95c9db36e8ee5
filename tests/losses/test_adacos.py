import math

import pytest
import torch
import torch.nn.functional as F

from embedlab.losses import AdaCosLoss


def reference_adacos(
    embeddings: torch.Tensor, weight: torch.Tensor, labels: list[int], scale: float, mode: str
) -> tuple[float, float]:
    """(new scale, mean loss) of one training step, by a plain loop over samples and classes."""
    x = F.normalize(embeddings.double()).tolist()
    w = F.normalize(weight.double()).tolist()
    cos = [[sum(a * b for a, b in zip(xi, wc, strict=True)) for wc in w] for xi in x]
    if mode != "fixed":
        b_sum = sum(
            math.exp(scale * v)
            for row, y in zip(cos, labels, strict=True)
            for k, v in enumerate(row)
            if k != y
        )
        angles = sorted(math.acos(row[y]) for row, y in zip(cos, labels, strict=True))
        denominator = math.cos(min(math.pi / 4, angles[(len(angles) - 1) // 2]))
        b_avg = b_sum / len(cos) if mode == "dynamic" else len(w) - 1
        scale = math.log(b_avg) / denominator
    losses = []
    for row, y in zip(cos, labels, strict=True):
        normaliser = sum(math.exp(scale * v) for v in row)
        losses.append(-math.log(math.exp(scale * row[y]) / normaliser))
    return scale, sum(losses) / len(losses)


@pytest.mark.parametrize("mode", ["fixed", "dynamic", "semi"])
def test_adacos_matches_formula_over_steps(mode: str) -> None:
    torch.manual_seed(0)
    head = AdaCosLoss(num_classes=6, embedding_size=4, scale=mode)
    expected_scale = math.sqrt(2) * math.log(5)
    assert head.current_scale.item() == pytest.approx(expected_scale)
    for _ in range(3):
        embeddings = torch.randn(7, 4)
        labels = torch.randint(0, 6, (7,))
        expected_scale, expected_loss = reference_adacos(
            embeddings, head.weight.detach(), labels.tolist(), expected_scale, mode
        )
        loss = head(embeddings, labels)
        assert head.current_scale.item() == pytest.approx(expected_scale, rel=1e-5)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
        assert head.log_values() == {"scale": pytest.approx(expected_scale, rel=1e-5)}


def test_adacos_scale_changes_only_in_training_mode() -> None:
    head = AdaCosLoss(num_classes=4, embedding_size=3, scale="dynamic").eval()
    before = head.current_scale.clone()
    head(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]))
    assert torch.equal(head.current_scale, before)


def test_adacos_two_forwards_before_one_backward() -> None:
    head = AdaCosLoss(num_classes=4, embedding_size=3, scale="dynamic")
    embeddings = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0])
    (head(embeddings, labels) + head(embeddings, labels)).backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


def test_adacos_scale_is_saved_in_the_state_dict() -> None:
    head = AdaCosLoss(num_classes=4, embedding_size=3, scale="dynamic")
    head(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]))
    restored = AdaCosLoss(num_classes=4, embedding_size=3, scale="dynamic")
    restored.load_state_dict(head.state_dict())
    assert restored.current_scale.item() == head.current_scale.item()


def test_adacos_get_logits_use_the_current_scale() -> None:
    head = AdaCosLoss(num_classes=4, embedding_size=3, scale="fixed")
    embeddings = torch.randn(2, 3)
    expected = head.current_scale * F.normalize(embeddings) @ F.normalize(head.weight.detach()).T
    torch.testing.assert_close(head.get_logits(embeddings), expected)


@pytest.mark.parametrize("mode", ["dynamic", "semi"])
def test_adacos_scale_stays_finite_over_a_training_run(mode: str) -> None:
    torch.manual_seed(0)
    num_classes, dim = 10, 8
    prototypes = F.normalize(torch.randn(num_classes, dim))
    model = torch.nn.Linear(dim, dim)
    head = AdaCosLoss(num_classes=num_classes, embedding_size=dim, scale=mode)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.05)
    scales = []
    for _ in range(200):
        labels = torch.randint(0, num_classes, (32,))
        inputs = prototypes[labels] + 0.3 * torch.randn(32, dim)
        loss = head(F.normalize(model(inputs)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        scales.append(head.current_scale.item())
    assert all(math.isfinite(s) and s > 0 for s in scales)
    # Learning tightens the classes, so the median target angle falls and, with it, the scale.
    assert scales[-1] < scales[0]
    assert loss.item() < math.log(num_classes)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"num_classes": 2}, "num_classes"), ({"scale": "adaptive"}, "scale")]
)
def test_adacos_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"num_classes": 5, "embedding_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        AdaCosLoss(**arguments)  # type: ignore[arg-type]
