import pytest
import torch
import torch.nn.functional as F

from embedlab.losses import CenterLoss


def test_center_loss_matches_formula() -> None:
    loss = CenterLoss(num_classes=3, embedding_size=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]]))
    embeddings = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0], [-0.6, 0.8]])
    labels = [0, 1, 2, 0]
    expected = 0.0
    for x, y in zip(embeddings.tolist(), labels, strict=True):
        expected += 0.5 * sum((a - b) ** 2 for a, b in zip(x, loss.centers[y].tolist(), strict=True))
    assert loss(embeddings, torch.tensor(labels)).item() == pytest.approx(expected / 4)


def test_centers_start_at_the_origin_and_move_to_the_class_means() -> None:
    torch.manual_seed(0)
    loss = CenterLoss(num_classes=2, embedding_size=3)
    assert torch.equal(loss.centers.detach(), torch.zeros(2, 3))
    embeddings = F.normalize(torch.randn(6, 3))
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    optimizer = torch.optim.SGD(loss.parameters(), lr=1.0)
    for _ in range(200):
        optimizer.zero_grad()
        loss(embeddings, labels).backward()
        optimizer.step()
    means = torch.stack([embeddings[:3].mean(0), embeddings[3:].mean(0)])
    torch.testing.assert_close(loss.centers.detach(), means, atol=1e-4, rtol=0)


def test_center_loss_gradients_are_finite_under_bfloat16_autocast() -> None:
    loss = CenterLoss(num_classes=3, embedding_size=4)
    embeddings = F.normalize(torch.randn(5, 4)).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(embeddings, torch.tensor([0, 1, 2, 0, 1]))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


def test_center_loss_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        CenterLoss(num_classes=3, embedding_size=4)(torch.randn(2, 3), torch.tensor([0, 1]))
