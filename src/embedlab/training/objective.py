"""The training objective from the config's loss block(s): built losses, their miners and weights, and
the learning rate of each loss's own parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embedlab.config import ExperimentConfig, MinerConfig
from embedlab.losses import build_loss, build_miner
from embedlab.losses.combined import WeightedLossSum
from embedlab.losses.mined import MinedLoss


@dataclass
class Objective:
    loss: nn.Module
    #: the parameters of each loss term and their learning rate (None: the optimizer's head_lr or lr)
    parameter_groups: list[tuple[list[nn.Parameter], float | None]]


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
        if miner_cfg is not None:
            loss = MinedLoss(loss, build_miner(miner_cfg.name, miner_cfg.kwargs()))
        seen[spec.name] = seen.get(spec.name, 0) + 1
        terms.append(
            (spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}", loss, spec.weight)
        )
    if len(terms) == 1 and terms[0][2] == 1.0:
        return Objective(terms[0][1], groups)
    return Objective(WeightedLossSum(terms), groups)
