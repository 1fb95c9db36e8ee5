import pytest
import torch
from pytorch_metric_learning.losses import ArcFaceLoss, CrossBatchMemory, TripletMarginLoss

from embedlab.config import parse_config
from embedlab.losses.combined import WeightedLossSum
from embedlab.losses.mined import MinedLoss
from embedlab.training.objective import build_objective


def _objective(loss, miner=None):
    cfg = parse_config({"loss": loss, "miner": miner})
    return build_objective(cfg, num_classes=5, embedding_size=8, class_counts=torch.ones(5, dtype=torch.long))


def test_single_head_gets_classes_and_size_from_the_data() -> None:
    objective = _objective({"name": "ArcFaceLoss", "margin": 28.6, "scale": 64})
    assert isinstance(objective.loss, ArcFaceLoss)
    assert objective.loss.W.shape == (8, 5)
    assert len(objective.parameter_groups) == 1 and objective.parameter_groups[0][1] is None


def test_a_loss_with_its_own_miner_is_fed_by_it() -> None:
    objective = _objective(
        {"name": "TripletMarginLoss", "margin": 0.1, "miner": {"name": "TripletMarginMiner", "margin": 0.1}}
    )
    assert isinstance(objective.loss, MinedLoss) and isinstance(objective.loss.loss, TripletMarginLoss)
    embeddings = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = torch.arange(12) % 3
    miner_pairs = objective.loss.miner(embeddings, labels)
    expected = objective.loss.loss(embeddings, labels, miner_pairs)
    assert torch.allclose(objective.loss(embeddings, labels), expected)
    assert objective.parameter_groups == []


def test_weighted_list_sums_terms_and_keeps_each_terms_learning_rate() -> None:
    objective = _objective(
        [
            {"name": "ArcFaceLoss", "margin": 28.6, "scale": 64},
            {"name": "ContrastiveLoss", "weight": 0.5},
            {"name": "ArcFaceLoss", "margin": 10.0, "lr": 0.5},
        ]
    )
    loss = objective.loss
    assert isinstance(loss, WeightedLossSum)
    assert list(loss.losses) == ["ArcFaceLoss", "ContrastiveLoss", "ArcFaceLoss_2"]
    assert [lr for _, lr in objective.parameter_groups] == [None, 0.5]
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    terms = loss.losses
    expected = terms["ArcFaceLoss"](embeddings, labels) + 0.5 * terms["ContrastiveLoss"](embeddings, labels)
    expected = expected + terms["ArcFaceLoss_2"](embeddings, labels)
    assert torch.allclose(loss(embeddings, labels), expected)


def test_top_level_miner_feeds_every_loss() -> None:
    objective = _objective({"name": "ContrastiveLoss"}, {"name": "MultiSimilarityMiner", "epsilon": 0.1})
    assert isinstance(objective.loss, MinedLoss)


def test_memory_size_scores_a_pair_loss_against_the_past_batches_too() -> None:
    objective = _objective({"name": "ContrastiveLoss", "memory_size": 32})
    plain = _objective({"name": "ContrastiveLoss"}).loss
    assert isinstance(objective.loss, CrossBatchMemory) and objective.loss.memory_size == 32
    generator = torch.Generator().manual_seed(0)
    first, second = (
        torch.nn.functional.normalize(torch.randn(8, 8, generator=generator), dim=1) for _ in "ab"
    )
    labels = torch.arange(8) % 4
    assert torch.allclose(objective.loss(first, labels), plain(first, labels))
    # the second batch also meets the first one's embeddings, now in the memory
    remembered = objective.loss(second, labels)
    assert not torch.allclose(remembered, plain(second, labels))
    assert objective.loss.queue_idx == 16 and torch.equal(objective.loss.embedding_memory[:8], first)
    assert torch.isfinite(remembered)


def test_memory_size_with_a_miner_mines_against_the_memory() -> None:
    objective = _objective(
        {"name": "TripletMarginLoss", "memory_size": 16, "miner": {"name": "MultiSimilarityMiner"}}
    )
    assert isinstance(objective.loss, CrossBatchMemory) and objective.loss.miner is not None


def test_memory_size_on_a_margin_head_is_refused() -> None:
    with pytest.raises(ValueError, match="memory_size wraps a pair loss"):
        _objective({"name": "ArcFaceLoss", "memory_size": 64})
