import math

import pytest
import torch
import torch.nn.functional as F

from embedlab.losses import functional as LF

EDGE_COSINES = [-1.0, -1.0 + 1e-7, 0.0, 1.0 - 1e-7, 1.0]


def reference_cos_with_margin(cos: float, margin: float, easy_margin: bool) -> float:
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if easy_margin:
        return math.cos(theta + margin) if cos > 0 else cos
    return math.cos(theta + margin) if theta + margin <= math.pi else cos - margin * math.sin(margin)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_additive_angular_margin_matches_formula(easy_margin: bool) -> None:
    cosines = [-0.99, -0.9, -0.3, 0.0, 0.2, 0.7, 0.99]
    margins = [0.5, 0.3, 0.1, 0.5, 0.2, 0.4, 0.05]
    got = LF.additive_angular_margin(
        torch.tensor(cosines, dtype=torch.float64), torch.tensor(margins), easy_margin=easy_margin
    )
    expected = [reference_cos_with_margin(c, m, easy_margin) for c, m in zip(cosines, margins, strict=True)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_additive_angular_margin_is_monotonic_past_pi() -> None:
    # theta + m > pi is where cos(theta + m) would turn back up; the fallback must keep decreasing.
    cos = torch.linspace(1.0, -1.0, 2001, dtype=torch.float64)
    out = LF.additive_angular_margin(cos, 0.5)
    assert bool((out[1:] <= out[:-1] + 1e-12).all())


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_additive_angular_margin_finite_at_the_edges(easy_margin: bool, dtype: torch.dtype) -> None:
    cos = torch.tensor(EDGE_COSINES, dtype=dtype, requires_grad=True)
    out = LF.additive_angular_margin(cos, 0.5, easy_margin=easy_margin)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert cos.grad is not None and torch.isfinite(cos.grad).all()


def test_cosine_logits_max_over_sub_centers() -> None:
    embeddings = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    # Class 0: sub-centers (1, 0) and (0, 1); class 1: (-1, 0) and (0, -1).
    weight = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -5.0]])
    got = LF.cosine_logits(embeddings, weight, sub_centers=2)
    expected = torch.tensor([[max(0.6, 0.8), max(-0.6, -0.8)], [max(0.0, -1.0), max(0.0, 1.0)]])
    torch.testing.assert_close(got, expected)


def test_cosine_logits_in_float32_under_autocast() -> None:
    embeddings = torch.randn(4, 8, dtype=torch.bfloat16)
    weight = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = LF.cosine_logits(embeddings, weight)
    assert got.dtype == torch.float32
    expected = F.normalize(embeddings.float()) @ F.normalize(weight).T
    torch.testing.assert_close(got, expected)


def test_replace_target_logits() -> None:
    logits = torch.zeros(2, 3)
    got = LF.replace_target_logits(logits, torch.tensor([2, 0]), torch.tensor([5.0, 7.0]))
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 5.0], [7.0, 0.0, 0.0]]))


def reference_focal(logits: list[list[float]], labels: list[int], gamma: float, eps: float) -> list[float]:
    out = []
    for row, label in zip(logits, labels, strict=True):
        top = max(row)
        total = sum(math.exp(v - top) for v in row)
        probabilities = [math.exp(v - top) / total for v in row]
        num_classes = len(row)
        loss = 0.0
        for c, p in enumerate(probabilities):
            q = (1 - eps) * (c == label) + eps / num_classes
            loss -= q * (1 - p) ** gamma * math.log(p)
        out.append(loss)
    return out


@pytest.mark.parametrize(("gamma", "eps"), [(0.0, 0.0), (2.0, 0.0), (0.5, 0.1), (2.0, 0.2)])
def test_focal_cross_entropy_matches_formula(gamma: float, eps: float) -> None:
    logits = [[1.0, -2.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0], [10.0, -3.0, 2.0, 1.0]]
    labels = [3, 1, 2]
    got = LF.focal_cross_entropy(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(labels), gamma=gamma, label_smoothing=eps
    )
    torch.testing.assert_close(
        got, torch.tensor(reference_focal(logits, labels, gamma, eps), dtype=torch.float64)
    )


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_focal_gamma_zero_is_cross_entropy(eps: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 20 * torch.randn(16, 7, generator=generator)
    labels = torch.randint(0, 7, (16,), generator=generator)
    got = LF.focal_cross_entropy(logits, labels, gamma=0.0, label_smoothing=eps)
    expected = F.cross_entropy(logits, labels, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.0])
def test_focal_finite_when_target_probability_is_one(gamma: float) -> None:
    # p_target rounds to exactly 1 in float32, where d(1 - p)^gamma / dp is infinite for gamma < 1.
    logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = LF.focal_cross_entropy(logits, torch.tensor([0]), gamma=gamma, label_smoothing=0.1)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_frequency_margins_match_formula() -> None:
    counts = [10000, 81, 16, 1, 0]
    margin_min, margin_max = 0.1, 0.6
    rarity = [max(n, 1) ** -0.25 for n in counts]
    low, high = min(rarity), max(rarity)
    expected = [margin_min + (margin_max - margin_min) * (r - low) / (high - low) for r in rarity]
    got = LF.frequency_margins(torch.tensor(counts), margin_min, margin_max)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))
    assert got[0] == pytest.approx(margin_min) and got[3] == pytest.approx(margin_max)


def test_frequency_margins_constant_and_balanced_cases() -> None:
    counts = torch.tensor([5, 50, 500])
    torch.testing.assert_close(LF.frequency_margins(counts, 0.3, 0.3), torch.full((3,), 0.3))
    balanced = torch.tensor([7, 7, 7])
    torch.testing.assert_close(LF.frequency_margins(balanced, 0.2, 0.4), torch.full((3,), 0.3))


def reference_adacos_update(cos: list[list[float]], labels: list[int], scale: float) -> tuple[float, float]:
    """(dynamic, semi) scales from the paper's eq. 15 and its semi variant, by a plain loop."""
    b_sum = 0.0
    angles = []
    for row, label in zip(cos, labels, strict=True):
        for k, value in enumerate(row):
            if k != label:
                b_sum += math.exp(scale * value)
        angles.append(math.acos(row[label]))
    b_avg = b_sum / len(cos)
    median = sorted(angles)[(len(angles) - 1) // 2]
    denominator = math.cos(min(math.pi / 4, median))
    return math.log(b_avg) / denominator, math.log(len(cos[0]) - 1) / denominator


@pytest.mark.parametrize("scale", [1.0, 3.1, 20.0])
def test_adacos_scales_match_formula(scale: float) -> None:
    generator = torch.Generator().manual_seed(1)
    cos = torch.rand(6, 5, generator=generator, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 1, 4, 4, 2, 3])
    dynamic, semi = reference_adacos_update(cos.tolist(), labels.tolist(), scale)
    got = LF.adacos_dynamic_scale(cos, labels, torch.tensor(scale, dtype=torch.float64))
    assert got.item() == pytest.approx(dynamic, rel=1e-9)
    assert LF.adacos_semi_dynamic_scale(cos, labels).item() == pytest.approx(semi, rel=1e-9)


def test_adacos_fixed_scale() -> None:
    assert LF.adacos_fixed_scale(10) == pytest.approx(math.sqrt(2) * math.log(9))


def test_adacos_dynamic_scale_does_not_overflow() -> None:
    # exp(1e4 * 0.9) overflows any float; the logsumexp form gives ~ (1e4 * 0.9 - ln N) / cos(pi/4).
    cos = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.2, 0.1]])
    got = LF.adacos_dynamic_scale(cos, torch.tensor([0, 0]), torch.tensor(1e4))
    expected = (1e4 * 0.9 + math.log1p(math.exp(-1e4 * 0.8)) - math.log(2)) / math.cos(math.pi / 4)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_adacos_dynamic_scale_keeps_previous_when_update_is_not_positive() -> None:
    # Embedding opposite to both non-target classes: B_avg = 2 exp(-10) < 1, ln(B_avg) < 0.
    cos = torch.tensor([[1.0, -1.0, -1.0]])
    previous = torch.tensor(10.0)
    assert LF.adacos_dynamic_scale(cos, torch.tensor([0]), previous).item() == 10.0


def test_center_loss_matches_formula() -> None:
    embeddings = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    labels = [1, 0, 1]
    expected = [
        0.5 * sum((e - c) ** 2 for e, c in zip(embeddings[i].tolist(), centers[label].tolist(), strict=True))
        for i, label in enumerate(labels)
    ]
    got = LF.center_loss(embeddings, centers, torch.tensor(labels))
    torch.testing.assert_close(got, torch.tensor(expected))
