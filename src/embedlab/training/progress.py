"""Training progress as people read it: epochs counted from 1, on a live bar or one line per epoch.

On a terminal, Lightning's rich bar (`EpochBar`, "Epoch 1/3" for the first of three). Elsewhere (a log
file, a job scheduler, CI) a bar cannot be drawn, so `EpochLines` prints one flushed line per epoch:

    epoch 1/3  loss 1.2345  map_at_r 0.6234  elapsed 0:12  eta 0:24

metrics.csv and summary.json count the same way: epoch N is the row after N epochs (epoch 0 is the
zero-shot row, scored before training; history.py). Only Lightning's own `current_epoch` counts from 0.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override

from embedlab.training.callbacks import RetrievalValidation


def format_duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def epoch_line(
    epoch: int, epochs: int, loss: float, monitor: str, value: float | None, elapsed: float, eta: float
) -> str:
    """One epoch's line; `epoch` counts from 1, `value` is None after an epoch without validation."""
    score = "-" if value is None else f"{value:.4f}"
    return (
        f"epoch {epoch}/{epochs}  loss {loss:.4f}  {monitor} {score}  "
        f"elapsed {format_duration(elapsed)}  eta {format_duration(eta)}"
    )


class EpochLines(L.Callback):
    """Prints `epoch_line` after each epoch, from what `validation` recorded for it (so it must come
    after `validation` in the Trainer's callbacks). Under DDP only process 0 prints."""

    def __init__(self, validation: RetrievalValidation, monitor: str, stream: TextIO | None = None) -> None:
        self.validation = validation
        self.monitor = monitor
        self.stream = stream
        self._started = 0.0
        self._first_epoch = 0

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._first_epoch = trainer.current_epoch  # a resumed run estimates from its own epochs

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = self.validation.latest_row
        if not trainer.is_global_zero or row is None:
            return
        done = trainer.current_epoch + 1
        epochs = int(trainer.max_epochs or done)
        elapsed = time.perf_counter() - self._started
        eta = elapsed / max(done - self._first_epoch, 1) * (epochs - done)
        value = row.get(self.monitor, "")
        line = epoch_line(
            done,
            epochs,
            float(row["train_loss"]),
            self.monitor,
            None if value == "" else float(value),
            elapsed,
            eta,
        )
        print(line, file=self.stream or sys.stdout, flush=True)


class EpochBar(RichProgressBar):
    """Lightning's rich bar with epochs counted from 1 ("Epoch 1/3" for the first of three)."""

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning writes "Epoch {current_epoch}/{max_epochs - 1}"; the bar passes the 0-based epoch.
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None:
            description += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(description):
            description = f"{description:{len(self.validation_description)}}"
        return description
