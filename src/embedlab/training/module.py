"""The LightningModule: it receives a built embedder and objective and trains them together.

Under DDP the loss is scored on the global batch (training/distributed.py). Two guards keep a run
resumable: every step reseeds the random generators from (seed, step, rank), so a step draws the same
augmentation and dropout whether or not the run was interrupted before it; and a loss that is not
finite stops the run before the step changes the weights, while no checkpoint with non-finite weights
is ever written, so last.ckpt and best.ckpt stay the last good ones.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from timm.scheduler.scheduler import Scheduler
from typing_extensions import override

from embedlab.config import OptimizerConfig, SchedulerConfig
from embedlab.models.embedder import Embedder
from embedlab.training.distributed import gather_global_batch
from embedlab.training.objective import Objective
from embedlab.training.optimizers import (
    build_optimizer,
    build_scheduler,
    parameter_groups,
    schedules_the_rate,
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before that step updated the weights."""


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to be written with NaN or infinite weights; it was not written."""


class EmbeddingModule(L.LightningModule):
    def __init__(
        self,
        embedder: Embedder,
        objective: Objective,
        optimizer: OptimizerConfig,
        scheduler: SchedulerConfig,
        seed: int = 0,
        freeze_backbone_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.loss = objective.loss
        self.loss_parameter_groups = objective.parameter_groups
        self.optimizer_settings = optimizer
        self.scheduler_settings = scheduler
        self.seed = seed
        self.freeze_backbone_epochs = freeze_backbone_epochs

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

    @property
    def backbone_frozen(self) -> bool:
        return self.current_epoch < self.freeze_backbone_epochs

    @override
    def on_train_epoch_start(self) -> None:
        # Frozen: no gradients into the backbone (autograd skips its backward), and its batch norms in
        # eval mode, so that their running statistics stay the pretrained ones too.
        frozen = self.backbone_frozen
        for parameter in self.embedder.backbone.parameters():
            parameter.requires_grad_(not frozen)
        self.embedder.backbone.train(not frozen)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        embeddings = self.embedder(images)
        if self._distributed:
            embeddings, labels = gather_global_batch(embeddings, labels)
        loss = self.loss(embeddings, labels)
        # Every process holds the same loss (the global batch's), so all of them stop together.
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {float(loss.detach())} at epoch {self.current_epoch + 1}, step "
                f"{self.global_step} (batch {batch_idx + 1} of the epoch); training stopped before this step "
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
        backbone = self.embedder.backbone
        backbone_ids = {id(p) for p in backbone.parameters()}
        rest = [(n, p) for n, p in self.embedder.named_parameters() if id(p) not in backbone_ids]
        groups = parameter_groups(backbone, rest, self.loss_parameter_groups, self.optimizer_settings)
        optimizer = build_optimizer(self.optimizer_settings, groups)
        if not schedules_the_rate(self.scheduler_settings):
            return optimizer
        scheduler = build_scheduler(
            optimizer,
            self.scheduler_settings,
            lr=self.optimizer_settings.lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            epochs=max(1, self.trainer.max_epochs or 1),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if isinstance(scheduler, Scheduler):
            # timm's schedules take the number of updates so far rather than counting calls.
            scheduler.step_update(num_updates=self.global_step)
        else:
            scheduler.step()
