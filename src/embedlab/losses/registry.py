"""Every loss and miner by name: pytorch-metric-learning's under their own names, plus embedlab's.

pytorch-metric-learning's classes are listed once, from its `losses` and `miners` modules, so a config's
`loss: {name: CircleLoss, m: 0.4, gamma: 80}` builds `losses.CircleLoss(m=0.4, gamma=80)`. embedlab's own
losses register into the same table with `LOSSES.register` and may not take a name PML already uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner

from embedlab.registry import Registry, accepted_arguments, check_arguments

LOSSES: Registry[torch.nn.Module] = Registry("loss")
MINERS: Registry[BaseMiner] = Registry("miner")


def _register_module_classes(registry: Registry[Any], module: object, base: type) -> None:
    for name, value in sorted(vars(module).items()):
        if inspect.isclass(value) and issubclass(value, base) and not inspect.isabstract(value):
            if name.startswith("Base") or name in registry:
                continue
            registry.register(value, name=name)


_register_module_classes(LOSSES, pml_losses, BaseMetricLossFunction)
_register_module_classes(MINERS, pml_miners, BaseMiner)

#: Keyword arguments embedlab fills in from the data and the model when the loss class takes them.
DATA_ARGUMENTS = ("num_classes", "embedding_size", "class_counts")


def needs_class_count(name: str) -> bool:
    """Whether the loss keeps per-class parameters (a classification head such as ArcFace)."""
    names, _ = accepted_arguments(LOSSES.get(name))
    return "num_classes" in names


def build_loss(
    name: str,
    kwargs: Mapping[str, Any],
    *,
    num_classes: int,
    embedding_size: int,
    class_counts: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Build loss `name` with the config's `kwargs`, adding what it needs from the data and the model.

    `class_counts` is the number of training images per class, shape (num_classes,), passed to losses
    whose constructor takes it (margins that grow for rare classes).
    """
    cls = LOSSES.get(name)
    accepted, _ = accepted_arguments(cls)
    clashes = sorted(set(kwargs) & set(DATA_ARGUMENTS))
    if clashes:
        raise ValueError(
            f"loss {name!r}: {', '.join(clashes)} come from the data and the model; "
            "remove them from the config"
        )
    filled: dict[str, Any] = dict(kwargs)
    available = {"num_classes": num_classes, "embedding_size": embedding_size, "class_counts": class_counts}
    for key in DATA_ARGUMENTS:
        if key in accepted:
            if available[key] is None:
                raise ValueError(f"loss {name!r} needs {key}, which the training data did not provide")
            filled[key] = available[key]
    return LOSSES.build(name, **filled)


def check_loss_arguments(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise what `build_loss` would for this name and these arguments, without building the loss
    (so that `compare` checks every combination of a grid before its first run)."""
    cls = LOSSES.get(name)
    clashes = sorted(set(kwargs) & set(DATA_ARGUMENTS))
    if clashes:
        raise ValueError(
            f"loss {name!r}: {', '.join(clashes)} come from the data and the model; "
            "remove them from the config"
        )
    check_arguments(cls, kwargs, f"loss {name!r}")


def check_miner_arguments(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise what `build_miner` would for this name and these arguments, without building the miner."""
    check_arguments(MINERS.get(name), kwargs, f"miner {name!r}")


def build_miner(name: str, kwargs: Mapping[str, Any]) -> BaseMiner:
    return MINERS.build(name, **dict(kwargs))
