"""Several losses as one: a weighted sum, built from the config's list `loss: [{name, weight, ...}, ...]`.

The config's `weight` (multiplier in the sum) and `lr` (learning rate of the term's own parameters)
are read by embedlab; what reaches `build_weighted_loss` is (name, kwargs of the class, weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from embedlab.losses.heads import IndicesTuple
from embedlab.losses.registry import build_loss


@runtime_checkable
class LogsValues(Protocol):
    """A loss with values for the training loop to log each epoch (AdaCos's scale, ...)."""

    def log_values(self) -> dict[str, float]: ...


@runtime_checkable
class Classifier(Protocol):
    """A loss with class logits, (N, D) -> (N, C), for classification accuracy."""

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor: ...


class WeightedLossSum(nn.Module):
    """sum_t weight_t * loss_t(embeddings, labels, indices_tuple) over named terms.

    Each term is called like a pytorch-metric-learning loss and gets the same miner output. The terms
    are kept in `losses` (an `nn.ModuleDict` by term name, in order), so their parameters appear in the
    state dict as `losses.<name>.<parameter>`; `weights` maps each name to its multiplier.

    Args:
        terms: (name, loss, weight) triples; names unique and without ".", weights finite and >= 0.
    """

    def __init__(self, terms: Sequence[tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedLossSum needs at least one (name, loss, weight) term")
        names = [name for name, _, _ in terms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"loss term names must be unique, repeated: {', '.join(duplicates)}")
        for name, _, weight in terms:
            if "." in name or not name:
                raise ValueError(f"loss term name {name!r} must be non-empty and contain no '.'")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"loss term {name!r}: weight must be a finite number >= 0, got {weight}")
        self.losses = nn.ModuleDict({name: loss for name, loss, _ in terms})
        self.weights: dict[str, float] = {name: float(weight) for name, _, weight in terms}

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None = None
    ) -> torch.Tensor:
        """0-dim weighted sum of the terms' losses on embeddings (N, D) and labels (N,)."""
        total = embeddings.new_zeros((), dtype=torch.float32)
        for name, loss in self.losses.items():
            total = total + self.weights[name] * loss(embeddings, labels, indices_tuple)
        return total

    def log_values(self) -> dict[str, float]:
        """The terms' logged values, each key prefixed with its term's name: {"AdaCosLoss/scale": ...}."""
        return {
            f"{name}/{key}": value
            for name, loss in self.losses.items()
            if isinstance(loss, LogsValues)
            for key, value in loss.log_values().items()
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight={weight}" for name, weight in self.weights.items())


def classifier_of(loss: nn.Module) -> Classifier | None:
    """The module that gives class logits for accuracy: the loss itself if it has `get_logits`, else
    the single term of a `WeightedLossSum` that has it (the softmax head beside a CenterLoss), else None
    (pair losses, or several heads, where no one set of logits speaks for the model)."""
    if isinstance(loss, Classifier):
        return loss
    if isinstance(loss, WeightedLossSum):
        heads = [term for term in loss.losses.values() if isinstance(term, Classifier)]
        if len(heads) == 1:
            return heads[0]
    return None


def build_weighted_loss(
    specs: Sequence[tuple[str, Mapping[str, Any], float]],
    *,
    num_classes: int,
    embedding_size: int,
    class_counts: torch.Tensor | None = None,
) -> nn.Module:
    """Build each (registry name, kwargs, weight) with `build_loss` and sum them with their weights.

    One term of weight 1 is returned as it is, so a single loss keeps its own state-dict keys. Terms are
    named by their registry name; a name used again gets "_2", "_3", ... in order of appearance.

    Args:
        specs: (name, kwargs, weight) for each term, in config order.
        num_classes, embedding_size, class_counts: passed to `build_loss` for the losses that take them;
            class_counts is (num_classes,) training images per class.
    """
    if not specs:
        raise ValueError("the loss list is empty; give at least one {name: ...}")
    built = [
        build_loss(
            name, kwargs, num_classes=num_classes, embedding_size=embedding_size, class_counts=class_counts
        )
        for name, kwargs, _ in specs
    ]
    if len(specs) == 1 and specs[0][2] == 1.0:
        return built[0]
    seen: dict[str, int] = {}
    terms: list[tuple[str, nn.Module, float]] = []
    for (name, _, weight), loss in zip(specs, built, strict=True):
        seen[name] = seen.get(name, 0) + 1
        terms.append((name if seen[name] == 1 else f"{name}_{seen[name]}", loss, weight))
    return WeightedLossSum(terms)
