"""The optimizer and its learning-rate schedule: parameter groups, then timm's factories.

Parameter groups: the backbone at `optimizer.backbone_lr` (or lr), each of its stages scaled by
`optimizer.layer_decay` per stage from the output when that is set (timm's grouping of the model's
stages), the pooling and neck at `optimizer.lr`, each loss's own parameters at its `lr`, else
`optimizer.head_lr`, else lr. Weight decay applies to weight matrices and kernels only, never to norms,
biases or the GeM exponent. Every group carries its final learning rate, so both embedlab's schedules (a
factor on each group's rate) and timm's (which start from each group's rate) keep the ratios.

The optimizer is timm's `create_optimizer_v2` by name (adamw and adam are torch's classes, sgd is
torch's SGD with Nesterov momentum); `timm.NAME` schedules are timm's `create_scheduler_v2`, stepped
after every update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_layer_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn

from embedlab.config import OptimizerConfig, SchedulerConfig
from embedlab.registry import close_matches_hint


def check_optimizer_name(name: str) -> None:
    """Raise ValueError, naming optimizer.name and the nearest names, when timm has no such optimizer."""
    names = list_optimizers()
    if name.lower() not in names:
        hint = close_matches_hint(name.lower(), names)
        raise ValueError(
            f"optimizer.name {name!r} is not one of timm's optimizers.{hint} "
            "(timm.optim.list_optimizers() lists them)"
        )


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay for weight matrices and kernels only: not for norms, biases or the GeM exponent."""
    return parameter.ndim > 1 and not name.endswith(".bias")


def _split_by_decay(
    named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    decay = [p for n, p in named if decays(n, p)]
    no_decay = [p for n, p in named if not decays(n, p)]
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]


def _backbone_groups(backbone: nn.Module, settings: OptimizerConfig) -> list[dict[str, Any]]:
    lr = settings.backbone_lr or settings.lr
    if settings.layer_decay is None:
        return _split_by_decay(list(backbone.named_parameters()), lr, settings.weight_decay)
    model = getattr(backbone, "model", backbone)
    if not callable(getattr(model, "group_matcher", None)):
        raise ValueError(
            f"optimizer.layer_decay needs a timm backbone that groups its stages (group_matcher); "
            f"{type(model).__name__} has none: leave optimizer.layer_decay unset"
        )
    groups = param_groups_layer_decay(
        model, weight_decay=settings.weight_decay, layer_decay=settings.layer_decay
    )
    # The scale is folded into each group's rate, so the schedules need not know of it (timm's would
    # otherwise apply it a second time).
    return [
        {"params": g["params"], "weight_decay": g["weight_decay"], "lr": lr * g.pop("lr_scale")}
        for g in groups
    ]


def parameter_groups(
    backbone: nn.Module,
    rest_of_model: list[tuple[str, nn.Parameter]],
    loss_groups: list[tuple[list[nn.Parameter], float | None]],
    settings: OptimizerConfig,
) -> list[dict[str, Any]]:
    """Every trainable parameter once, in groups with their own learning rate and weight decay (see
    the module docstring); empty groups are left out."""
    head_lr = settings.head_lr or settings.lr
    groups = [
        *_backbone_groups(backbone, settings),
        *_split_by_decay(rest_of_model, settings.lr, settings.weight_decay),
        *({"params": params, "weight_decay": 0.0, "lr": lr or head_lr} for params, lr in loss_groups),
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(settings: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """timm's optimizer `settings.name` over `groups` (each with its own lr and weight decay)."""
    check_optimizer_name(settings.name)
    return create_optimizer_v2(
        groups,
        opt=settings.name.lower(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
        **settings.args,
    )


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear from ~0 to 1 over `warmup_steps`, then cosine down to `min_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_factor(step: int, steps_per_epoch: int, warmup_steps: int, step_epochs: int, gamma: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return gamma ** ((step // max(1, steps_per_epoch)) // step_epochs)


def _embedlab_factor(
    schedule: SchedulerConfig, total_steps: int, steps_per_epoch: int
) -> Callable[[int], float]:
    warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
    if schedule.name == "cosine":
        return lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, schedule.min_lr_ratio)
    if schedule.name == "step":
        return lambda step: step_factor(
            step, steps_per_epoch, warmup_steps, schedule.step_epochs, schedule.gamma
        )
    return lambda step: min(1.0, (step + 1) / warmup_steps)


def schedules_the_rate(schedule: SchedulerConfig) -> bool:
    """False for a constant rate without warm-up, which needs no scheduler."""
    return not (schedule.name == "constant" and schedule.warmup_epochs == 0)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: SchedulerConfig,
    *,
    lr: float,
    total_steps: int,
    epochs: int,
) -> torch.optim.lr_scheduler.LRScheduler | Scheduler:
    """The schedule over `total_steps` optimizer updates in `epochs` epochs, stepped after every update
    (timm's with `step_update(updates)`); for a schedule that `schedules_the_rate`."""
    steps_per_epoch = max(1, total_steps // max(1, epochs))
    if schedule.name.startswith("timm."):
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=schedule.name.removeprefix("timm."),
            num_epochs=epochs,
            warmup_epochs=schedule.warmup_epochs,
            warmup_lr=0.0,
            min_lr=lr * schedule.min_lr_ratio,
            decay_epochs=schedule.step_epochs,
            decay_rate=schedule.gamma,
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
            **schedule.args,
        )
        return scheduler
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _embedlab_factor(schedule, total_steps, steps_per_epoch)
    )
