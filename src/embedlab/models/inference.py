"""Embedding a whole collection with a trained embedder, batch by batch, without gradients.

The embedder's own device is used (move it first, see `embedlab.models.devices`). Batches go to the
device without blocking, under the autocast of the run's training precision. When the device runs out
of memory, the batch is embedded again in halves, and the smaller size is kept for the rest of the
collection, so a batch size chosen for a larger GPU slows a run down instead of ending it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from rich.progress import Progress

from embedlab.data.images import LabelledImages
from embedlab.data.loaders import eval_batches
from embedlab.models.devices import inference_autocast
from embedlab.models.embedder import Embedder
from embedlab.models.tta import TestTimeAugmentation, check_supports, embed_views

LOGGER = logging.getLogger(__name__)


class BatchSplitter:
    """Runs `forward` on a batch in parts of at most `part_size` images, halving the size when the
    device is out of memory (down to one image, which then raises)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], part_size: int) -> None:
        self.forward = forward
        self.part_size = part_size

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        start = 0
        while start < len(batch):
            stop = min(start + self.part_size, len(batch))
            try:
                parts.append(self.forward(batch[start:stop]).float())
            except torch.cuda.OutOfMemoryError:
                if self.part_size == 1:
                    raise
                self.part_size = max(1, (stop - start) // 2)
                _release_cached_memory(batch.device)
                LOGGER.warning(
                    "out of memory on %s embedding %d images at once; going on with %d",
                    batch.device,
                    stop - start,
                    self.part_size,
                )
                continue
            start = stop
        return torch.cat(parts)


def embedding_forward(
    embedder: Embedder, tta: TestTimeAugmentation | None, precision: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward pass one batch on the embedder's device takes: its views when `tta` is given, under
    the autocast of the run's `precision`."""
    device = next(embedder.parameters()).device

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with inference_autocast(device, precision):
            return embedder(batch) if tta is None else embed_views(embedder, batch, tta)

    return forward


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def embed(
    embedder: Embedder,
    images: LabelledImages,
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
    tta: TestTimeAugmentation | None = None,
    precision: str = "32-true",
) -> np.ndarray:
    """Embeddings (N, D) float32 of every image in dataset order; the embedder is left in its mode.

    tta: embed several views of each image and average them (see `embedlab.models.tta`).
    precision: the run's train.precision; "16-mixed" and "bf16-mixed" embed under that autocast.
    """
    if tta is not None:
        check_supports(embedder, tta)
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    split = BatchSplitter(embedding_forward(embedder, tta, precision), batch_size)
    chunks: list[np.ndarray] = []
    loader = eval_batches(images, batch_size, num_workers)
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"embedding {images.name}", total=len(loader))
            for batch, _ in loader:
                chunks.append(split(batch.to(device, non_blocking=True)).cpu().numpy())
                bar.advance(task)
    finally:
        embedder.train(was_training)
    if not chunks:
        return np.zeros((0, embedder.embedding_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
