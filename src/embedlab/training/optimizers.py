"""Optimizers by name (`optimizer.name`): torch's AdamW, Adam and Nesterov SGD in one registry."""

from __future__ import annotations

from typing import Any

import torch

from embedlab.config import OptimizerConfig
from embedlab.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
OPTIMIZERS.register(torch.optim.AdamW, name="adamw")
OPTIMIZERS.register(torch.optim.Adam, name="adam")
OPTIMIZERS.register(torch.optim.SGD, name="sgd")


def build_optimizer(settings: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer `settings.name` over parameter `groups`, each with its own lr and weight decay.

    `settings.lr` is the default of groups without one; `optimizer.momentum` is SGD's alone, and SGD
    always uses Nesterov's momentum.
    """
    options: dict[str, Any] = {}
    if settings.name == "sgd":
        options = {"momentum": settings.momentum, "nesterov": True}
    return OPTIMIZERS.build(settings.name, params=groups, lr=settings.lr, **options)
