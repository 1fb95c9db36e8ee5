"""Embedding a whole collection with a trained embedder, batch by batch, without gradients."""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress

from embedlab.data.images import LabelledImages
from embedlab.data.loaders import eval_batches
from embedlab.models.embedder import Embedder
from embedlab.models.tta import TestTimeAugmentation, check_supports, embed_views


@torch.inference_mode()
def embed(
    embedder: Embedder,
    images: LabelledImages,
    batch_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
    tta: TestTimeAugmentation | None = None,
) -> np.ndarray:
    """Embeddings (N, D) float32 of every image in dataset order; the embedder is left in its mode.

    tta: embed several views of each image and average them (see `embedlab.models.tta`).
    """
    if tta is not None:
        check_supports(embedder, tta)
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    chunks: list[np.ndarray] = []
    loader = eval_batches(images, batch_size, num_workers)
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"embedding {images.name}", total=len(loader))
            for batch, _ in loader:
                batch = batch.to(device)
                vectors = embedder(batch) if tta is None else embed_views(embedder, batch, tta)
                chunks.append(vectors.float().cpu().numpy())
                bar.advance(task)
    finally:
        embedder.train(was_training)
    if not chunks:
        return np.zeros((0, embedder.embedding_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)
