"""The LightningModule: it receives a built embedder and objective and trains them together.

Under DDP the loss is scored on the global batch (training/distributed.py). Two guards keep a run
resumable: every step reseeds the random generators from (seed, step, rank), so a step draws the same
augmentation and dropout whether or not the run was interrupted before it; and a loss that is not
finite stops the run before the step changes the weights, while no checkpoint with non-finite weights
is ever written, so last.ckpt and best.ckpt stay the last good ones.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from typing_extensions import override

from embedlab.config import AugmentConfig, OptimizerConfig, SchedulerConfig
from embedlab.data.transforms import augment
from embedlab.models.embedder import Embedder
from embedlab.training.distributed import gather_global_batch
from embedlab.training.objective import Objective
from embedlab.training.optimizers import build_optimizer


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before that step updated the weights."""


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to be written with NaN or infinite weights; it was not written."""


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


def _decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay for weight matrices and kernels only: not for norms, biases or the GeM exponent."""
    return parameter.ndim > 1 and not name.endswith(".bias")


class EmbeddingModule(L.LightningModule):
    def __init__(
        self,
        embedder: Embedder,
        objective: Objective,
        optimizer: OptimizerConfig,
        scheduler: SchedulerConfig,
        augmentation: AugmentConfig,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.loss = objective.loss
        self.loss_parameter_groups = objective.parameter_groups
        self.optimizer_settings = optimizer
        self.scheduler_settings = scheduler
        self.augmentation = augmentation
        self.has_augmentation = augmentation.flip or augmentation.crop_padding > 0
        self.seed = seed

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)

    @property
    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch_seed, numpy_seed = np.random.SeedSequence(
            [self.seed, self.global_step, self.global_rank]
        ).generate_state(2)
        # The CPU generator, and the CUDA one of this process's device when it trains there (augmentation
        # and dropout draw on the device of the batch): torch.manual_seed would also queue a lazy seeding
        # of every other device type, each recording a stack trace, about 1 ms per step.
        torch.default_generator.manual_seed(int(torch_seed))
        if self.device.type == "cuda":
            torch.cuda.manual_seed(int(torch_seed))
        # numpy's global generator too: pytorch-metric-learning's random choices draw from it.
        np.random.seed(int(numpy_seed))

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # The batch is already on the training device (Lightning moved it), so the augmentation's tensor
        # ops run there, on uint8 images a quarter the size of their float form.
        images, labels = batch
        if self.has_augmentation:
            images = augment(images, self.augmentation)
        embeddings = self.embedder(images)
        if self._distributed:
            embeddings, labels = gather_global_batch(embeddings, labels)
        loss = self.loss(embeddings, labels)
        # Every process holds the same loss (the global batch's), so all of them stop together.
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {float(loss.detach())} at epoch {self.current_epoch}, step "
                f"{self.global_step} (batch {batch_idx} of the epoch); training stopped before this step "
                "changed the weights"
            )
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=labels.shape[0],
            sync_dist=self._distributed,
        )
        return loss

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = [
            name
            for name, tensor in checkpoint["state_dict"].items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()
        ]
        if bad:
            raise NonFiniteWeightsError(
                f"the weights hold NaN or infinite values after epoch {self.current_epoch}, step "
                f"{self.global_step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the "
                "checkpoint was not written, so the previous one is kept"
            )

    @override
    def on_train_epoch_end(self) -> None:
        log_values = getattr(self.loss, "log_values", None)
        if callable(log_values):
            for key, value in log_values().items():
                self.log(f"loss/{key}", float(value), on_epoch=True, sync_dist=self._distributed)

    @override
    def configure_optimizers(self) -> Any:
        settings = self.optimizer_settings
        head_lr = settings.head_lr or settings.lr
        decay, no_decay = [], []
        for name, parameter in self.embedder.named_parameters():
            (decay if _decays(name, parameter) else no_decay).append(parameter)
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": settings.weight_decay, "lr": settings.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": settings.lr},
        ]
        for parameters, lr in self.loss_parameter_groups:
            groups.append({"params": parameters, "weight_decay": 0.0, "lr": lr or head_lr})
        groups = [g for g in groups if g["params"]]
        optimizer = build_optimizer(settings, groups)

        schedule = self.scheduler_settings
        if schedule.name == "constant" and schedule.warmup_epochs == 0:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs or 1))
        warmup_steps = round(schedule.warmup_epochs * steps_per_epoch)
        if schedule.name == "cosine":

            def factor(step: int) -> float:
                return warmup_cosine_factor(step, total_steps, warmup_steps, schedule.min_lr_ratio)

        elif schedule.name == "step":

            def factor(step: int) -> float:
                return step_factor(step, steps_per_epoch, warmup_steps, schedule.step_epochs, schedule.gamma)

        else:

            def factor(step: int) -> float:
                return min(1.0, (step + 1) / warmup_steps)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
