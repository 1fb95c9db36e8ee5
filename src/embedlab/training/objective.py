"""The training objective from the config's loss block(s): built losses, their miners and weights, and
the learning rate of each loss's own parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning.losses import CrossBatchMemory
from pytorch_metric_learning.miners import BaseMiner
from torch import nn

from embedlab.config import ExperimentConfig, MinerConfig
from embedlab.losses import build_loss, build_miner
from embedlab.losses.combined import WeightedLossSum
from embedlab.losses.mined import MinedLoss
from embedlab.losses.registry import needs_class_count


@dataclass
class Objective:
    loss: nn.Module
    #: the parameters of each loss term and their learning rate (None: the optimizer's head_lr or lr)
    parameter_groups: list[tuple[list[nn.Parameter], float | None]]


def check_memory_size(name: str, memory_size: int | None) -> None:
    """Margin heads compare embeddings with class weights, not with each other: a cross-batch memory
    around one is refused."""
    if memory_size is not None and needs_class_count(name):
        raise ValueError(
            f"loss {name!r}: memory_size wraps a pair loss (ContrastiveLoss, MultiSimilarityLoss, "
            f"TripletMarginLoss, ...) in a cross-batch memory; {name} scores class weights, not pairs"
        )


def with_memory(
    name: str, loss: nn.Module, memory_size: int, embedding_size: int, miner: BaseMiner | None
) -> CrossBatchMemory:
    """`loss` scored against the last `memory_size` embeddings as well as the batch (pytorch-metric-
    learning's CrossBatchMemory; the miner, if any, mines pairs between the batch and the memory)."""
    check_memory_size(name, memory_size)
    return CrossBatchMemory(loss, embedding_size, memory_size=memory_size, miner=miner)


def build_objective(
    cfg: ExperimentConfig, *, num_classes: int, embedding_size: int, class_counts: torch.Tensor
) -> Objective:
    terms: list[tuple[str, nn.Module, float]] = []
    groups: list[tuple[list[nn.Parameter], float | None]] = []
    seen: dict[str, int] = {}
    for spec in cfg.losses():
        loss = build_loss(
            spec.name,
            spec.kwargs(),
            num_classes=num_classes,
            embedding_size=embedding_size,
            class_counts=class_counts,
        )
        parameters = list(loss.parameters())
        if parameters:
            groups.append((parameters, spec.lr))
        miner_cfg: MinerConfig | None = spec.miner or cfg.miner
        miner = None if miner_cfg is None else build_miner(miner_cfg.name, miner_cfg.kwargs())
        if spec.memory_size is not None:
            loss = with_memory(spec.name, loss, spec.memory_size, embedding_size, miner)
        elif miner is not None:
            loss = MinedLoss(loss, miner)
        seen[spec.name] = seen.get(spec.name, 0) + 1
        terms.append(
            (spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}", loss, spec.weight)
        )
    if len(terms) == 1 and terms[0][2] == 1.0:
        return Objective(terms[0][1], groups)
    return Objective(WeightedLossSum(terms), groups)
