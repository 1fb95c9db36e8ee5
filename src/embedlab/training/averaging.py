"""An exponential moving average of the weights (`train.ema_decay`), on Lightning's WeightAveraging.

The average is what the per-epoch validation embeds, what the checkpoints hold as their `state_dict`
(so best.ckpt, indexes and exports use it) and what the model holds after training; Lightning keeps the
raw weights beside it in each checkpoint, so a resumed run continues both. The decay warms up as in
TensorFlow's ExponentialMovingAverage, min(decay, (1 + n) / (10 + n)) after n updates, so the first
epochs' average is not held back by the random initial weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import WeightAveraging

from embedlab.models.embedder import Embedder

MultiAverageFunction = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]


def warmed_up_decay(decay: float, updates_so_far: int) -> float:
    """The decay of the next update after `updates_so_far` updates."""
    return min(decay, (1.0 + updates_so_far) / (10.0 + updates_so_far))


def exponential_moving_average(decay: float) -> MultiAverageFunction:
    """An AveragedModel `multi_avg_fn`: averaged <- d * averaged + (1 - d) * current, d warmed up.
    Integer tensors (BatchNorm's batch counters) take the current value."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"the decay must be in (0, 1), got {decay}")

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - warmed_up_decay(decay, int(updates)))

    return update


class ExponentialMovingAverage(WeightAveraging):
    """Updates the average after every optimizer step; `embedder` gives the averaged embedder for
    validation while training goes on with the raw weights."""

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=True, multi_avg_fn=exponential_moving_average(decay))

    def embedder(self) -> Embedder:
        assert self._average_model is not None, "WeightAveraging.setup makes the average when fit begins"
        return self._average_model.module.embedder  # type: ignore[no-any-return]
