"""Callbacks: retrieval metrics on the validation split after every epoch, and the per-epoch history.

Training time is measured per epoch from its first to its last step, so evaluation is never counted in
the training throughput. With a zero-shot embedder (models/zero_shot.py) the validation split is also
scored before the first epoch, as metrics.csv's epoch 0 (history.py); a resumed run has that row already
and is not given one.

Under DDP each process embeds a contiguous slice of the validation images, process 0 puts the slices
back together in item order (checking that every item came exactly once), scores them, writes the
history and the snapshot, and sends the metrics to the other processes, which log the same values.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from embedlab.data.images import LabelledImages
from embedlab.evaluation import RetrievalResult
from embedlab.models.embedder import Embedder
from embedlab.models.inference import embed
from embedlab.training.averaging import ExponentialMovingAverage
from embedlab.training.distributed import broadcast_from_zero, gather_rows, slice_of
from embedlab.training.history import TRAIN_STAGE, ZERO_SHOT_STAGE, append_history
from embedlab.training.snapshot import take_snapshot, write_snapshot
from embedlab.training.validation import score_validation

LOGGER = logging.getLogger(__name__)


class RetrievalValidation(L.Callback):
    """Embeds the queries and the gallery after each training epoch and logs `val/<metric>`; after the
    last epoch it also writes the retrieval snapshot (snapshot.py) to `snapshot_path`, when given. With
    `averaging` it embeds with the averaged weights (averaging.py). With `zero_shot` it scores that
    embedder once as training starts and writes the zero-shot row (epoch 0)."""

    def __init__(
        self,
        query: LabelledImages,
        gallery: LabelledImages | None,
        metrics: list[str],
        batch_size: int,
        history_path: Path,
        num_workers: int = 0,
        every_n_epochs: int = 1,
        snapshot_path: Path | None = None,
        averaging: ExponentialMovingAverage | None = None,
        precision: str = "32-true",
        zero_shot: Embedder | None = None,
    ) -> None:
        self.query = query
        self.gallery = gallery
        self.metrics = metrics
        self.batch_size = batch_size
        self.history_path = history_path
        self.num_workers = num_workers
        self.every_n_epochs = every_n_epochs
        self.snapshot_path = snapshot_path
        self.averaging = averaging
        # Validation runs outside Lightning's step hooks, so its autocast is not in force: embed applies
        # the run's own precision.
        self.precision = precision
        self.zero_shot = zero_shot
        self.train_seconds = 0.0
        self.train_images = 0
        self._epoch_start = 0.0
        self._epoch_images = 0
        #: The metrics.csv row of the epoch that ended last (process 0 only), for the progress lines.
        self.latest_row: dict[str, Any] | None = None
        #: The zero-shot row this run wrote (process 0 only); None without one, and on a resume.
        self.zero_shot_row: dict[str, Any] | None = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.zero_shot is None:
            return
        embedder = self.zero_shot.to(pl_module.device)  # its modules are the embedder's, already there
        embedder.train(pl_module.training)  # the mode `embed` puts the shared modules back in
        started = time.perf_counter()
        # Embedding draws a loader seed from torch's generator: the training that follows must not see it.
        with torch.random.fork_rng(devices=[]):
            outcome, _, _ = self._score(trainer, embedder, "zero-shot validation (before the first epoch)")
        eval_seconds = time.perf_counter() - started
        if not trainer.is_global_zero:
            return
        row = self._row(
            epoch=0,
            stage=ZERO_SHOT_STAGE,
            step=0,
            train_loss="",
            loss_values=dict.fromkeys(self._loss_values(pl_module), ""),
            scores=self._scores(outcome),
            train_seconds=0.0,
            epoch_seconds=0.0,
            images_per_second="",
            eval_seconds=eval_seconds,
        )
        append_history(self.history_path, row)
        self.zero_shot_row = row
        shown = ", ".join(f"{name} {value:.4f}" for name, value in outcome.metrics.items())
        LOGGER.info(f"zero-shot (the backbone's pooled features, before training): {shown}")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        self.latest_row = None

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch_images += int(batch[1].shape[0]) * trainer.world_size

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            # CUDA runs the last steps after Python queued them: the epoch ends when the device is done.
            torch.cuda.synchronize(pl_module.device)
        epoch_seconds = time.perf_counter() - self._epoch_start
        self.train_seconds += epoch_seconds
        self.train_images += self._epoch_images
        # metrics.csv counts epochs trained (Lightning's current_epoch counts from 0)
        epoch = trainer.current_epoch + 1
        last = epoch == trainer.max_epochs
        due = epoch % self.every_n_epochs == 0 or last
        scores: dict[str, Any] = dict.fromkeys(
            [*self.metrics, "n_queries", "n_queries_without_positives"], ""
        )
        eval_seconds = 0.0
        if due:
            started = time.perf_counter()
            outcome, query, gallery = self._score(
                trainer, self._validated_embedder(pl_module), f"validation after epoch {epoch}"
            )
            eval_seconds = time.perf_counter() - started
            if last and self.snapshot_path is not None and trainer.is_global_zero:
                assert query is not None
                # After eval_seconds is taken, so that the last epoch's evaluation time stays comparable.
                snapshot = take_snapshot(query, gallery, self.query, self.gallery, epoch)
                write_snapshot(self.snapshot_path, snapshot)
            for name, value in outcome.metrics.items():
                pl_module.log(
                    f"val/{name}",
                    value,
                    on_epoch=True,
                    prog_bar=name in ("precision_at_1", "map_at_r"),
                    sync_dist=trainer.world_size > 1,
                )
            scores = self._scores(outcome)
        if not trainer.is_global_zero:
            return
        train_loss = trainer.callback_metrics.get("train_loss")
        row = self._row(
            epoch=epoch,
            stage=TRAIN_STAGE,
            step=trainer.global_step,
            train_loss=float(train_loss) if train_loss is not None else float("nan"),
            loss_values=self._loss_values(pl_module),
            scores=scores,
            train_seconds=self.train_seconds,
            epoch_seconds=epoch_seconds,
            images_per_second=round(self._epoch_images / max(epoch_seconds, 1e-9), 1),
            eval_seconds=eval_seconds,
        )
        append_history(self.history_path, row)
        self.latest_row = row

    @staticmethod
    def _row(
        *,
        epoch: int,
        stage: str,
        step: int,
        train_loss: float | str,
        loss_values: dict[str, Any],
        scores: dict[str, Any],
        train_seconds: float,
        epoch_seconds: float,
        images_per_second: float | str,
        eval_seconds: float,
    ) -> dict[str, Any]:
        """A metrics.csv row; every row has these columns in this order (history.py)."""
        return {
            "epoch": epoch,
            "stage": stage,
            "step": step,
            "train_loss": train_loss,
            **loss_values,
            **scores,
            "train_seconds": round(train_seconds, 3),
            "epoch_train_seconds": round(epoch_seconds, 3),
            "images_per_second": images_per_second,
            "eval_seconds": round(eval_seconds, 3),
        }

    @staticmethod
    def _loss_values(pl_module: L.LightningModule) -> dict[str, Any]:
        """The values the loss logs each epoch (AdaCos's scale, ...), as metrics.csv's `loss/<name>`."""
        log_values = getattr(pl_module.loss, "log_values", None)
        values = log_values() if callable(log_values) else {}
        return {f"loss/{k}": round(float(v), 6) for k, v in values.items()}

    @staticmethod
    def _scores(outcome: RetrievalResult) -> dict[str, Any]:
        return {
            **outcome.metrics,
            "n_queries": outcome.n_queries,
            "n_queries_without_positives": outcome.n_queries_without_positives,
        }

    def _validated_embedder(self, pl_module: L.LightningModule) -> Embedder:
        """What each epoch's validation embeds: the averaged weights, when averaging, else the model's."""
        return self.averaging.embedder() if self.averaging else pl_module.embedder  # type: ignore[attr-defined]

    def _score(
        self, trainer: L.Trainer, embedder: Embedder, what: str
    ) -> tuple[RetrievalResult, np.ndarray | None, np.ndarray | None]:
        """The validation metrics of `embedder` on every process, and the query and gallery embeddings
        (on process 0 only, under DDP); a scoring error stops every process, naming `what` failed."""
        query, gallery = self._embed(trainer, embedder)
        outcome: RetrievalResult | str | None = None
        if trainer.is_global_zero:
            assert query is not None
            try:
                outcome = score_validation(query, gallery, self.query, self.gallery, self.metrics)
            except ValueError as error:  # NaN embeddings, say: every process must stop, not wait
                outcome = f"{what} failed: {error}"
        if trainer.world_size > 1:
            outcome = broadcast_from_zero(outcome)
        if isinstance(outcome, str):
            raise ValueError(outcome)
        assert outcome is not None
        return outcome, query, gallery

    def _embed(self, trainer: L.Trainer, embedder: Embedder) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Query and gallery embeddings in item order (on process 0 only, under DDP)."""
        query = self._embed_set(trainer, embedder, self.query)
        gallery = None if self.gallery is None else self._embed_set(trainer, embedder, self.gallery)
        return query, gallery

    def _embed_set(self, trainer: L.Trainer, embedder: Embedder, images: LabelledImages) -> np.ndarray | None:
        if trainer.world_size == 1:
            return embed(embedder, images, self.batch_size, self.num_workers, precision=self.precision)
        share = slice_of(len(images), trainer.global_rank, trainer.world_size)
        ids = np.arange(share.start, share.stop)
        rows = embed(
            embedder,
            images.subset(torch.from_numpy(ids)),
            self.batch_size,
            self.num_workers,
            precision=self.precision,
        )
        return gather_rows(rows, ids, len(images))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds, "train_images": self.train_images}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict["train_seconds"])
        self.train_images = int(state_dict["train_images"])
